"""Which rejected datagrams get a log line (pure: the times are passed in), and what
watchers and the log make of a delete."""

from __future__ import annotations

import pytest
import structlog.testing

from crdtd.core.events import DatagramRejected, ValueChanged, VariableDeleted
from crdtd.daemon.reporting import (
    KEY_MISMATCH_HINTS,
    KEY_MISMATCH_LOG_EVERY_S,
    REJECT_LOG_EVERY_S,
    RejectLog,
    Reporter,
)

SENDER = ("10.0.0.9", 7778)


def test_a_key_mismatch_is_logged_once_a_minute_with_the_key_id_and_a_hint() -> None:
    log = RejectLog()
    event = DatagramRejected("unknown_key", SENDER, "k20260314-3fa2")
    assert log.line(event, 100.0) == {
        "reason": "unknown_key",
        "source": "10.0.0.9:7778",
        "suppressed": 0,
        "key_id": "k20260314-3fa2",
        "hint": KEY_MISMATCH_HINTS["unknown_key"],
    }
    assert [log.line(event, 100.0 + dt) for dt in (1, 30, 59.9)] == [None] * 3
    again = log.line(event, 100.0 + KEY_MISMATCH_LOG_EVERY_S)
    assert again is not None and again["suppressed"] == 3
    assert KEY_MISMATCH_LOG_EVERY_S == 60.0


@pytest.mark.parametrize("reason", ["unknown_key", "unexpected_mac", "unauthenticated"])
def test_every_key_mismatch_reason_has_a_hint_and_names_the_key_id_even_unread(
    reason: str,
) -> None:
    line = RejectLog().line(DatagramRejected(reason, SENDER), 0.0)
    assert line is not None
    assert line["key_id"] is None  # unsigned, or a trailer that names no key
    assert "security.key_file" in line["hint"]


def test_other_rejections_are_logged_every_ten_seconds_without_a_hint() -> None:
    log = RejectLog()
    malformed = DatagramRejected("malformed", SENDER)
    assert log.line(malformed, 0.0) == {
        "reason": "malformed",
        "source": "10.0.0.9:7778",
        "suppressed": 0,
    }
    assert log.line(malformed, REJECT_LOG_EVERY_S - 0.1) is None
    assert log.line(malformed, REJECT_LOG_EVERY_S) == {
        "reason": "malformed",
        "source": "10.0.0.9:7778",
        "suppressed": 1,
    }
    bad_mac = log.line(DatagramRejected("bad_mac", SENDER, "k2026a"), 1.0)
    assert bad_mac is not None and bad_mac["key_id"] == "k2026a" and "hint" not in bad_mac


def test_each_reason_has_its_own_allowance() -> None:
    log = RejectLog()
    assert log.line(DatagramRejected("unauthenticated", SENDER), 0.0) is not None
    assert log.line(DatagramRejected("unexpected_mac", SENDER, "k1"), 0.0) is not None
    assert log.line(DatagramRejected("unauthenticated", SENDER), 1.0) is None


def test_a_delete_is_logged_and_reaches_the_variables_watchers_as_none() -> None:
    log = structlog.testing.CapturingLogger()
    reporter = Reporter(log)
    queue = reporter.watch("x")
    reporter.report(ValueChanged("x", 5), 1.0)
    reporter.report(VariableDeleted("x"), 2.0)
    assert [queue.get_nowait(), queue.get_nowait()] == [5, None]
    assert [(call.method_name, call.kwargs) for call in log.calls] == [("info", {"variable": "x"})]
    assert log.calls[0].args == ("variable_deleted",)
