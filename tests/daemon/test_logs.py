"""Daemon logging: JSON lines carrying the node id, console on a TTY, live level changes.

Runs against the installed structlog and, by hand, against structlog 22.3 (Debian 12).
"""

from __future__ import annotations

import io
import json
import re
from datetime import UTC, datetime

import pytest
import structlog

from crdtd.daemon import logs


class FakeTty(io.StringIO):
    def isatty(self) -> bool:
        return True


@pytest.fixture(autouse=True)
def restore_structlog():
    yield
    structlog.reset_defaults()
    logs.set_level("info")


def lines(stream: io.StringIO) -> list[dict[str, object]]:
    return [json.loads(line) for line in stream.getvalue().splitlines()]


def test_json_lines_carry_event_level_timestamp_and_node_id() -> None:
    stream = io.StringIO()
    logs.configure_logging("info", "json", "kitchen-1", stream)
    logs.get_logger().info("peer_joined", peer="b", incarnation=3)

    [line] = lines(stream)
    assert line["event"] == "peer_joined"
    assert line["level"] == "info"
    assert line["node_id"] == "kitchen-1"
    assert (line["peer"], line["incarnation"]) == ("b", 3)
    stamp = datetime.fromisoformat(str(line["timestamp"]))
    assert stamp.utcoffset() == UTC.utcoffset(None)
    assert abs((datetime.now(UTC) - stamp).total_seconds()) < 60


def test_json_lines_lead_with_the_common_keys() -> None:
    stream = io.StringIO()
    logs.configure_logging("info", "json", "n1", stream)
    logs.get_logger(component="net").warning("gap_detected", missing=[[1, 4]])

    assert list(lines(stream)[0])[:4] == ["timestamp", "level", "event", "node_id"]


def test_node_id_is_null_until_known_then_on_every_line() -> None:
    stream = io.StringIO()
    logs.configure_logging("info", "json", None, stream)
    bound_early = logs.get_logger().bind(component="store")
    bound_early.info("state_opened")
    logs.configure_logging("info", "json", "n2", stream)
    bound_early.info("node_id_resolved")

    assert [line["node_id"] for line in lines(stream)] == [None, "n2"]


def test_level_filters_events() -> None:
    stream = io.StringIO()
    logs.configure_logging("warning", "json", "n1", stream)
    log = logs.get_logger()
    log.debug("hidden_debug")
    log.info("hidden_info")
    log.warning("shown_warning")
    log.error("shown_error")

    assert [line["event"] for line in lines(stream)] == ["shown_warning", "shown_error"]


def test_set_level_reaches_loggers_created_before_it() -> None:
    stream = io.StringIO()
    logs.configure_logging("info", "json", "n1", stream)
    proxy = logs.get_logger()
    bound = logs.get_logger().bind(component="net")
    proxy.debug("before_proxy")
    bound.debug("before_bound")

    logs.set_level("debug")
    proxy.debug("after_proxy")
    bound.debug("after_bound")
    logs.set_level("error")
    bound.warning("quiet_again")

    assert [line["event"] for line in lines(stream)] == ["after_proxy", "after_bound"]


def test_exceptions_become_a_field_of_the_json_line() -> None:
    stream = io.StringIO()
    logs.configure_logging("info", "json", "n1", stream)
    try:
        raise RuntimeError("disk full")
    except RuntimeError:
        logs.get_logger().exception("append_failed")

    [line] = lines(stream)
    assert line["level"] == "error"
    assert "RuntimeError: disk full" in str(line["exception"])


def test_auto_writes_json_when_not_a_tty() -> None:
    stream = io.StringIO()
    logs.configure_logging("info", "auto", "n1", stream)
    logs.get_logger().info("started")

    assert lines(stream)[0]["event"] == "started"


@pytest.mark.parametrize(("fmt", "stream"), [("auto", FakeTty()), ("console", io.StringIO())])
def test_console_format_is_for_people(fmt: str, stream: io.StringIO) -> None:
    logs.configure_logging("info", fmt, "n1", stream)
    logs.get_logger().info("started", port=7777)

    text = re.sub(r"\x1b\[[0-9;]*m", "", stream.getvalue())  # colours, on a TTY
    assert not text.startswith("{")
    assert "started" in text
    assert "port=" in text
    assert "node_id=" in text


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda: logs.set_level("verbose"), "log level: expected one of"),
        (lambda: logs.configure_logging("info", "xml", None), "log format: expected one of"),
    ],
    ids=["level", "format"],
)
def test_unknown_level_or_format_is_refused(call, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        call()
