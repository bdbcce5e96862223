"""Cluster keys end to end: real daemons on loopback, keys rotated with SIGHUP while adds
flow, nodes with the wrong key kept out, and a captured datagram replayed."""

from __future__ import annotations

import base64
import itertools
import json
import os
import signal
import socket
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from crdtd.control.client import Client
from crdtd.core import wire
from crdtd.core.messages import OpBatch
from crdtd.core.settings import Key
from crdtd.daemon.config import NetworkConfig
from crdtd.lab.hostile import write_keys
from tests.daemon.loopback import Cluster, Daemon, free_udp_port

NO_SYNC = "sync: {interval_s: 0}\n"
OLD = Key("k2026a", bytes(range(32)))
NEW = Key("k2026b", bytes(range(64, 112)))
WRONG = Key("k2026a", bytes(range(200, 232)))  # the cluster's id, another secret
WAIT_S = 20.0


def wait_until(check: Callable[[], Any], what: str, timeout_s: float = WAIT_S) -> Any:
    """Poll *check* until it returns something true; fail naming *what* at the deadline."""
    deadline = time.monotonic() + timeout_s
    while True:
        result = check()
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {timeout_s:g} s: {what} (last: {result!r})")
        time.sleep(0.05)


def log_events(daemon: Daemon, event: str) -> list[dict[str, Any]]:
    entries = [json.loads(line) for line in daemon.log.read_text().splitlines() if line[:1] == "{"]
    return [entry for entry in entries if entry.get("event") == event]


def peer_ids(daemon: Daemon) -> list[str]:
    return [peer["node_id"] for peer in daemon.data("peers")["peers"]]


def sighup(daemon: Daemon) -> None:
    assert daemon.process is not None
    daemon.process.send_signal(signal.SIGHUP)


@pytest.fixture
def clusters() -> Iterator[list[Cluster]]:
    """Clusters a test starts; all are stopped when it ends, also on failure."""
    started: list[Cluster] = []
    try:
        yield started
    finally:
        for cluster in started:
            cluster.stop()


def test_a_keyed_cluster_converges_and_crdtctl_keys_shows_ids_never_secrets(
    tmp_path: Path, clusters: list[Cluster]
) -> None:
    key_file = write_keys(tmp_path / "keys.yaml", OLD)
    cluster = Cluster.start(tmp_path, 3, extra_config=NO_SYNC, key_file=key_file)
    clusters.append(cluster)
    for index, daemon in enumerate(cluster.daemons):
        daemon.ctl("add", "x", str(index + 1))
    cluster.wait_agree("x", 6)
    first = cluster.daemons[0]
    assert sorted(peer_ids(first)) == ["n1", "n2"]
    assert (
        first.ctl("keys").stdout == "KEY     USE\nk2026a  signs, accepts\n\nno datagrams rejected\n"
    )
    assert first.data("keys") == {"signing": "k2026a", "accepted": ["k2026a"], "rejected": {}}

    # Restarted with its state (same incarnation), a node numbers its datagrams above
    # everything it sent before: its peers' replay windows take them.
    first.kill(signal.SIGKILL)
    first.start()
    first.ctl("add", "x", "10")
    cluster.wait_agree("x", 16)
    for daemon in cluster.daemons:
        assert daemon.data("keys")["rejected"] == {}, daemon.name
    secret = base64.b64encode(OLD.secret).decode()
    assert all(secret not in daemon.log.read_text() for daemon in cluster.daemons)
    [started] = log_events(first, "started")[-1:]
    assert (started["signing"], started["accepted"]) == ("k2026a", ["k2026a"])


