"""``python -m crdtd.sim``: run seeds of a scenario, or replay one with its trace.

Rules:
- ``main(argv) -> int``: ``sweep`` and ``replay`` return data; rendering and the exit code
  are separate (exit 1 when any run failed, 2 on a usage error);
- the LAST line printed is always one JSON object (``runs``, ``failed``, ``failures`` with
  a replay command each, barrier counts, ``log_len_max``, ``datagrams_per_op``...), so a
  script can read it with ``tail -n 1``; human lines come before it;
- without ``--nodes`` each seed picks its node count (3..20) from the seed.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from collections.abc import Sequence
from typing import Any

from crdtd.sim.runner import RunResult, run
from crdtd.sim.scenarios import SCENARIOS

NODES_FLAG_MIN = 2
NODES_FLAG_MAX = 50


def parse_seeds(text: str) -> range:
    """``START:END`` (END exclusive) or a single seed ``S``."""
    start, sep, end = text.partition(":")
    try:
        first = int(start)
        last = int(end) if sep else first + 1
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"--seeds: expected START:END such as 0:200, got {text!r}"
        ) from None
    if last <= first or first < 0:
        raise argparse.ArgumentTypeError(f"--seeds: expected 0 <= START < END, got {text!r}")
    return range(first, last)


def parse_nodes(text: str) -> int:
    try:
        nodes = int(text)
    except ValueError:
        nodes = -1
    if not NODES_FLAG_MIN <= nodes <= NODES_FLAG_MAX:
        raise argparse.ArgumentTypeError(
            f"--nodes: expected an integer {NODES_FLAG_MIN}..{NODES_FLAG_MAX}, got {text!r}"
        )
    return nodes


def parse_scenarios(text: str) -> list[str]:
    names = list(SCENARIOS) if text == "all" else text.split(",")
    unknown = [name for name in names if name not in SCENARIOS]
    if unknown:
        raise argparse.ArgumentTypeError(
            f"--scenario: expected one of {', '.join(SCENARIOS)} or 'all', got {unknown[0]!r}"
        )
    return names


def summarize(results: Sequence[RunResult], wall_s: float) -> dict[str, Any]:
    """The JSON summary of a batch of runs."""
    failures = [
        {
            "seed": r.seed,
            "scenario": r.scenario,
            "nodes": r.nodes,
            "reason": r.reason,
            "replay": r.replay,
        }
        for r in results
        if not r.ok
    ]
    adds = sum(r.adds_acked for r in results)
    datagrams = sum(r.datagrams_sent for r in results)
    settles = sorted(r.settle_s for r in results if r.ok)
    summary: dict[str, Any] = {
        "runs": len(results),
        "failed": len(failures),
        "failures": failures,
        "barriers_completed": sum(r.barriers_completed for r in results),
        "barriers_aborted": sum(r.barriers_aborted for r in results),
        "log_len_max": max((r.log_len_max for r in results), default=0),
        "datagrams_per_op": round(datagrams / adds, 2) if adds else None,
        "adds_acked": adds,
        "datagrams_sent": datagrams,
        "crashes": sum(r.crashes for r in results),
        "crashes_mid_flush": sum(r.crashes_mid_flush for r in results),
        "deletes": sum(r.deletes for r in results),
        "steps_batched": sum(r.steps_batched for r in results),
        "step_inputs_max": max((r.step_inputs_max for r in results), default=0),
        "wipes": sum(r.wipes for r in results),
        "steps": sum(r.steps for r in results),
        "settle_s_p50": round(statistics.median(settles), 4) if settles else None,
        "settle_s_max": round(settles[-1], 4) if settles else None,
        "scenarios": sorted({r.scenario for r in results}),
        "wall_s": round(wall_s, 2),
    }
    if len(results) == 1:
        summary["digest"] = results[0].digest
    return summary


def sweep(
    scenarios: list[str], seeds: range, nodes: int | None, keep_trace: bool = False
) -> list[RunResult]:
    return [
        run(SCENARIOS[name], seed, nodes, keep_trace=keep_trace)
        for name in scenarios
        for seed in seeds
    ]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m crdtd.sim",
        description="Deterministic simulation of a crdtd cluster under faults.",
    )
    parser.add_argument(
        "--scenario",
        type=parse_scenarios,
        default=list(SCENARIOS),
        help=f"one of {', '.join(SCENARIOS)}; a comma list; or 'all' (default)",
    )
    group = parser.add_mutually_exclusive_group()
    group.add_argument("--seeds", type=parse_seeds, help="START:END, END exclusive")
    group.add_argument("--seed", type=int, help="one seed (use with --trace to replay)")
    parser.add_argument("--nodes", type=parse_nodes, help="2..50 (default: 3..20 from the seed)")
    parser.add_argument("--trace", action="store_true", help="print every step and the digest")
    parser.add_argument("--quiet", action="store_true", help="print only the JSON line")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.seed is not None:
        seeds = range(args.seed, args.seed + 1)
    else:
        seeds = args.seeds if args.seeds is not None else range(0, 20)
    started = time.perf_counter()
    results = sweep(args.scenario, seeds, args.nodes, keep_trace=args.trace)
    wall_s = time.perf_counter() - started
    out = sys.stdout
    for result in results:
        if args.trace:
            for line in result.trace:
                print(line, file=out)
            print(f"digest {result.digest}", file=out)
        if not result.ok and not args.quiet:
            print(
                f"FAIL {result.scenario} seed {result.seed} nodes {result.nodes}: "
                f"{result.reason}\n  reproduce with: {result.replay}",
                file=out,
            )
    summary = summarize(results, wall_s)
    print(json.dumps(summary, sort_keys=False), file=out)
    return 1 if summary["failed"] else 0
