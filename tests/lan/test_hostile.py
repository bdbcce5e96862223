"""A hostile LAN: a keyed 3-node cluster with an attacker in a fourth namespace, then a
key rotation with adds flowing. Real daemons, real multicast, real HMACs.

The attacker (`crdtd.lab.attacker`) captures the group's datagrams, then floods the group
and every node's unicast port for 30 s with random bytes, unsigned and wrongly signed op
batches, tampered and replayed datagrams. Throughout, writers add and a probe times
``status`` on every node. Afterwards every value equals the acknowledged adds, no daemon
restarted, the attacker is nobody's peer, every kind of bad datagram was counted, and
the probe's median latency under attack stayed within 5x of its median before. Then one
node is killed and restarted, and the capture replayed again: every node (the restarted
one from its replay floors) refuses it.
"""

from __future__ import annotations

import base64
import json
import signal
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import pytest

from crdtd.control.client import Client
from crdtd.core.settings import Key
from crdtd.lab import Host, Lab, Node, Outcome, Workload, await_convergence

pytestmark = pytest.mark.lan

MakeLab = Callable[..., Lab]
OLD = Key("k2026a", bytes(range(32)))
NEW = Key("k2026b", bytes(range(64, 112)))
GROUP = "239.255.77.77:7777"  # the defaults
UNICAST_PORT = 7778
FLOOD_S = 30.0
CAPTURE_S = 3.0  # listening before the flood: what it replays
NORMAL_S = 6.0
PROBE_EVERY_S = 0.02
LATENCY_FACTOR = 5.0
REJECTED_KINDS = {"replayed", "bad_mac", "unknown_key", "unauthenticated"}


def write_keys(path: Path, *keys: Key) -> None:
    entries = "".join(
        f"  - id: {key.key_id}\n    secret: {base64.b64encode(key.secret).decode()}\n"
        for key in keys
    )
    path.write_text("keys:\n" + entries)
    path.chmod(0o600)


class Probe(threading.Thread):
    """Times one ``status`` on each node in turn, over persistent connections, until stopped;
    each sample is ``(monotonic time, seconds)``."""

    def __init__(self, nodes: Sequence[Node]) -> None:
        super().__init__(name="latency-probe", daemon=True)
        self.nodes = list(nodes)
        self.samples: list[tuple[float, float]] = []
        self.errors: list[str] = []
        self._stopping = threading.Event()

    def run(self) -> None:
        clients = [Client(node.socket, timeout_s=10.0) for node in self.nodes]
        try:
            while not self._stopping.is_set():
                for client in clients:
                    started = time.monotonic()
                    try:
                        client.call("status")
                    except Exception as error:  # reported by the test, which fails on it
                        self.errors.append(repr(error))
                        continue
                    self.samples.append((started, time.monotonic() - started))
                self._stopping.wait(PROBE_EVERY_S)
        finally:
            for client in clients:
                client.close()

    def between(self, start: float, end: float) -> list[float]:
        return [seconds for at, seconds in self.samples if start <= at < end]

    def stop(self) -> None:
        self._stopping.set()
        self.join(timeout=30)


def stats(node: Node) -> dict[str, Any]:
    return node.call("stats")