def test_nodes_with_a_wrong_or_no_key_are_not_peers_and_their_datagrams_are_rejected(
    tmp_path: Path, clusters: list[Cluster]
) -> None:
    good = write_keys(tmp_path / "good.yaml", OLD)
    cluster = Cluster.start(tmp_path, 2, extra_config=NO_SYNC, key_file=good)
    clusters.append(cluster)
    group_port = cluster.daemons[0].group_port
    wrong = Daemon(
        "n2",
        tmp_path,
        group_port,
        free_udp_port(),
        extra_config=NO_SYNC,
        key_file=write_keys(tmp_path / "wrong.yaml", WRONG),
    )
    bare = Daemon("n3", tmp_path, group_port, free_udp_port(), extra_config=NO_SYNC)
    for daemon in (wrong, bare):
        cluster.daemons.append(daemon)
        daemon.start()
    n0, n1 = cluster.daemons[:2]
    for daemon, delta in ((n0, 1), (n1, 2), (wrong, 10), (bare, 100)):
        daemon.ctl("add", "x", str(delta))

    def rejected(daemon: Daemon, *reasons: str) -> bool:
        counts = daemon.data("keys")["rejected"]
        return all(counts.get(reason, 0) > 0 for reason in reasons)

    wait_until(lambda: rejected(n0, "bad_mac", "unauthenticated"), "n0 rejects n2 and n3")
    wait_until(lambda: rejected(n1, "bad_mac", "unauthenticated"), "n1 rejects n2 and n3")
    wait_until(lambda: rejected(wrong, "bad_mac", "unauthenticated"), "n2 rejects everyone")
    wait_until(lambda: rejected(bare, "unexpected_mac"), "n3 rejects the signed")
    wait_until(lambda: n0.data("get", "x")["value"] == 3, "n0 has n1's add")
    wait_until(lambda: n1.data("get", "x")["value"] == 3, "n1 has n0's add")
    assert peer_ids(n0) == ["n1"]
    assert peer_ids(n1) == ["n0"]
    assert peer_ids(wrong) == []
    assert peer_ids(bare) == []
    assert (wrong.data("get", "x")["value"], bare.data("get", "x")["value"]) == (10, 100)
    assert set(n0.data("keys")["rejected"]) <= {"bad_mac", "unauthenticated"}

    def key_mismatch(daemon: Daemon, reason: str) -> dict[str, Any] | None:
        lines = [e for e in log_events(daemon, "datagram_rejected") if e["reason"] == reason]
        return lines[0] if lines else None

    # The log says who sent what, under which key id, and what to do about it.
    unexpected = wait_until(lambda: key_mismatch(bare, "unexpected_mac"), "n3 logs it")
    assert unexpected["key_id"] == "k2026a"
    assert unexpected["source"].startswith("127.0.0.1:")
    assert "copy the cluster key file to this node" in unexpected["hint"]
    unsigned = wait_until(lambda: key_mismatch(n0, "unauthenticated"), "n0 logs n3")
    assert unsigned["source"] == f"127.0.0.1:{bare.unicast_port}"
    assert (unsigned["level"], unsigned["key_id"]) == ("warning", None)
    assert "security.key_file" in unsigned["hint"]


class Writer(threading.Thread):
    """Adds to ``r`` round robin through every daemon until stopped; sums what was acked."""

    def __init__(self, daemons: list[Daemon]) -> None:
        super().__init__(name="writer", daemon=True)
        self.clients = [Client(daemon.socket, timeout_s=10.0) for daemon in daemons]
        self.acked_sum = 0
        self.acked = 0
        self.failures: list[str] = []
        self.stopping = threading.Event()

    def run(self) -> None:
        deltas = itertools.cycle(range(1, 10))
        for client in itertools.cycle(self.clients):
            if self.stopping.is_set():
                break
            delta = next(deltas)
            args = {"variable": "r", "delta": delta, "request_id": os.urandom(8).hex()}
            try:
                client.call("add", args, retry=True)
            except Exception as error:
                self.failures.append(repr(error))
                continue
            self.acked_sum += delta
            self.acked += 1

    def stop(self) -> None:
        self.stopping.set()
        self.join(timeout=30)
        assert not self.is_alive(), "the writer did not stop"
        for client in self.clients:
            client.close()


def test_keys_rotate_in_three_sighup_steps_while_adds_flow_and_no_acked_add_is_lost(
    tmp_path: Path, clusters: list[Cluster]
) -> None:
    key_file = write_keys(tmp_path / "keys.yaml", OLD)
    cluster = Cluster.start(tmp_path, 3, extra_config=NO_SYNC, key_file=key_file)
    clusters.append(cluster)
    writer = Writer(cluster.daemons)
    writer.start()
    try:
        steps = [
            ((OLD, NEW), "the new key second everywhere"),
            ((NEW, OLD), "the new key first everywhere"),
            ((NEW,), "the old key removed"),
        ]
        for keys, step in steps:
            write_keys(key_file, *keys)
            expected = {"signing": keys[0].key_id, "accepted": [key.key_id for key in keys]}
            for daemon in cluster.daemons:
                acked_before = writer.acked
                sighup(daemon)
                wait_until(
                    lambda d=daemon, e=expected: (
                        {k: v for k, v in d.data("keys").items() if k != "rejected"} == e
                    ),
                    f"{daemon.name} reloads: {step}",
                )
                # Adds keep flowing while the nodes disagree on the keys.
                wait_until(lambda b=acked_before: writer.acked >= b + 5, f"adds after {step}")
    finally:
        writer.stop()
    assert writer.failures == []
    assert writer.acked > 40
    cluster.wait_agree("r", writer.acked_sum)
    secrets = [base64.b64encode(key.secret).decode() for key in (OLD, NEW)]
    for daemon in cluster.daemons:
        assert daemon.data("keys") == {
            "signing": "k2026b",
            "accepted": ["k2026b"],
            "rejected": {},
        }, daemon.name
        reloads = [(e["signing"], e["accepted"]) for e in log_events(daemon, "keys_reloaded")]
        assert reloads == [
            ("k2026a", ["k2026a", "k2026b"]),
            ("k2026b", ["k2026b", "k2026a"]),
            ("k2026b", ["k2026b"]),
        ]
        log = daemon.log.read_text()
        assert not any(secret in log for secret in secrets)


