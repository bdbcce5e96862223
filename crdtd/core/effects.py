"""Effects every sub-machine of the node may return (`crdtd.core.sync`,
`crdtd.core.verify`, `crdtd.core.repair`); each module adds its own beside these."""

from __future__ import annotations

from dataclasses import dataclass

from crdtd.core.events import Event

__all__ = ["Count", "Report"]


@dataclass(frozen=True, slots=True)
class Report:
    """Hand *event* to the driver."""

    event: Event


@dataclass(frozen=True, slots=True)
class Count:
    """Bump the node's counter *name* by *amount*."""

    name: str
    amount: int = 1
