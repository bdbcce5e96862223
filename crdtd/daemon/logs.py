"""Structured logging for the daemon: events, not sentences.

Rules:
- an event name is snake_case and its details are keyword fields:
  ``log.info("peer_joined", peer="b", incarnation=3)``;
- every line carries ``event``, ``level``, ``timestamp`` (ISO 8601, UTC) and ``node_id``
  (``null`` until the daemon knows its id);
- format ``json`` writes one JSON object per line; ``console`` writes structlog's
  human layout; ``auto`` picks ``console`` when the stream is a TTY, ``json`` otherwise
  (journald and pipes get JSON);
- only APIs present in structlog 22.3 (Debian 12) are used.

Theory of operation: the level threshold and the node id live in this module and are
read by processors on every event, so `set_level` (SIGHUP) and a later
`configure_logging` with the resolved node id reach every logger, including ones
bound before the change. The format and the stream are fixed for loggers that were
already bound with ``.bind()``; loggers from `get_logger` are not cached and follow a
new `configure_logging`.
"""

from __future__ import annotations

import sys
from typing import Any, TextIO

import structlog
from structlog.typing import EventDict, FilteringBoundLogger, Processor

LEVELS = ("debug", "info", "warning", "error")
"""Level names a user may configure, least severe first."""

FORMATS = ("auto", "json", "console")

# Ranks for every method name structlog's filtering logger can pass us; "warn" is its
# alias for "warning" and "exception" arrives as "error".
_RANK = {"debug": 10, "info": 20, "warn": 30, "warning": 30, "error": 40, "critical": 50}
_LEADING_KEYS = ("timestamp", "level", "event", "node_id")

_threshold = _RANK["info"]
_level = "info"
_node_id: str | None = None


def configure_logging(
    level: str, fmt: str, node_id: str | None, stream: TextIO | None = None
) -> None:
    """Send events at *level* and above to *stream* (default: ``sys.stdout`` now)."""
    global _node_id
    if fmt not in FORMATS:
        raise ValueError(f"log format: expected one of {', '.join(FORMATS)}, got {fmt!r}")
    set_level(level)
    _node_id = node_id
    out = sys.stdout if stream is None else stream
    processors: list[Processor] = [
        _drop_below_threshold,
        _add_node_id,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True, key="timestamp"),
    ]
    if fmt == "console" or (fmt == "auto" and _is_tty(out)):
        processors.append(structlog.dev.ConsoleRenderer(colors=_is_tty(out)))
    else:
        processors += [
            structlog.processors.format_exc_info,
            _lead_with_common_keys,
            structlog.processors.JSONRenderer(),
        ]
    structlog.configure(
        processors=processors,
        # Everything reaches the processors; _drop_below_threshold filters, so a level
        # change needs no new wrapper class.
        wrapper_class=structlog.make_filtering_bound_logger(_RANK["debug"]),
        logger_factory=structlog.PrintLoggerFactory(file=out),
        context_class=dict,
        # Not cached, so loggers made before a reconfiguration pick up the new one.
        cache_logger_on_first_use=False,
    )


def set_level(level: str) -> None:
    """Change the threshold for every logger at once (the daemon calls this on SIGHUP)."""
    global _threshold, _level
    if level not in LEVELS:
        raise ValueError(f"log level: expected one of {', '.join(LEVELS)}, got {level!r}")
    _threshold = _RANK[level]
    _level = level


def current_level() -> str:
    """The level `set_level` (or `configure_logging`) set last."""
    return _level


def get_logger(**initial_values: Any) -> FilteringBoundLogger:
    """A logger whose every line carries the node id, plus *initial_values*."""
    logger: FilteringBoundLogger = structlog.get_logger(**initial_values)
    return logger


def _is_tty(stream: TextIO) -> bool:
    isatty = getattr(stream, "isatty", None)
    return bool(isatty and isatty())


def _drop_below_threshold(_logger: Any, method_name: str, event_dict: EventDict) -> EventDict:
    # An unknown method name is let through: losing a line silently is worse.
    if _RANK.get(method_name, _RANK["critical"]) < _threshold:
        raise structlog.DropEvent
    return event_dict


def _add_node_id(_logger: Any, _method_name: str, event_dict: EventDict) -> EventDict:
    event_dict.setdefault("node_id", _node_id)
    return event_dict


def _lead_with_common_keys(_logger: Any, _method_name: str, event_dict: EventDict) -> EventDict:
    # Same key order on every line makes a journal readable without jq.
    lead = {key: event_dict.pop(key) for key in _LEADING_KEYS if key in event_dict}
    return {**lead, **event_dict}
