"""Idle cost of real crdtd daemons in the LAN lab, at 3, 10 and 30 nodes on this machine.

    python bench/lan_scale.py [--sizes 3,10,30] [--measure-s 20] [--out FILE.json]

Writes bench/results/lan_scale.json by default. Needs root (network namespaces, see
`crdtd.lab`). For each size: start a lab of N nodes (daemon defaults: announce every
1 s, times N / 5 beyond 5 nodes, `crdtd.core.settings.pace`; a full sync every
300 s), wait until every node sees every other one as a live peer (``mesh_s``, counted
from the moment the last daemon answered on its socket), let it settle for
``--settle-s``, then, with no adds at all, read every daemon's
utime+stime from /proc/PID/stat at the start and the end of ``--measure-s`` seconds.
Reported per size:

- ``start_s``: from the first daemon spawned to the last answering on its socket;
- ``cpu_pct_mean`` / ``cpu_pct_max``: one daemon's CPU, in percent of one core;
- ``cpu_pct_all``: all daemons together, in percent of one core;
- ``rss_mib_mean`` / ``rss_mib_max``: VmRSS at the end;
- ``rx_per_s``: datagrams one daemon received per second (its status stats): every
  node hears every node's announce, so about N - 1 a second up to 5 nodes, and about 5
  beyond, where the announces slow down with N.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.report import table, write_result  # noqa: E402
from crdtd.lab import Lab, unavailable_reason  # noqa: E402

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def cpu_ticks(pid: int) -> int:
    """utime + stime of *pid*, in clock ticks (fields 14 and 15 of /proc/PID/stat)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return int(fields[11]) + int(fields[12])


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise LookupError(f"no VmRSS for {pid}")


def measure(nodes: int, settle_s: float, measure_s: float) -> dict[str, Any]:
    began = time.monotonic()
    with Lab(nodes, start=False) as lab:
        lab.start_all(timeout_s=60 + nodes)
        start_s = time.monotonic() - began
        mesh_s = lab.wait_mesh(timeout_s=60 + nodes)
        time.sleep(settle_s)
        pids = {node.name: node.pid or 0 for node in lab.nodes}
        assert all(pids.values()), f"a daemon is down: {pids}"
        rx_before = {
            node.name: node.status()["stats"].get("datagrams_received", 0) for node in lab.nodes
        }
        ticks_before = {name: cpu_ticks(pid) for name, pid in pids.items()}
        t0 = time.monotonic()
        time.sleep(measure_s)
        elapsed = time.monotonic() - t0
        ticks_after = {name: cpu_ticks(pid) for name, pid in pids.items()}
        rss = [rss_kib(pid) / 1024 for pid in pids.values()]
        rx_after = {
            node.name: node.status()["stats"].get("datagrams_received", 0) for node in lab.nodes
        }
        lab.wait_mesh(timeout_s=10)  # still a full mesh at the end
    cpu = [(ticks_after[name] - ticks_before[name]) / CLOCK_TICKS / elapsed * 100 for name in pids]
    rx = [(rx_after[name] - rx_before[name]) / elapsed for name in pids]
    return {
        "nodes": nodes,
        "start_s": round(start_s, 2),
        "mesh_s": round(mesh_s, 2),
        "cpu_pct_mean": round(statistics.mean(cpu), 2),
        "cpu_pct_max": round(max(cpu), 2),
        "cpu_pct_all": round(sum(cpu), 1),
        "rss_mib_mean": round(statistics.mean(rss), 1),
        "rss_mib_max": round(max(rss), 1),
        "rx_per_s": round(statistics.mean(rx), 1),
        "measure_s": round(elapsed, 1),
    }


COLUMNS = (
    ("nodes", "nodes"),
    ("start_s", "start s"),
    ("mesh_s", "mesh s"),
    ("cpu_pct_mean", "cpu% mean"),
    ("cpu_pct_max", "cpu% max"),
    ("cpu_pct_all", "cpu% all"),
    ("rss_mib_mean", "RSS MiB mean"),
    ("rss_mib_max", "RSS MiB max"),
    ("rx_per_s", "rx dgram/s"),
)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default="3,10,30", help="node counts (default 3,10,30)")
    parser.add_argument("--settle-s", type=float, default=5.0)
    parser.add_argument("--measure-s", type=float, default=20.0)
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "lan_scale.json")
    options = parser.parse_args()
    reason = unavailable_reason()
    if reason:
        print(f"lan_scale: {reason}", file=sys.stderr)
        return 1
    rows = []
    for size in (int(word) for word in options.sizes.split(",")):
        rows.append(measure(size, options.settle_s, options.measure_s))
        print(json.dumps(rows[-1]), file=sys.stderr, flush=True)
    print(table(rows, COLUMNS))
    write_result(options.out, "lan_scale", rows, settle_s=options.settle_s)
    return 0


if __name__ == "__main__":
    sys.exit(main())
