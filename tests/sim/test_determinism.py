"""A run is a pure function of (scenario, seed, nodes): same digest every time, anywhere."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from crdtd.sim.runner import nodes_for, run
from crdtd.sim.scenarios import SCENARIOS

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("name", ["chaos", "crash", "lossy"])
def test_the_same_seed_twice_gives_the_same_digest(name: str) -> None:
    first = run(SCENARIOS[name], 11)
    second = run(SCENARIOS[name], 11)
    assert first.digest == second.digest
    assert first.steps == second.steps > 100


def test_keeping_the_trace_does_not_change_the_digest() -> None:
    assert run(SCENARIOS["chaos"], 4).digest == run(SCENARIOS["chaos"], 4, keep_trace=True).digest


def test_different_seeds_give_different_runs() -> None:
    digests = {run(SCENARIOS["chaos"], seed, nodes=5).digest for seed in range(5)}
    assert len(digests) == 5


def test_node_counts_from_seeds_cover_3_to_20() -> None:
    counts = {nodes_for("chaos", seed) for seed in range(400)}
    assert counts == set(range(3, 21))


def digest_in_subprocess(hash_seed: str) -> str:
    env = {**os.environ, "PYTHONHASHSEED": hash_seed, "PYTHONPATH": str(ROOT)}
    out = subprocess.run(
        [sys.executable, "-m", "crdtd.sim", "--scenario", "chaos", "--seed", "7", "--quiet"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        check=False,
        timeout=120,
    )
    summary = json.loads(out.stdout.strip().splitlines()[-1])
    assert summary["runs"] == 1
    digest: str = summary["digest"]
    return digest


def test_the_digest_does_not_depend_on_the_string_hash_seed() -> None:
    in_process = run(SCENARIOS["chaos"], 7).digest
    assert digest_in_subprocess("0") == digest_in_subprocess("12345") == in_process
