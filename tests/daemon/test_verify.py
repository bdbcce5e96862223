"""`crdtd.daemon.verify.summarize`: who agrees, who is behind and by how much."""

from __future__ import annotations

from crdtd.core.ids import Origin
from crdtd.core.messages import VariableReport
from crdtd.daemon.verify import summarize

A = Origin("a", 1)
B = Origin("b", 1)


def report(value: int, *marks: tuple[Origin, int], variable: str = "x") -> VariableReport:
    return VariableReport(variable, value, b"h" * 8, tuple(marks))


def test_identical_reports_agree() -> None:
    reports = {
        "a": {"x": report(7, (A, 3), (B, 2))},
        "b": {"x": report(7, (A, 3), (B, 2))},
    }
    result = summarize(reports, ())
    assert result["agree"] is True
    assert result["nodes"] == ["a", "b"]
    assert result["variables"]["x"] == {
        "agree": True,
        "values": {"a": 7, "b": 7},
        "behind": {},
        "missing_on": [],
        "hashes_agree": True,
    }


def test_a_node_behind_is_named_with_the_ops_it_misses_per_origin() -> None:
    reports = {
        "a": {"x": report(9, (A, 5), (B, 2))},
        "b": {"x": report(4, (A, 1), (B, 2))},
        "c": {"x": report(7, (A, 5))},
    }
    entry = summarize(reports, ())["variables"]["x"]
    assert entry["agree"] is False
    assert entry["behind"] == {
        "b": [{"origin": "a/1", "missing": 4}],
        "c": [{"origin": "b/1", "missing": 2}],
    }


def test_a_variable_missing_on_a_node_is_disagreement() -> None:
    reports = {
        "a": {"x": report(1, (A, 1)), "y": report(0, variable="y")},
        "b": {"x": report(1, (A, 1))},
    }
    result = summarize(reports, ())
    assert result["agree"] is False
    assert result["variables"]["x"]["agree"] is True
    assert result["variables"]["y"]["missing_on"] == ["b"]
    assert result["variables"]["y"]["agree"] is False


def test_a_silent_node_means_no_agreement_even_when_the_others_agree() -> None:
    reports = {"a": {"x": report(1, (A, 1))}}
    result = summarize(reports, ("b",))
    assert result["agree"] is False
    assert result["silent"] == ["b"]
    assert result["variables"]["x"]["agree"] is True


def test_equal_marks_with_different_values_disagree() -> None:
    reports = {"a": {"x": report(1, (A, 1))}, "b": {"x": report(2, (A, 1))}}
    assert summarize(reports, ())["variables"]["x"]["agree"] is False


def test_no_variables_and_no_silence_agree() -> None:
    assert summarize({"a": {}, "b": {}}, ()) == {
        "agree": True,
        "nodes": ["a", "b"],
        "silent": [],
        "identity_conflicts": [],
        "variables": {},
    }


def test_two_live_holders_of_one_node_id_never_agree() -> None:
    answer = summarize({"a": {}, "b": {}}, (), conflicts=["a"])
    assert answer["agree"] is False
    assert answer["identity_conflicts"] == ["a"]
