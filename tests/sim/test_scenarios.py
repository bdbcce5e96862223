"""Seed sweeps: every scenario, many seeds, node counts 3..20 chosen by each seed.

The seeds are split into chunks so that ``pytest -n 2`` spreads them over both cores.
The default run plays seeds 0..31 of each scenario (``CRDTD_SIM_SEEDS`` changes how
many): enough that each scenario meets node counts from 3 or 4 to 20, in about 280 s of
CPU where 200 seeds took about 1,700 s, most of the suite. The ``slow`` run plays the rest of
seeds 0..199 of each (the sweep CI used to run) and a long sweep of 10 000 more. Seeds
are fixed, not drawn, so every run plays the same ones. A failure lists every failing
seed with its reason and the command that replays it with a trace.
"""

from __future__ import annotations

import os

import pytest

from crdtd.sim.runner import RunResult, run
from crdtd.sim.scenarios import SCENARIOS

SEEDS = int(os.environ.get("CRDTD_SIM_SEEDS", "32"))
CHUNK = 8
WIDE_SEEDS = 200
SLOW_SEEDS = 10_000
SLOW_CHUNK = 250


def chunks(total: int, size: int, base: int = 0) -> list[range]:
    return [range(base + s, base + min(s + size, total)) for s in range(0, total, size)]


SWEPT = [name for name in SCENARIOS if name != "quiet"]
"""Every scenario but the fault-free baseline, which every other one contains."""


def cases(total: int, size: int, base: int = 0) -> list[tuple[str, range]]:
    return [(name, seeds) for name in SWEPT for seeds in chunks(total, size, base)]


def case_id(case: tuple[str, range]) -> str:
    name, seeds = case
    return f"{name}-{seeds.start}:{seeds.stop}"


def play(name: str, seeds: range) -> None:
    failed: list[RunResult] = []
    for seed in seeds:
        result = run(SCENARIOS[name], seed)
        if not result.ok:
            failed.append(result)
    if failed:
        lines = [f"{len(failed)}/{len(seeds)} seeds of {name!r} failed:"]
        for result in failed:
            lines.append(f"  seed {result.seed} ({result.nodes} nodes): {result.reason}")
            lines.append(f"    reproduce with: {result.replay}")
        pytest.fail("\n".join(lines), pytrace=False)


@pytest.mark.parametrize("case", cases(SEEDS, CHUNK), ids=case_id)
def test_scenario_seeds_converge_without_breaking_an_invariant(case: tuple[str, range]) -> None:
    play(*case)


@pytest.mark.slow
@pytest.mark.parametrize("case", cases(WIDE_SEEDS - SEEDS, 25, base=SEEDS), ids=case_id)
def test_the_rest_of_the_200_seed_sweep(case: tuple[str, range]) -> None:
    play(*case)


@pytest.mark.slow
@pytest.mark.parametrize("case", cases(SLOW_SEEDS, SLOW_CHUNK, base=1_000_000), ids=case_id)
def test_long_sweep_of_every_scenario(case: tuple[str, range]) -> None:
    play(*case)
