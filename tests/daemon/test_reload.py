"""SIGHUP's config part: the new log level applies, and the event says which it is."""

from __future__ import annotations

import io
import json
from collections.abc import Iterator
from pathlib import Path

import pytest
import structlog

from crdtd.daemon import logs
from crdtd.daemon.main import _Reloader


@pytest.fixture(autouse=True)
def restore_structlog() -> Iterator[None]:
    yield
    structlog.reset_defaults()
    logs.set_level("info")


@pytest.mark.parametrize(("running", "new"), [("info", "warning"), ("warning", "info")])
def test_config_reloaded_carries_the_new_log_level_beside_its_own_level(
    tmp_path: Path, running: str, new: str
) -> None:
    """Shown whether the reload raises the threshold past info or lowers it to info."""
    config = tmp_path / "crdtd.yaml"
    config.write_text(f"log: {{level: {new}, format: json}}\n")
    stream = io.StringIO()
    logs.configure_logging(running, "json", node_id="n1", stream=stream)
    _Reloader(config, None, driver=None)._reload_config()  # type: ignore[arg-type]
    logs.get_logger().info("probe")
    events = [json.loads(line) for line in stream.getvalue().splitlines()]
    assert events[0]["event"] == "config_reloaded"
    assert events[0]["level"] == "info" and events[0]["log_level"] == new
    assert [event["event"] for event in events[1:]] == (["probe"] if new == "info" else [])
