"""Refactoring the core must not change what it does: each scenario's trace digest for
two fixed seeds is pinned in ``pinned_digests.json``.

A change that alters the protocol on purpose (a new message, another retry schedule)
changes digests too; then regenerate the file, and say so in the commit::

    .venv/bin/python tests/sim/test_pinned_digests.py
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from crdtd.sim.runner import run
from crdtd.sim.scenarios import SCENARIOS

PINNED = Path(__file__).with_name("pinned_digests.json")
SEEDS = (1, 2)


def digests() -> dict[str, str]:
    return {
        f"{name}/{seed}": run(SCENARIOS[name], seed).digest
        for name in sorted(SCENARIOS)
        for seed in SEEDS
    }


@pytest.mark.parametrize("name", sorted(SCENARIOS))
def test_a_scenario_runs_exactly_as_pinned(name: str) -> None:
    pinned = json.loads(PINNED.read_text())
    for seed in SEEDS:
        key = f"{name}/{seed}"
        assert key in pinned, f"{key} is not pinned: run {Path(__file__).name} to pin it"
        assert run(SCENARIOS[name], seed).digest == pinned[key], (
            f"{key} no longer runs as pinned; if the protocol changed on purpose, run "
            f"`.venv/bin/python tests/sim/{Path(__file__).name}` and commit the file"
        )


if __name__ == "__main__":
    PINNED.write_text(json.dumps(digests(), indent=1, sort_keys=True) + "\n")
    print(f"pinned {PINNED}")
