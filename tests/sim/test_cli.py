"""``python -m crdtd.sim``: arguments, the JSON last line, exit codes, replays."""

from __future__ import annotations

import json

import pytest

from crdtd.sim.cli import main, summarize
from crdtd.sim.runner import RunResult, run
from crdtd.sim.scenarios import SCENARIOS


def last_json(text: str) -> dict[str, object]:
    summary: dict[str, object] = json.loads(text.strip().splitlines()[-1])
    return summary


def test_a_sweep_prints_one_json_summary_as_its_last_line(
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert main(["--scenario", "lossy", "--seeds", "0:3", "--nodes", "4"]) == 0
    summary = last_json(capsys.readouterr().out)
    assert summary["runs"] == 3
    assert summary["failed"] == 0
    assert summary["failures"] == []
    for key in ("barriers_completed", "barriers_aborted", "log_len_max", "datagrams_per_op"):
        assert key in summary


def test_a_replay_prints_the_trace_and_its_digest(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--scenario", "crash", "--seed", "2", "--nodes", "3", "--trace"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    summary = json.loads(lines[-1])
    assert lines[-2] == f"digest {summary['digest']}"
    assert lines[0].startswith("0.0 sim run crash seed 2 nodes 3")
    assert any(" n02 " in line for line in lines)
    assert summary["digest"] == run(SCENARIOS["crash"], 2, nodes=3).digest


def failed_result() -> RunResult:
    result = run(SCENARIOS["quiet"], 1, nodes=3)
    result.ok = False
    result.reason = "t=1.0: bad value: n01 ..."
    return result


def test_a_failure_in_the_summary_carries_its_replay_command() -> None:
    summary = summarize([failed_result(), run(SCENARIOS["quiet"], 2, nodes=3)], 0.5)
    assert summary["runs"] == 2 and summary["failed"] == 1
    assert summary["failures"] == [
        {
            "seed": 1,
            "scenario": "quiet",
            "nodes": 3,
            "reason": "t=1.0: bad value: n01 ...",
            "replay": "python -m crdtd.sim --scenario quiet --seed 1 --nodes 3 --trace",
        }
    ]


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--nodes", "51"], "--nodes: expected an integer 2..50, got '51'"),
        (["--nodes", "1"], "--nodes: expected an integer 2..50"),
        (["--seeds", "5:5"], "--seeds: expected 0 <= START < END"),
        (["--seeds", "a:b"], "--seeds: expected START:END"),
        (["--scenario", "nope"], "--scenario: expected one of"),
    ],
)
def test_bad_arguments_exit_2_saying_what_was_expected(
    argv: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err


def test_several_scenarios_in_one_call(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--scenario", "duplicate,join", "--seeds", "0:2", "--quiet"]) == 0
    summary = last_json(capsys.readouterr().out)
    assert summary["runs"] == 4
    assert summary["scenarios"] == ["duplicate", "join"]
