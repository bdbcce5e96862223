"""The lab itself: what it builds is real, and everything it builds goes away.

The ledger and config tests at the bottom need no root and carry no ``lan`` mark.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from crdtd.control.client import DaemonUnreachable
from crdtd.control.protocol import ControlError, ErrorCode
from crdtd.lab import Host, Lab, Ledger, Outcome, clean_stale, netns
from crdtd.lab.cli import parse_setting
from crdtd.lab.lab import _merge
from crdtd.lab.workload import classify

MakeLab = Callable[..., Lab]
lan = pytest.mark.lan


def _host_network() -> str:
    """What the host's own network namespace looks like (it must not change)."""
    return "\n".join(
        netns.run(["ip", *args]) for args in (["-o", "link"], ["-o", "addr"], ["route"])
    )


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie is dead too.
    return Path(f"/proc/{pid}/stat").read_text().split(") ")[1][0] != "Z"


def _wait_gone(pids: list[int], timeout_s: float = 5.0) -> list[int]:
    deadline = time.monotonic() + timeout_s
    while (alive := [pid for pid in pids if _alive(pid)]) and time.monotonic() < deadline:
        time.sleep(0.05)
    return alive


@lan
def test_lab_is_real_multicast_and_close_removes_everything(lab_environment: None) -> None:
    host_before = _host_network()
    with Lab(3, config={"sync": {"interval_s": 0}}) as lab:
        lab.wait_mesh(timeout_s=20)  # discovery is by multicast announces only
        node = lab.nodes[0]
        link = netns.ip("link", "show", node.interface, netns=node.netns)
        assert "MULTICAST" in link and "UP" in link, link
        assert "224.0.0.0/4" in netns.ip("route", netns=node.netns)
        started = node.events("started")[0]
        assert started["interface"] == node.interface
        assert started["address"] == f"{node.address}:7778"
        assert _host_network() == host_before, "the lab changed the host's network"
        pids = [n.pid for n in lab.nodes]
        names = [host.netns for host in lab.hosts] + [lab.bridge_netns]
        directory, lock = lab.directory, netns.LOCK_DIR / f"{lab.run_id}.lock"
        assert lock.exists()
    assert not set(names) & set(netns.list_netns())
    assert not _wait_gone([pid for pid in pids if pid is not None])
    assert not directory.exists()
    assert not lock.exists()
    assert _host_network() == host_before


@lan
def test_a_killed_run_leaves_no_daemons_and_the_next_run_cleans_up(
    lab_alone: None,
) -> None:
    script = (
        "import sys, time\n"
        "from crdtd.lab import Lab\n"
        "lab = Lab(2).open()\n"
        "print(lab.run_id, lab.prefix, lab.directory, *[n.pid for n in lab.nodes], flush=True)\n"
        "time.sleep(120)\n"
    )
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        run_id, prefix, directory, *pids = proc.stdout.readline().split()
    finally:
        proc.kill()
        proc.wait()
    assert not _wait_gone([int(pid) for pid in pids]), "daemons outlived their lab"
    left = [name for name in netns.list_netns() if name.startswith(prefix)]
    assert left, "expected the killed run's namespaces to be left behind"
    assert run_id in clean_stale()
    assert not [name for name in netns.list_netns() if name.startswith(prefix)]
    assert not Path(directory).exists()


@lan
def test_ctrl_c_on_lab_up_removes_everything(lab_environment: None) -> None:
    """`lab up` started the way CI starts things, with SIGINT ignored (a ``cmd &`` of a
    non-interactive shell does that, and Python keeps an inherited SIG_IGN): SIGINT must
    still remove everything. Bounded: the lab must be up within *up_s* and gone within
    *down_s* of the SIGINT; past either, SIGABRT makes faulthandler print where it
    hangs into the failure message, and what the run left is removed."""
    up_s, down_s = 60.0, 20.0
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        proc = subprocess.Popen(
            [sys.executable, "-m", "crdtd.lab", "up", "--nodes", "2"],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            env={**os.environ, "PYTHONFAULTHANDLER": "1"},
        )
    finally:
        signal.signal(signal.SIGINT, previous)
    watchdog = threading.Timer(up_s, proc.send_signal, [signal.SIGABRT])
    watchdog.start()
    output = []
    try:
        assert proc.stdout is not None
        for line in proc.stdout:
            output.append(line)
            if "Ctrl-C removes everything" in line:
                break
        watchdog.cancel()
        proc.send_signal(signal.SIGINT)
        try:
            output.append(proc.communicate(timeout=down_s)[0])
        except subprocess.TimeoutExpired:
            proc.send_signal(signal.SIGABRT)  # faulthandler: where it hangs
            output.append(proc.communicate(timeout=10)[0])
    finally:
        watchdog.cancel()
        if proc.poll() is None:
            proc.kill()
        proc.wait()
    text = "".join(output)
    run = re.search(r"bridge: (crdtlab-([0-9a-f]{8})-)br", text)
    left = [name for name in netns.list_netns() if run and name.startswith(run.group(1))]
    locked = bool(run) and (netns.LOCK_DIR / f"{run.group(2)}.lock").exists()
    if proc.returncode != 130 or left or locked:
        clean_stale()  # the run is dead, so its lock is free: this removes what it left
    assert proc.returncode == 130, text
    assert "interrupted: the lab is removed" in text, text
    assert run, text
    assert not left, left
    assert not locked, text


