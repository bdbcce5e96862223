"""Benchmark the real daemon on a 3-node loopback cluster; prints a table, writes JSON.

Measures: `crdtctl get` process wall time; add latency p50/p99 on one persistent
connection (acknowledged = durable); add throughput unpipelined and pipelined; the time
until all nodes agree after a burst of 100k adds; barrier wall time; idle CPU and RSS
per daemon; and how long a node that joins late takes to catch up with the burst.

    .venv/bin/python bench/daemon_loopback.py [--burst 100000] [--out FILE.json]
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from crdtd.control.client import Client
from crdtd.control.protocol import encode_request
from tests.daemon.loopback import Cluster, Daemon, crdtctl, free_udp_port


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def pipelined_adds(path: Path, count: int, window: int = 256) -> float:
    """Send *count* adds keeping *window* in flight; return adds per second."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.connect(str(path))
        sock.settimeout(60)
        start = time.perf_counter()
        sent = received = 0
        buffer = b""
        while received < count:
            while sent < count and sent - received < window:
                sent += 1
                sock.sendall(encode_request(sent, "add", {"variable": "p", "delta": 1}))
            buffer += sock.recv(1 << 20)
            *lines, buffer = buffer.split(b"\n")
            for line in lines:
                assert json.loads(line)["ok"], line
            received += len(lines)
        return count / (time.perf_counter() - start)


def wait_agree(cluster: Cluster, variable: str, expected: int, timeout_s: float) -> float:
    start = time.perf_counter()
    clients = [Client(d.socket) for d in cluster.daemons]
    try:
        while time.perf_counter() - start < timeout_s:
            values = [c.call("get", {"variable": variable})["value"] for c in clients]
            if all(v == expected for v in values):
                return time.perf_counter() - start
            time.sleep(0.01)
    finally:
        for client in clients:
            client.close()
    raise SystemExit(f"no agreement on {variable} within {timeout_s} s")


def run(burst: int) -> dict[str, Any]:
    results: dict[str, Any] = {"nodes": 3, "burst_adds": burst}
    with tempfile.TemporaryDirectory(prefix="crdtd-bench-") as tmp:
        cluster = Cluster.start(
            Path(tmp), 3, extra_config="sync: {interval_s: 0}\n", log_level="info"
        )
        try:
            first = cluster.daemons[0]
            first.ctl("add", "x", "1")
            walls = []
            for _ in range(20):
                start = time.perf_counter()
                crdtctl("--socket", str(first.socket), "get", "x")
                walls.append(time.perf_counter() - start)
            results["crdtctl_get_wall_ms_p50"] = statistics.median(walls) * 1000

            latencies = []
            with Client(first.socket) as client:
                start = time.perf_counter()
                for _ in range(2000):
                    t0 = time.perf_counter()
                    client.call("add", {"variable": "lat", "delta": 1})
                    latencies.append(time.perf_counter() - t0)
                elapsed = time.perf_counter() - start
            results["add_latency_ms_p50"] = percentile(latencies, 0.5) * 1000
            results["add_latency_ms_p99"] = percentile(latencies, 0.99) * 1000
            results["add_unpipelined_per_s"] = 2000 / elapsed
            results["add_pipelined_per_s"] = pipelined_adds(first.socket, 20000)

            expected = first.data("get", "p")["value"]
            wait_agree(cluster, "p", expected, 60)
            start = time.perf_counter()
            value = first.data("populate", "burst", str(burst))["value"]
            results["burst_durable_s"] = time.perf_counter() - start
            results["burst_all_agree_s"] = (
                wait_agree(cluster, "burst", value, 120) + results["burst_durable_s"]
            )
            joiner = Daemon(
                "late",
                cluster.root,
                first.group_port,
                free_udp_port(),
                extra_config="sync: {interval_s: 0}\n",
                log_level="info",
            )
            start = time.perf_counter()
            joiner.start()
            cluster.daemons.append(joiner)
            wait_agree(cluster, "burst", value, 120)
            results["late_join_catch_up_s"] = time.perf_counter() - start
            results["late_join_ops"] = first.data("status")["ops_in_log"]
            ops = first.data("status")["ops_in_log"]
            start = time.perf_counter()
            sync = first.data("sync")
            results["barrier_wall_ms"] = (time.perf_counter() - start) * 1000
            results["barrier_duration_ms"] = sync["duration_ms"]
            results["barrier_result"] = sync["result"]
            results["barrier_ops_folded"] = ops
            first.ctl("add", "x", "1")
            sync = first.data("sync")
            results["barrier_small_log_ms"] = sync["duration_ms"]

            time.sleep(2)
            pids = [d.process.pid for d in cluster.daemons if d.process]
            before = [cpu_seconds(pid) for pid in pids]
            time.sleep(10)
            after = [cpu_seconds(pid) for pid in pids]
            results["idle_cpu_percent_per_daemon"] = max(
                (a - b) / 10 * 100 for a, b in zip(after, before, strict=True)
            )
            results["rss_mib_per_daemon"] = max(rss_mib(pid) for pid in pids)
        finally:
            cluster.stop()
    return results


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--burst", type=int, default=100_000)
    parser.add_argument("--out", type=Path, default=Path("bench/results/daemon_loopback.json"))
    args = parser.parse_args()
    results = run(args.burst)
    width = max(map(len, results))
    for key, value in results.items():
        shown = f"{value:,.2f}" if isinstance(value, float) else str(value)
        print(f"{key:<{width}}  {shown}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