@pytest.mark.parametrize(
    "breakage",
    ["mode", "content"],
)
def test_a_bad_key_file_on_sighup_is_logged_and_the_old_keys_stay(
    tmp_path: Path, clusters: list[Cluster], breakage: str
) -> None:
    key_file = write_keys(tmp_path / "keys.yaml", OLD)
    cluster = Cluster.start(tmp_path, 1, extra_config=NO_SYNC, key_file=key_file)
    clusters.append(cluster)
    [daemon] = cluster.daemons
    if breakage == "mode":
        write_keys(key_file, NEW).chmod(0o644)
    else:
        key_file.write_text("keys:\n  - id: k2026b\n    secret: c2hvcnQ=\n")
    sighup(daemon)
    [failed] = wait_until(lambda: log_events(daemon, "keys_reload_failed"), "keys_reload_failed")
    assert str(key_file) in failed["error"]
    assert failed["level"] == "error"
    assert log_events(daemon, "keys_reloaded") == []
    assert daemon.data("keys") == {"signing": "k2026a", "accepted": ["k2026a"], "rejected": {}}
    assert log_events(daemon, "config_reloaded")  # the config part of the reload still ran
    assert daemon.data("add", "x", "1")["value"] == 1


def test_a_replayed_datagram_changes_nothing_and_counts_as_replayed(
    tmp_path: Path, clusters: list[Cluster]
) -> None:
    group = NetworkConfig().group
    key_file = write_keys(tmp_path / "keys.yaml", OLD)
    cluster = Cluster.start(tmp_path, 3, extra_config=NO_SYNC, key_file=key_file)
    clusters.append(cluster)
    n0, n1, n2 = cluster.daemons
    port = n0.group_port
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as tap:
        tap.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        tap.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        tap.bind((group, port))
        membership = socket.inet_aton(group) + socket.inet_aton("127.0.0.1")
        tap.setsockopt(socket.IPPROTO_IP, socket.IP_ADD_MEMBERSHIP, membership)
        tap.settimeout(1.0)
        n0.ctl("add", "x", "5")
        captured = wait_until(lambda: _ops_from(tap, "n0"), "capturing n0's op batch")
    # A while later, and more traffic later: n0's sequence numbers have moved on.
    n0.ctl("add", "x", "1")
    n1.ctl("add", "x", "1")
    cluster.wait_agree("x", 7)
    before = {d.name: d.data("history", "x")["ops"] for d in cluster.daemons}

    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sender:
        sender.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_IF, socket.inet_aton("127.0.0.1"))
        sender.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_TTL, 0)
        sender.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_LOOP, 1)
        sender.sendto(captured, (group, port))
        sender.sendto(captured, ("127.0.0.1", n2.unicast_port))

    for daemon, copies in ((n1, 1), (n2, 2)):
        wait_until(
            lambda d=daemon, c=copies: d.data("keys")["rejected"].get("replayed") == c,
            f"{daemon.name} counts the replay",
        )
    assert n0.data("keys")["rejected"] == {}  # its own datagram, looped back: ignored
    cluster.wait_agree("x", 7)
    assert {d.name: d.data("history", "x")["ops"] for d in cluster.daemons} == before
    for daemon in (n1, n2):
        assert daemon.data("keys")["rejected"] == {"replayed": 2 if daemon is n2 else 1}


def _ops_from(tap: socket.socket, sender: str) -> bytes | None:
    """The next datagram on the group that is an op batch from *sender*, if one comes."""
    try:
        data = tap.recv(2048)
    except TimeoutError:
        return None
    envelope = wire.decode(data, (OLD,))
    if envelope.sender.node_id == sender and isinstance(envelope.message, OpBatch):
        return data
    return None