@lan
def test_faults_are_iptables_rules_in_the_node_namespace(make_lab: MakeLab) -> None:
    lab = make_lab(3, config={"sync": {"interval_s": 0}})
    a, b, c = lab.nodes

    def rules(host: Host) -> str:
        return host.exec(["iptables", "-S"])

    lab.loss(0.3, [a])
    assert "-m statistic --mode random --probability 0.2999" in rules(a)
    lab.partition([a], [b, c])
    assert f"-s {b.address}/32" in rules(a) and f"-s {a.address}/32" in rules(c)
    assert "statistic" in rules(a), "a partition must not remove the loss"
    c.block_multicast(outbound=True)
    assert "-d 224.0.0.0/4" in rules(c) and "-A OUTPUT" in rules(c)
    lab.heal()
    assert all("-A " not in rules(host) for host in lab.nodes)
    # One-way: c stops hearing a; a still hears c.
    lab.one_way(senders=[a], receivers=[c])
    lab.wait_mesh(nodes=[a, b], timeout_s=10)
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        seen_by_c = {p["node_id"] for p in c.status()["peers"] if not p["suspected"]}
        if a.name not in seen_by_c:
            break
        time.sleep(0.25)
    assert a.name not in seen_by_c
    assert c.name in {p["node_id"] for p in a.status()["peers"] if not p["suspected"]}


@lan
def test_kill_restart_and_wipe_a_node(make_lab: MakeLab) -> None:
    lab = make_lab(2, config={"sync": {"interval_s": 0}})
    node = lab.nodes[0]
    node.call("add", {"variable": "x", "delta": 5})
    incarnation = node.status()["incarnation"]
    node.kill()
    with pytest.raises(DaemonUnreachable):
        node.status()
    node.start()
    restarted = node.status()["incarnation"]
    assert node.get("x") == 5 and restarted > incarnation  # every boot: a new incarnation
    node.kill()
    node.wipe()
    node.start()
    assert node.status()["incarnation"] > restarted
    lab.wait_mesh(timeout_s=15)


# --- no root needed ---------------------------------------------------------------


def test_ledger_bounds_are_acked_sum_plus_each_sign_of_maybes() -> None:
    ledger = Ledger(["x"])
    ledger.record("n01", "x", 5, Outcome.ACKED)
    ledger.record("n01", "x", 3, Outcome.MAYBE)
    ledger.record("n02", "x", -2, Outcome.MAYBE)
    ledger.record("n02", "x", 7, Outcome.NOT_APPLIED)
    assert ledger.bounds("x") == (3, 8)
    assert ledger.total(Outcome.MAYBE) == 2
    assert ledger.bounds("never") == (0, 0)


@pytest.mark.parametrize(
    ("error", "outcome"),
    [
        (DaemonUnreachable("s", "socket missing (is crdtd running?)"), Outcome.NOT_APPLIED),
        (DaemonUnreachable("s", "connection refused (a stale socket)"), Outcome.NOT_APPLIED),
        (DaemonUnreachable("s", "connection lost (Broken pipe)"), Outcome.NOT_APPLIED),
        (DaemonUnreachable("s", "connection lost (Connection reset by peer)"), Outcome.MAYBE),
        (DaemonUnreachable("s", "connection closed by crdtd"), Outcome.MAYBE),
        (ControlError(ErrorCode.TIMEOUT, "no answer"), Outcome.MAYBE),
        (ControlError(ErrorCode.INTERNAL, "boom"), Outcome.MAYBE),
        (ControlError(ErrorCode.BUSY, "busy"), Outcome.NOT_APPLIED),
    ],
)
def test_a_failed_add_is_maybe_unless_it_provably_never_arrived(
    error: Exception, outcome: Outcome
) -> None:
    assert classify(error) is outcome


def test_node_config_overrides_merge_by_section() -> None:
    base = {"sync": {"interval_s": 5, "min_gap_s": 2}, "log": {"level": "info"}}
    assert _merge(base, {"sync": {"interval_s": 0}}) == {
        "sync": {"interval_s": 0, "min_gap_s": 2},
        "log": {"level": "info"},
    }
    assert parse_setting("network.announce_interval_s=0.5") == (
        ["network", "announce_interval_s"],
        0.5,
    )
