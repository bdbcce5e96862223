"""The step every owner runs: requests, then datagrams, then the timer, and one flush
whose answers come after its records."""

from __future__ import annotations

import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from crdtd.core.events import AddApplied
from crdtd.core.ids import InvalidInput, Origin
from crdtd.core.node import Node
from crdtd.core.records import OpRecorded, OpsRecorded
from crdtd.core.requests import Add, Create, ReadVariable, Ticket
from crdtd.core.settings import DATAGRAM_BYTES_MAX, Settings
from crdtd.core.step import DROPPED_INBOX_FULL, DROPPED_OVERSIZED, Flush, Stepper
from crdtd.core.view import UnknownVariable, VariableView

ADDRESS = ("10.0.0.2", 7778)


def stepper() -> Stepper[str]:
    node = Node(Origin("a", 1), Settings(), random.Random(0), 0.0)
    stepped: Stepper[str] = Stepper(node, inbox_max=2)
    stepped.step(0.0)
    return stepped


def test_a_steps_requests_are_answered_in_order_after_its_records() -> None:
    stepped = stepper()
    stepped.offer(Create("x"), "create")
    stepped.offer(Add("x", (5,)), "add")
    stepped.offer(ReadVariable("x"), "read")
    flush = stepped.step(1.0)
    assert [answer.token for answer in flush.answers] == ["create", "add", "read"]
    created, added, read = (answer.result for answer in flush.answers)
    assert created is True and isinstance(added, Ticket)
    assert isinstance(read, VariableView) and read.value == 5
    assert any(isinstance(record, OpRecorded) for record in flush.records)
    [applied] = [event for event in flush.events if isinstance(event, AddApplied)]
    assert applied.ticket == added.number


def test_a_request_that_raises_is_answered_with_its_error_and_the_rest_still_run() -> None:
    stepped = stepper()
    stepped.offer(ReadVariable("missing"), "bad")
    stepped.offer(Add("x", (1, 2), "id-1"), "named batch")
    stepped.offer(Create("x"), "good")
    flush = stepped.step(1.0)
    errors = [type(answer.error) for answer in flush.answers]
    assert errors == [UnknownVariable, ValueError, type(None)]
    assert issubclass(UnknownVariable, InvalidInput)


def test_a_budget_that_runs_out_leaves_the_other_requests_for_the_next_step() -> None:
    stepped = stepper()
    for n in range(3):
        stepped.offer(Create(f"v{n}"), f"v{n}")
    assert [a.token for a in stepped.step(1.0, lambda: False).answers] == ["v0"]
    assert stepped.waiting == (2, 0) and stepped.queued
    assert [a.token for a in stepped.step(1.0).answers] == ["v1", "v2"]
    assert not stepped.queued


def test_oversized_datagrams_and_a_full_inbox_are_dropped_before_parsing() -> None:
    stepped = stepper()
    assert stepped.offer_datagram(bytes(DATAGRAM_BYTES_MAX + 1), ADDRESS, False) == (
        DROPPED_OVERSIZED
    )
    assert stepped.offer_datagram(b"x", ADDRESS, False) is None
    assert stepped.offer_datagram(b"y", ADDRESS, True) is None
    assert stepped.offer_datagram(b"z", ADDRESS, False) == DROPPED_INBOX_FULL
    assert stepped.waiting == (0, 2)
    stepped.step(1.0)
    assert stepped.node.stats["rejected_malformed"] == 2
    assert stepped.waiting == (0, 0)


@pytest.mark.parametrize("deltas", [(1,), (1, 2, 3)])
def test_one_add_and_a_batch_each_return_one_ticket(deltas: tuple[int, ...]) -> None:
    stepped = stepper()
    stepped.offer(Add("x", deltas), "add")
    [answer] = stepped.step(1.0).answers
    assert isinstance(answer.result, Ticket)


def test_adds_of_one_variable_queued_together_are_one_run_each_answered() -> None:
    stepped = stepper()
    for n in range(4):
        stepped.offer(Add("x", (n + 1,)), f"x{n}")
    stepped.offer(Add("y", (7,)), "y")
    stepped.offer(Add("x", (5,)), "x4")
    flush = stepped.step(1.0)
    runs = [(r.variable, r.first, r.deltas) for r in flush.records if isinstance(r, OpsRecorded)]
    assert runs == [("x", 1, (1, 2, 3, 4))]
    applied = {event.ticket: event for event in flush.events if isinstance(event, AddApplied)}
    answers = {
        a.token: applied[a.result.number] for a in flush.answers if isinstance(a.result, Ticket)
    }
    assert [(answers[f"x{n}"].nonce, answers[f"x{n}"].value) for n in range(5)] == [
        (1, 1),
        (2, 3),
        (3, 6),
        (4, 10),
        (5, 15),
    ]
    assert (answers["y"].nonce, answers["y"].value) == (1, 7)


ADDS = st.lists(
    st.tuples(
        st.sampled_from(["x", "y", "bad name!"]),
        st.sampled_from([1, -3, 0, 2**62, 2**63]),
        st.sampled_from([None, None, None, "id-1", "id-2"]),
    ),
    max_size=12,
)


@given(ADDS)
@settings(max_examples=200, deadline=None)
def test_adds_taken_together_are_answered_as_adds_taken_one_by_one(
    adds: list[tuple[str, int, str | None]],
) -> None:
    """The run is only a cheaper way to the same outcome: the same op, value or error
    for every request, the same state after."""
    together, alone = stepper(), stepper()
    for n, (variable, delta, request_id) in enumerate(adds):
        together.offer(Add(variable, (delta,), request_id), str(n))
    outcomes = [_outcomes(together.step(1.0))]
    outcomes.append({})
    for n, (variable, delta, request_id) in enumerate(adds):
        alone.offer(Add(variable, (delta,), request_id), str(n))
        outcomes[1].update(_outcomes(alone.step(1.0)))
    assert outcomes[0] == outcomes[1]
    for variable in ("x", "y"):
        assert together.node.value(variable) == alone.node.value(variable)
        assert together.node.history(variable) == alone.node.history(variable)


def _outcomes(flush: Flush[str]) -> dict[str, object]:
    """Each request's answer: its op and value, or the type of its error."""
    applied = {e.ticket: e for e in flush.events if isinstance(e, AddApplied)}
    outcomes: dict[str, object] = {}
    for answer in flush.answers:
        if answer.error is not None:
            outcomes[answer.token] = type(answer.error)
        else:
            assert isinstance(answer.result, Ticket)
            event = applied[answer.result.number]
            outcomes[answer.token] = (event.nonce, event.value)
    return outcomes


def test_a_run_that_fails_by_a_bug_answers_each_add_with_the_error(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Only bad input is refused before anything changed; any other error is each
    caller's answer (as for a lone request), and the adds are not retried one by one."""
    stepped = stepper()

    def broken(variable: str, deltas: list[int], now: float) -> range:
        raise RuntimeError("a bug")

    monkeypatch.setattr(stepped.node, "add_each", broken)
    stepped.offer(Add("x", (1,)), "first")
    stepped.offer(Add("x", (2,)), "second")
    flush = stepped.step(1.0)
    assert [(a.token, type(a.error)) for a in flush.answers] == [
        ("first", RuntimeError),
        ("second", RuntimeError),
    ]
    assert stepped.node.value("x") is None
