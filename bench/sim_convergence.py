"""How fast a simulated cluster converges, what it costs on the wire, and core throughput.

    python bench/sim_convergence.py [--runs 100] [--out bench/results/sim_convergence.json]

For 3 and 20 nodes at 0%, 10% and 30% loss on every link, each run adds at random nodes
for a few virtual seconds, then - with the loss still on - waits for every node to hold
the sum of the acknowledged ops. Reported per cell, over ``--runs`` seeds:

- ``settle_p50_s`` / ``settle_p99_s``: virtual time from the last acknowledged add to
  convergence (checked every millisecond of virtual time);
- ``datagrams_per_op``: datagrams sent (multicast counts once) per acknowledged add,
  announces and repairs included, over the whole run;

and once: ``ops_applied_per_cpu_s``, op applications (each add is applied at every
node) per second of ``time.process_time`` over a loss-free 5-node run of 3000 adds, the
simulator included (a floor for the core alone), without and with the per-step
invariant checks (which scan histories, so they grow with an unfolded log).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from crdtd.sim.cluster import Cluster  # noqa: E402
from crdtd.sim.network import LinkFaults  # noqa: E402
from crdtd.sim.rng import stream  # noqa: E402

NODE_COUNTS = (3, 20)
LOSSES = (0.0, 0.1, 0.3)
ADD_S = 5.0
ADDS_PER_S = 10.0
SETTLE_BOUND_S = 60.0


def one_run(seed: int, nodes: int, loss: float) -> tuple[float, int, int]:
    """Return (settle_s, datagrams_sent, adds_acked) of one run."""
    cluster = Cluster(seed, nodes, faults=LinkFaults(loss=loss, delay_max_s=0.002))
    for index in range(nodes):
        cluster.start(index)
    rng = stream(seed, "workload")
    when = 0.5
    while True:
        when += rng.expovariate(ADDS_PER_S)
        if when >= 0.5 + ADD_S:
            break
        cluster.run_until(when)
        cluster.add(rng.randrange(nodes), rng.choice(("a", "b", "c")), rng.randint(-9, 9))
    converged_at = cluster.await_convergence(SETTLE_BOUND_S, check_every_s=0.001)
    settle = converged_at - cluster.ledger.last_ack_s
    return settle, cluster.network.stats.datagrams_sent, cluster.stats.adds_acked


def percentile(values: list[float], share: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(share * len(ordered)))]


def convergence_table(runs: int) -> list[dict[str, Any]]:
    rows = []
    for nodes in NODE_COUNTS:
        for loss in LOSSES:
            settles: list[float] = []
            datagrams = adds = 0
            for seed in range(runs):
                settle, sent, acked = one_run(seed, nodes, loss)
                settles.append(settle)
                datagrams += sent
                adds += acked
            rows.append(
                {
                    "nodes": nodes,
                    "loss": loss,
                    "runs": runs,
                    "settle_p50_s": round(statistics.median(settles), 4),
                    "settle_p99_s": round(percentile(settles, 0.99), 4),
                    "settle_max_s": round(max(settles), 4),
                    "datagrams_per_op": round(datagrams / adds, 2),
                }
            )
    return rows


def throughput(check_steps: bool, nodes: int = 5, adds: int = 3000) -> dict[str, Any]:
    cluster = Cluster(1, nodes, check_steps=check_steps)
    for index in range(nodes):
        cluster.start(index)
    rng = stream(1, "workload")
    started = time.process_time()
    for i in range(adds):
        cluster.run_until(0.5 + i * 0.002)
        cluster.add(rng.randrange(nodes), rng.choice(("a", "b", "c")), rng.randint(-9, 9))
    cluster.await_convergence(SETTLE_BOUND_S)
    cpu_s = time.process_time() - started
    applied = cluster.stats.adds_acked * nodes
    return {
        "invariants_every_step": check_steps,
        "nodes": nodes,
        "adds": cluster.stats.adds_acked,
        "ops_applied": applied,
        "cpu_s": round(cpu_s, 3),
        "ops_applied_per_cpu_s": round(applied / cpu_s),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=100, help="seeds per cell (default 100)")
    parser.add_argument("--out", type=Path, default=ROOT / "bench/results/sim_convergence.json")
    args = parser.parse_args(argv)
    started = time.perf_counter()
    rows = convergence_table(args.runs)
    speeds = [throughput(check_steps=False), throughput(check_steps=True)]
    print(f"{'nodes':>5} {'loss':>5} {'settle p50 s':>13} {'settle p99 s':>13} {'dgrams/op':>10}")
    for row in rows:
        print(
            f"{row['nodes']:>5} {row['loss']:>5.0%} {row['settle_p50_s']:>13.4f} "
            f"{row['settle_p99_s']:>13.4f} {row['datagrams_per_op']:>10.2f}"
        )
    for speed in speeds:
        checks = "with" if speed["invariants_every_step"] else "without"
        print(
            f"ops applied per CPU second ({speed['nodes']} nodes, no loss, simulator "
            f"included, {checks} per-step invariants): {speed['ops_applied_per_cpu_s']}"
        )
    result = {
        "bench": "sim_convergence",
        "version": 1,
        "add_s": ADD_S,
        "adds_per_s": ADDS_PER_S,
        "convergence": rows,
        "throughput": speeds,
        "wall_s": round(time.perf_counter() - started, 1),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
