"""Replication lag of a lone add under loss, in the simulator: the lossy tail.

    python bench/sim_lag.py [--seeds 5] [--probes 200] [--nodes 3] [--out FILE.json]

The simulated twin of `bench/lan_compare.py`'s replication lag: an add on one node
(rotating), then the virtual time until every other node holds it (checked every
millisecond), then a 20 ms pause before the next add; at 0 %, 10 % and 30 % loss on every
link. Each add is the *last* op of its burst, so a lost one is repaired only once a
peer notices the hole. Reported per loss, over every probe of every seed:

- ``lag_p50_ms`` / ``lag_p99_ms`` / ``lag_max_ms``;
- ``datagrams_per_add``: datagrams sent (multicast counts once), cluster-wide, per
  probe (the add's batch, repairs, tail digests, announces meanwhile);
- ``datagrams_per_s``: the same per second while probing (one add per lag + 20 ms),
  and ``idle_datagrams_per_s`` over a quiet second before (announces alone).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from crdtd.sim.cluster import Cluster  # noqa: E402
from crdtd.sim.network import LinkFaults  # noqa: E402

LOSSES = (0.0, 0.1, 0.3)
WARMUP_S = 2.5
IDLE_S = 1.0
PAUSE_S = 0.02
TIMEOUT_S = 15.0
STEP_S = 0.001


def one_seed(
    seed: int, nodes: int, loss: float, probes: int
) -> tuple[list[float], int, float, float]:
    """Return (lags_s, datagrams sent while probing, their rate, idle rate)."""
    cluster = Cluster(
        seed, nodes, faults=LinkFaults(loss=loss, delay_max_s=0.002), check_steps=False
    )
    for index in range(nodes):
        cluster.start(index)
    cluster.run_until(WARMUP_S)
    sent = cluster.network.stats.datagrams_sent
    cluster.run_until(WARMUP_S + IDLE_S)
    idle = (cluster.network.stats.datagrams_sent - sent) / IDLE_S
    sent, started = cluster.network.stats.datagrams_sent, cluster.now
    lags: list[float] = []
    for k in range(probes):
        origin = k % nodes
        t0 = cluster.now
        cluster.add(origin, "lag", 1)
        value = cluster.node(origin).value("lag")
        assert value is not None
        others = [i for i in range(nodes) if i != origin]
        while True:
            if all((cluster.node(i).value("lag") or 0) >= value for i in others):
                lags.append(cluster.now - t0)
                break
            if cluster.now - t0 > TIMEOUT_S:
                lags.append(float("inf"))
                break
            cluster.run_until(cluster.now + STEP_S)
        cluster.run_until(cluster.now + PAUSE_S)
    sent = cluster.network.stats.datagrams_sent - sent
    return lags, sent, sent / (cluster.now - started), idle


def percentile(values: list[float], share: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(share * len(ordered)))]


def table(seeds: int, probes: int, nodes: int) -> list[dict[str, Any]]:
    rows = []
    for loss in LOSSES:
        lags: list[float] = []
        busy = idle = 0.0
        sent = 0
        for seed in range(seeds):
            got, n, b, i = one_seed(seed, nodes, loss, probes)
            lags += got
            sent += n
            busy += b / seeds
            idle += i / seeds
        rows.append(
            {
                "nodes": nodes,
                "loss": loss,
                "probes": len(lags),
                "lag_p50_ms": round(1000 * percentile(lags, 0.5), 1),
                "lag_p99_ms": round(1000 * percentile(lags, 0.99), 1),
                "lag_max_ms": round(1000 * max(lags), 1),
                "datagrams_per_add": round(sent / len(lags), 2),
                "datagrams_per_s": round(busy, 1),
                "idle_datagrams_per_s": round(idle, 1),
            }
        )
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--probes", type=int, default=200, help="adds per seed and loss")
    parser.add_argument("--nodes", type=int, default=3)
    parser.add_argument("--out", type=Path, default=ROOT / "bench/results/sim_lag.json")
    args = parser.parse_args(argv)
    started = time.perf_counter()
    rows = table(args.seeds, args.probes, args.nodes)
    print(
        f"{'loss':>5} {'p50 ms':>8} {'p99 ms':>8} {'max ms':>8} {'dgram/add':>9} "
        f"{'dgram/s':>8} {'idle/s':>7}"
    )
    for row in rows:
        print(
            f"{row['loss']:>5.0%} {row['lag_p50_ms']:>8.1f} {row['lag_p99_ms']:>8.1f} "
            f"{row['lag_max_ms']:>8.1f} {row['datagrams_per_add']:>9.2f} "
            f"{row['datagrams_per_s']:>8.1f} "
            f"{row['idle_datagrams_per_s']:>7.1f}"
        )
    result = {
        "bench": "sim_lag",
        "version": 1,
        "seeds": args.seeds,
        "probes": args.probes,
        "rows": rows,
        "wall_s": round(time.perf_counter() - started, 1),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
