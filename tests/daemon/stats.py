"""A real stats snapshot without a daemon: a node holding a few counters and an idle
driver, read as `crdtd.daemon.handler.Handler.stats` reads them, so the metrics tests
see the families the daemon serves, not a hand-written imitation of its stats."""

from __future__ import annotations

import random
from typing import Any

import structlog

from crdtd.core.ids import Origin
from crdtd.core.node import Node
from crdtd.core.requests import ReadNode, apply
from crdtd.core.settings import Settings
from crdtd.daemon.handler import collect_stats
from crdtd.daemon.reporting import BarrierStats, Reporter
from crdtd.net.driver import Driver

VALUES = {"web-1.hits": 7, "queue_depth": -3}


class _NoSystemd:
    watchdog_interval_s = None

    def notify(self, **fields: str) -> None:
        pass


def snapshot(values: bool = False) -> dict[str, Any]:
    """The stats of node n1 after an add to each of `VALUES`; *values* as the metrics
    endpoint asks for them with ``metrics.variable_values``."""
    node = Node(Origin("n1", 1), Settings(), random.Random(0), 0.0)
    for variable, value in VALUES.items():
        node.add(variable, value, 0.0)
    driver = Driver(
        node, None, ("239.255.77.77", 7777), Reporter(structlog.get_logger()), _NoSystemd()
    )
    driver.stats["dropped_inbox_full"] = 1  # so each labelled family has a sample
    state = apply(node, ReadNode(values), 0.0)
    return collect_stats(state, driver, BarrierStats())
