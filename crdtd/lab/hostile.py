"""The hostile-LAN scenario, shared by tests/lan/test_hostile.py (what must hold) and
bench/lan_hostile.py (how fast it stays): a keyed cluster, writers adding on every node,
a probe timing control requests, and `crdtd.lab.attacker` in a namespace of its own.

`flood` runs the probe for ``normal_s`` seconds, then the attacker (``capture_s`` seconds
listening to the group, ``flood_s`` seconds flooding), stops the writers and waits until
every node reads the ledger's values. The probe's samples split at the attacker's start
(plus the capture) give the "before" and "under attack" latencies.
"""

from __future__ import annotations

import json
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from crdtd.control.client import Client
from crdtd.core.settings import Key
from crdtd.daemon.keys import key_file_text
from crdtd.lab.checks import await_convergence
from crdtd.lab.lab import Host, Lab, Node
from crdtd.lab.workload import Ledger, Workload

CLUSTER_KEY = Key("k2026a", bytes(range(32)))
GROUP = "239.255.77.77:7777"  # network.group and network.port defaults
UNICAST_PORT = 7778  # the network.unicast_port default
PROBE_EVERY_S = 0.02
ATTACKER_SLACK_S = 30.0


def write_keys(path: Path, *keys: Key) -> Path:
    """A key file as `security.key_file` wants it (mode 0600); returns *path*. Rewrites
    an existing file: the rotation steps change the keys in place."""
    path.write_text(key_file_text(keys))
    path.chmod(0o600)
    return path


class Probe(threading.Thread):
    """Times one ``status`` on each node in turn, over persistent connections, every
    `PROBE_EVERY_S`, until stopped. ``status`` goes through the owner task, so it waits
    behind whatever the daemon is busy with: it measures how responsive the daemon is."""

    def __init__(self, nodes: Sequence[Node]) -> None:
        super().__init__(name="crdtlab-probe", daemon=True)
        self.nodes = list(nodes)
        self.samples: list[tuple[float, float]] = []  # (monotonic start, seconds)
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
                    except Exception as error:  # kept: a failed probe fails the caller
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


def run_attacker(
    lab: Lab,
    host: Host,
    captured: Path,
    *,
    seconds: float,
    capture_s: float = 0.0,
    kinds: Sequence[str] = (),
    seed: int = 0,
    once: bool = False,
) -> dict[str, Any]:
    """Run `crdtd.lab.attacker` in *host* against every node until it ends (killed if it
    overruns); return its report. It captures into *captured*, or replays what is there;
    *kinds* limits what it sends (default: everything); *once*: each payload once to
    each node's unicast port, instead of a flood."""
    targets = ",".join(f"{node.address}:{UNICAST_PORT}" for node in lab.nodes)
    argv = ["env", f"PYTHONPATH={lab.source_root}", sys.executable, "-m", "crdtd.lab.attacker"]
    argv += [
        f"--group={GROUP}",
        f"--interface-address={host.address}",
        f"--targets={targets}",
        f"--key-id={CLUSTER_KEY.key_id}",
        f"--member={lab.nodes[0].name}",
        f"--captured={captured}",
        f"--capture-s={capture_s}",
        f"--seconds={seconds}",
        f"--seed={seed}",
    ]
    if kinds:
        argv.append(f"--kinds={','.join(kinds)}")
    if once:
        argv.append("--once")
    attacker = host.popen(argv, stdout=subprocess.PIPE)
    try:
        out, _ = attacker.communicate(timeout=capture_s + seconds + ATTACKER_SLACK_S)
    finally:
        attacker.kill()
        attacker.wait()
    if attacker.returncode != 0:
        raise RuntimeError(f"the attacker failed ({attacker.returncode}): {out!r}")
    return dict(json.loads(out))


@dataclass
class FloodResult:
    attacker: dict[str, Any]
    ledger: Ledger
    values: dict[str, int]
    before_s: list[float]  # probe latencies before the attack
    during_s: list[float]  # ... and while it flooded
    probe_errors: list[str]

    def summary(self) -> dict[str, Any]:
        def ms(samples: list[float], q: int) -> float:
            return round(statistics.quantiles(samples, n=100)[q - 1] * 1000, 2)

        before, during = self.before_s, self.during_s
        return {
            "flood_datagrams_per_s": self.attacker["datagrams_per_s"],
            "captured": self.attacker["captured"],
            "before_p50_ms": ms(before, 50),
            "before_p99_ms": ms(before, 99),
            "during_p50_ms": ms(during, 50),
            "during_p99_ms": ms(during, 99),
            "during_max_ms": round(max(during) * 1000, 2),
            "p50_ratio": round(statistics.median(during) / statistics.median(before), 2),
            "samples": [len(before), len(during)],
            "probe_errors": len(self.probe_errors),
        }


def flood(
    lab: Lab,
    host: Host,
    captured: Path,
    *,
    normal_s: float,
    capture_s: float,
    flood_s: float,
    seed: int,
    rate_per_s: float = 20.0,
) -> FloodResult:
    """Writers and the probe run throughout; the attacker in *host* listens, then floods.
    Returns once every node reads the ledger's values (`NotConverged` otherwise)."""
    probe = Probe(lab.nodes)
    probe.start()
    try:
        with Workload(lab, rate_per_s=rate_per_s, seed=seed) as work:
            time.sleep(normal_s)
            started = time.monotonic()
            report = run_attacker(
                lab, host, captured, seconds=flood_s, capture_s=capture_s, seed=seed
            )
            ended = time.monotonic()
    finally:
        probe.stop()
    values = await_convergence(lab, work.ledger, timeout_s=30)
    return FloodResult(
        attacker=report,
        ledger=work.ledger,
        values=values,
        before_s=probe.between(0.0, started),
        during_s=probe.between(started + capture_s, ended),
        probe_errors=probe.errors,
    )