def wait_for(check: Callable[[], bool], what: str, timeout_s: float = 20.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {timeout_s:g} s: {what}")
        time.sleep(0.1)


def attack(lab: Lab, evil: Host, captured: Path, *options: str) -> dict[str, Any]:
    """Run `crdtd.lab.attacker` in *evil* against every node until it ends; its report."""
    targets = ",".join(f"{node.address}:{UNICAST_PORT}" for node in lab.nodes)
    argv = ["env", f"PYTHONPATH={lab.source_root}", sys.executable, "-m", "crdtd.lab.attacker"]
    argv += [
        f"--group={GROUP}",
        f"--interface-address={evil.address}",
        f"--targets={targets}",
        f"--key-id={OLD.key_id}",
        f"--member={lab.nodes[0].name}",
        f"--captured={captured}",
        *options,
    ]
    attacker = evil.popen(argv, stdout=subprocess.PIPE)
    try:
        out, _ = attacker.communicate(timeout=CAPTURE_S + FLOOD_S + 30)
    finally:
        attacker.kill()
        attacker.wait()
    assert attacker.returncode == 0, out
    return dict(json.loads(out))


def rejected(node: Node) -> dict[str, int]:
    return dict(node.call("keys")["rejected"])


def ms(seconds: float) -> str:
    return f"{seconds * 1000:.2f} ms"


def test_an_attacker_changes_nothing_and_a_key_rotation_loses_no_add(
    make_lab: MakeLab, tmp_path: Path, lab_rng: Any
) -> None:
    key_file = tmp_path / "keys.yaml"
    write_keys(key_file, OLD)
    config = {"security": {"key_file": str(key_file)}, "sync": {"interval_s": 10}}
    lab = make_lab(3, config=config)
    evil = lab.add_host("evil")
    captured = tmp_path / "captured.b64"
    pids = {node.name: node.pid for node in lab.nodes}
    probe = Probe(lab.nodes)
    probe.start()
    try:
        with Workload(lab, rate_per_s=20, seed=lab_rng.random()) as work:
            time.sleep(NORMAL_S)
            attack_start = time.monotonic()
            report = attack(
                lab,
                evil,
                captured,
                f"--capture-s={CAPTURE_S}",
                f"--seconds={FLOOD_S}",
                f"--seed={lab_rng.randrange(10**6)}",
            )
            attack_end = time.monotonic()
        ledger = work.ledger
    finally:
        probe.stop()
    assert report["captured"] > 0, report
    values = await_convergence(lab, ledger, timeout_s=30)

    normal = probe.between(0, attack_start)
    flooded = probe.between(attack_start + CAPTURE_S, attack_end)
    normal_p50, flooded_p50 = statistics.median(normal), statistics.median(flooded)
    print(
        f"attacker: {report}\nprobe status latency p50/max: before {ms(normal_p50)}/"
        f"{ms(max(normal))} ({len(normal)} samples), under attack {ms(flooded_p50)}/"
        f"{ms(max(flooded))} ({len(flooded)} samples)\nvalues {values}"
    )
    assert not probe.errors, probe.errors[:5]
    assert flooded_p50 <= LATENCY_FACTOR * normal_p50, (normal_p50, flooded_p50)
    for node in lab.nodes:
        assert (node.pid, node.starts) == (pids[node.name], 1), f"{node.name} restarted"
        peers = {peer["node_id"] for peer in node.call("peers")["peers"]}
        assert peers == {other.name for other in lab.nodes if other is not node}
        counts = rejected(node)
        assert set(counts) >= REJECTED_KINDS, (node.name, counts)
        assert stats(node)["datagrams"]["dropped"].get("oversized", 0) > 0, node.name

    # kill -9 one node and bring it back: the same captured datagrams, replayed, are
    # still refused by it (replay floors on disk) and by the others (it was their sender).
    restarted = lab.nodes[0]
    restarted.restart()
    lab.wait_mesh()
    before = {node.name: rejected(node).get("replayed", 0) for node in lab.nodes}
    attack(lab, evil, captured, "--kinds=replay", "--seconds=2")
    for node in lab.nodes:
        assert rejected(node).get("replayed", 0) > before[node.name], node.name
    assert await_convergence(lab, ledger, timeout_s=30) == values

    rotate_keys_with_adds_flowing(lab, key_file, lab_rng)


def rotate_keys_with_adds_flowing(lab: Lab, key_file: Path, lab_rng: Any) -> None:
    """The three steps of the README, each SIGHUPed to every node and waited for."""
    steps = [(OLD, NEW), (NEW, OLD), (NEW,)]
    with Workload(lab, variables=("r1", "r2"), rate_per_s=40, seed=lab_rng.random()) as work:
        for keys in steps:
            accepted = [key.key_id for key in keys]
            write_keys(key_file, *keys)
            for node in lab.nodes:
                assert node.proc is not None
                node.proc.send_signal(signal.SIGHUP)
            for node in lab.nodes:
                wait_for(
                    lambda node=node, accepted=accepted: node.call("keys")["accepted"] == accepted,
                    f"{node.name} accepts {accepted}",
                )
            time.sleep(1.0)
    await_convergence(lab, work.ledger, timeout_s=30)
    assert work.ledger.total(Outcome.ACKED) > 0
