"""Barrier benchmark in the simulator (virtual time); prints a table and writes JSON.

For 3, 10 and 30 nodes, with 1k and 100k ops in the log, at 0% and 10% loss: the
barrier's duration at its initiator and the write-freeze time (how long each node stayed
out of Work), p50/p99 over seeds. Then a long run with automatic barriers and a steady
write load, sampling the largest op log any node holds: it must stay bounded.

    .venv/bin/python bench/sim_barrier.py [--seeds 5] [--quick] [--out FILE.json]
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import time
from pathlib import Path
from typing import Any, ClassVar

from crdtd.core.events import Event, SyncFinished
from crdtd.core.node import Node
from crdtd.core.settings import Settings
from crdtd.sim.cluster import Cluster
from crdtd.sim.network import LinkFaults


class _Recorder(Node):
    """A Node that also keeps every SyncFinished it reports, for the freeze times."""

    finished: ClassVar[list[SyncFinished]] = []

    def events(self) -> list[Event]:
        events = super().events()
        self.finished.extend(e for e in events if isinstance(e, SyncFinished))
        return events


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] if ordered else float("nan")


def one_barrier(seed: int, nodes: int, log_ops: int, loss: float) -> tuple[float, list[float]]:
    """Fill the log with *log_ops* ops, converge, run one barrier; (duration, freezes)."""
    settings = Settings(sync_interval_s=0)
    faults = LinkFaults(loss=loss, delay_max_s=0.002)
    cluster = Cluster(seed, nodes, settings, faults, node_factory=_Recorder, check_steps=False)
    for index in range(nodes):
        cluster.start(index)
    cluster.run_until(3.0)
    rng = random.Random(seed)
    per_batch = 500
    for start in range(0, log_ops, per_batch):
        index = rng.randrange(nodes)
        cluster.add_batch(
            index, [("x", rng.randint(-9, 9)) for _ in range(per_batch)][: log_ops - start]
        )
        cluster.run_until(cluster.now + 0.01)
    cluster.await_convergence(600.0, check_every_s=0.5)
    cluster.run_until(cluster.now + 2.5)  # everyone has heard everyone's digest
    _Recorder.finished.clear()
    finished = cluster.await_barrier(0, 60.0)
    cluster.run_until(cluster.now + 1.0)
    freezes = [e.duration_s for e in _Recorder.finished if e.result == "completed"]
    return finished.duration_s, freezes


def log_length_run(seconds: float, nodes: int) -> dict[str, Any]:
    """Steady writes with automatic barriers every 10 s; sample the largest log."""
    settings = Settings(sync_interval_s=10.0, sync_min_gap_s=10.0)
    cluster = Cluster(7, nodes, settings, LinkFaults(loss=0.05), check_steps=False)
    for index in range(nodes):
        cluster.start(index)
    rng = random.Random(7)
    samples = []
    t = 1.0
    while t < seconds:
        cluster.run_until(t)
        cluster.add(rng.randrange(nodes), f"v{rng.randrange(3)}", rng.randint(-5, 5))
        t += 0.02  # 50 adds/s across the cluster
        if int(t * 50) % 50 == 0:
            samples.append(max(slot.node.ops_in_log() for slot in cluster.slots if slot.node))
    tail = samples[len(samples) // 2 :]
    return {
        "virtual_s": seconds,
        "adds_per_s": 50,
        "nodes": nodes,
        "log_len_max": max(samples),
        "log_len_max_second_half": max(tail),
        "log_len_mean": sum(samples) / len(samples),
        "barriers_completed": sum(1 for b in cluster.barriers if b.result == "completed"),
        "barriers_aborted": sum(1 for b in cluster.barriers if b.result == "aborted"),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--quick", action="store_true", help="1k ops only, fewer nodes")
    parser.add_argument("--out", type=Path, default=Path("bench/results/sim_barrier.json"))
    args = parser.parse_args()
    rows = []
    sizes = (3, 10) if args.quick else (3, 10, 30)
    logs = (1_000,) if args.quick else (1_000, 100_000)
    print(
        f"{'nodes':>5} {'log':>7} {'loss':>5} {'dur p50':>9} {'dur p99':>9} "
        f"{'freeze p50':>10} {'freeze p99':>10} {'cpu s':>6}"
    )
    for nodes in sizes:
        for log_ops in logs:
            for loss in (0.0, 0.1):
                seeds = args.seeds if log_ops <= 1_000 else max(1, args.seeds // 3)
                started = time.process_time()
                durations, freezes = [], []
                for seed in range(seeds):
                    duration, frozen = one_barrier(seed, nodes, log_ops, loss)
                    durations.append(duration)
                    freezes.extend(frozen)
                row = {
                    "nodes": nodes,
                    "log_ops": log_ops,
                    "loss": loss,
                    "seeds": seeds,
                    "duration_ms_p50": percentile(durations, 0.5) * 1000,
                    "duration_ms_p99": percentile(durations, 0.99) * 1000,
                    "freeze_ms_p50": percentile(freezes, 0.5) * 1000,
                    "freeze_ms_p99": percentile(freezes, 0.99) * 1000,
                    "cpu_s": time.process_time() - started,
                }
                rows.append(row)
                print(
                    f"{nodes:>5} {log_ops:>7} {loss:>5.0%} {row['duration_ms_p50']:>8.1f}ms "
                    f"{row['duration_ms_p99']:>8.1f}ms {row['freeze_ms_p50']:>9.1f}ms "
                    f"{row['freeze_ms_p99']:>9.1f}ms {row['cpu_s']:>6.1f}",
                    flush=True,
                )
    long_run = log_length_run(120.0 if args.quick else 600.0, 5)
    print(f"\nlong run: {long_run}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"barriers": rows, "log_length": long_run}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
