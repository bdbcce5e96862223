"""Seeded streams, the virtual clock and the trace digest."""

from __future__ import annotations

import pytest

from crdtd.sim.clock import VirtualClock
from crdtd.sim.rng import stream
from crdtd.sim.trace import Trace


def test_a_stream_is_a_function_of_seed_and_purpose() -> None:
    assert stream(7, "network").random() == stream(7, "network").random()


def test_streams_of_different_purposes_or_seeds_differ() -> None:
    draws = {
        stream(7, "network").random(),
        stream(7, "workload").random(),
        stream(8, "network").random(),
        stream(7, "node/n00/1").random(),
        stream(7, "node/n00/2").random(),
    }
    assert len(draws) == 5


def test_the_clock_only_moves_forward() -> None:
    clock = VirtualClock()
    assert clock.advance_to(1.5) == 1.5
    assert clock.advance_to(1.5) == 1.5
    with pytest.raises(AssertionError):
        clock.advance_to(1.0)


def test_the_digest_covers_lines_and_payloads_but_not_details() -> None:
    def digest(keep: bool, payload: bytes, when: float) -> str:
        trace = Trace(keep=keep)
        trace.step(when, "n00", "timer")
        trace.detail("  send * 10B")
        trace.payload(payload)
        return trace.digest()

    base = digest(False, b"abc", 1.0)
    assert digest(True, b"abc", 1.0) == base
    assert digest(False, b"abd", 1.0) != base
    assert digest(False, b"abc", 1.0000000000000002) != base


def test_a_kept_trace_has_one_line_per_step_plus_details() -> None:
    trace = Trace(keep=True)
    trace.step(0.25, "n01", "recv n00 60B")
    trace.detail("  event X")
    assert trace.lines == ["0.25 n01 recv n00 60B", "  event X"]
    assert trace.steps == 1
