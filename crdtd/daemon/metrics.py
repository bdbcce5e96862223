"""The Prometheus endpoint (``metrics.listen``): the numbers of ``crdtctl stats``.

Rules:
- off unless configured; the server binds exactly the configured address (keep it on
  loopback unless the scraper is elsewhere: there is no authentication);
- a scrape reads the stats inside the owner task (`Driver.call`, through the event
  loop), never the node's dicts from the HTTP thread, so it sees a consistent step;
- every metric is named ``crdtd_...``; counters end in ``_total``; the list is in
  docs/operations.md.

Theory of operation: a `StatsCollector` registered in a private registry turns one
stats snapshot (`crdtd.daemon.handler.collect_stats`) into metric families at scrape
time; a small threaded WSGI server (the standard library's, with prometheus_client's
WSGI app) answers in a daemon thread, stopped by `MetricsServer.close`.
"""

from __future__ import annotations

import socketserver
import threading
from collections.abc import Callable, Iterator
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

from prometheus_client import CollectorRegistry, make_wsgi_app
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector

SCRAPE_TIMEOUT_S = 5.0

_COUNTERS = (
    # (metric, where in the stats, help)
    ("ops_applied", ("ops", "applied"), "Ops from peers applied here."),
    ("ops_local", ("ops", "local"), "Ops added on this node."),
    ("op_batches_sent", ("ops", "batches_sent"), "OpBatch messages this node sent."),
    ("datagrams_received", ("datagrams", "received"), "Datagrams accepted from peers."),
    ("datagrams_sent", ("datagrams", "sent"), "Datagrams sent (multicast and unicast)."),
    ("gaps_detected", ("repairs", "gaps_detected"), "Holes noticed in an origin's ops."),
    ("gaps_repaired", ("repairs", "gaps_repaired"), "Holes filled by repair."),
    ("nacks_sent", ("repairs", "nacks_sent"), "Repair requests (Nack) this node sent."),
    ("nacks_received", ("repairs", "nacks_received"), "Repair requests received."),
    ("repairs_served", ("repairs", "repairs_served"), "Repair requests answered."),
)


class StatsCollector(Collector):
    """Metric families from one stats snapshot, read by *read* at each scrape."""

    def __init__(self, read: Callable[[], dict[str, Any]]) -> None:
        self._read = read

    def collect(self) -> Iterator[Metric]:
        stats = self._read()
        for name, (section, key), text in _COUNTERS:
            family = CounterMetricFamily(f"crdtd_{name}", text)
            family.add_metric([], stats[section][key])
            yield family
        dropped = CounterMetricFamily(
            "crdtd_datagrams_dropped",
            "Datagrams dropped, by reason (see datagram_rejected in docs/operations.md).",
            labels=["reason"],
        )
        for reason, count in sorted(stats["datagrams"]["dropped"].items()):
            dropped.add_metric([reason], count)
        yield dropped
        barriers = stats["barriers"]
        results = CounterMetricFamily(
            "crdtd_barriers", "Full syncs this node took part in, by result.", labels=["result"]
        )
        results.add_metric(["completed"], barriers["completed"])
        results.add_metric(["aborted"], barriers["aborted"])
        yield results
        cumulative = [(f"{bound:g}", count) for bound, count in barriers["histogram_s"]]
        cumulative.append(("+Inf", barriers["completed"]))
        yield HistogramMetricFamily(
            "crdtd_barrier_duration_seconds",
            "Duration of completed full syncs.",
            buckets=cumulative,
            sum_value=barriers["duration_sum_s"],
        )
        for name, value, text in (
            ("ops_in_log", stats["log_length"], "Ops held in the log (folded at each sync)."),
            ("variables", stats["variables"], "Counters held."),
            ("epoch", stats["epoch"], "Full syncs folded so far (the epoch)."),
        ):
            gauge = GaugeMetricFamily(f"crdtd_{name}", text)
            gauge.add_metric([], value)
            yield gauge
        peers = GaugeMetricFamily("crdtd_peers", "Peers known, by state.", labels=["state"])
        peers.add_metric(["live"], stats["peers"]["live"])
        peers.add_metric(["suspected"], stats["peers"]["suspected"])
        yield peers
        raw = CounterMetricFamily(
            "crdtd_node_events",
            "Every raw counter of crdtd status's stats, by name.",
            labels=["name"],
        )
        for name, count in sorted(stats["counters"].items()):
            raw.add_metric([name], count)
        yield raw


class _ThreadingServer(socketserver.ThreadingMixIn, WSGIServer):
    daemon_threads = True


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        pass  # scrapes are not log events


class MetricsServer:
    """``GET /metrics`` at *host*:*port* in a daemon thread; `close` stops it."""

    def __init__(self, host: str, port: int, read: Callable[[], dict[str, Any]]) -> None:
        registry = CollectorRegistry(auto_describe=False)
        registry.register(StatsCollector(read))
        self._server = make_server(
            host,
            port,
            make_wsgi_app(registry),
            server_class=_ThreadingServer,
            handler_class=_QuietHandler,
        )
        self.address = (host, int(self._server.server_address[1]))
        self._thread = threading.Thread(
            target=self._server.serve_forever, name="crdtd-metrics", daemon=True
        )
        self._thread.start()

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=SCRAPE_TIMEOUT_S)
