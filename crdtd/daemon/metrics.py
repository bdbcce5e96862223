"""The Prometheus endpoint (``metrics.listen``): the numbers of ``crdtctl stats``.

Rules:
- off unless configured; the server binds exactly the configured address (keep it on
  loopback unless the scraper is elsewhere: there is no authentication);
- a scrape reads the stats as one request of the owner task (a frozen `NodeState`),
  so it sees a consistent step;
- every metric is named ``crdtd_...``; counters end in ``_total``; the list is in
  docs/operations.md;
- ``crdtd_variable_value{variable}`` only with ``metrics.variable_values``: a series per
  variable is a cost the scraper's operator opts into; its label values (and every
  other) are escaped by prometheus_client's encoders, never written here by hand;
- served on the event loop, not in threads: at most `CONNECTIONS_MAX` connections (one
  more is answered 503 and closed), a request's line and headers must arrive within
  `HEADER_TIMEOUT_S` and fit `HEADER_BYTES_MAX`, one request per connection, and an
  answer the client does not read within `WRITE_TIMEOUT_S` is dropped. So idle or slow
  connections cost a bounded number of fds and no thread, and never starve the control
  sockets (a thread per connection did, at about a thousand).

Theory of operation: each scrape awaits one stats snapshot
(`crdtd.daemon.handler.Handler.stats`), turns it into metric families with a
`StatsCollector` in a private registry (`scrape_registry`), and encodes them with
prometheus_client's encoder for the scraper's ``Accept`` header.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable, Iterator
from typing import Any

from prometheus_client import CollectorRegistry, ProcessCollector
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.exposition import choose_encoder
from prometheus_client.registry import Collector

from crdtd import __version__

SCRAPE_TIMEOUT_S = 5.0
CONNECTIONS_MAX = 16
HEADER_TIMEOUT_S = 5.0
HEADER_BYTES_MAX = 8192
WRITE_TIMEOUT_S = 5.0
PATHS = ("/metrics", "/")

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
        info = GaugeMetricFamily(
            "crdtd_info",
            "Always 1: who this daemon is (its incarnation changes at every start).",
            labels=["node_id", "incarnation", "version"],
        )
        info.add_metric([stats["node_id"], str(stats["incarnation"]), __version__], 1)
        yield info
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
        owner = stats["owner"]
        steps = [(f"{bound:g}", count) for bound, count in owner["histogram_s"]]
        steps.append(("+Inf", owner["steps"]))
        yield HistogramMetricFamily(
            "crdtd_owner_step_seconds",
            "How long each step of the owner task ran without yielding.",
            buckets=steps,
            sum_value=owner["sum_s"],
        )
        longest = GaugeMetricFamily(
            "crdtd_owner_step_max_seconds", "The longest step of the owner task since start."
        )
        longest.add_metric([], owner["max_ms"] / 1000)
        yield longest
        if "values" in stats:
            values = GaugeMetricFamily(
                "crdtd_variable_value", "Each counter's value on this node.", labels=["variable"]
            )
            for variable, value in stats["values"].items():
                values.add_metric([variable], value)
            yield values
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


def scrape_registry(stats: dict[str, Any]) -> CollectorRegistry:
    """Every family one scrape serves, from *stats*: a private registry, so what is
    served is exactly this (and tests render the same thing without a server)."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(StatsCollector(lambda: stats))
    # process_* as node_exporter users know them (RSS, CPU, fds, start time):
    # prometheus_client reads them from /proc/self, and skips what it cannot read.
    ProcessCollector(registry=registry)
    return registry


class MetricsServer:
    """``GET /metrics`` at *host*:*port* on the running event loop, from the stats that
    *read* returns; `start`, then `close`."""

    def __init__(self, host: str, port: int, read: Callable[[], Awaitable[dict[str, Any]]]) -> None:
        self._host = host
        self._port = port
        self._read = read
        self._server: asyncio.Server | None = None
        self._connections: set[asyncio.Task[Any]] = set()
        self.address = (host, port)

    async def start(self) -> None:
        """Listen; raise ``OSError`` if the address cannot be bound."""
        self._server = await asyncio.start_server(
            self._accept, self._host, self._port, limit=HEADER_BYTES_MAX
        )
        self.address = (self._host, int(self._server.sockets[0].getsockname()[1]))

    async def close(self) -> None:
        """Stop listening and end every connection."""
        if self._server is None:
            return
        server, self._server = self._server, None
        server.close()
        for task in self._connections:
            task.cancel()
        await asyncio.gather(*self._connections, return_exceptions=True)
        await server.wait_closed()

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if len(self._connections) >= CONNECTIONS_MAX:
            writer.write(_response(503, b"too many connections\n"))
            writer.close()  # the transport flushes the answer before closing
            return
        task = asyncio.current_task()
        assert task is not None
        self._connections.add(task)
        try:
            await self._serve(reader, writer)
        except (ConnectionError, TimeoutError, asyncio.IncompleteReadError):
            pass  # the scraper went away, was too slow, or sent half a request
        except asyncio.LimitOverrunError:
            with contextlib.suppress(ConnectionError):
                writer.write(_response(431, b"request headers too large\n"))
        finally:
            self._connections.discard(task)
            writer.close()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        async with asyncio.timeout(HEADER_TIMEOUT_S):
            head = await reader.readuntil(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        request = lines[0].split()
        if len(request) != 3 or not request[2].startswith("HTTP/"):
            reply = _response(400, b"bad request line\n")
        elif request[0] != "GET":
            reply = _response(405, b"only GET\n")
        elif request[1].split("?", 1)[0] not in PATHS:
            reply = _response(404, b"try /metrics\n")
        else:
            headers = dict(_header(line) for line in lines[1:] if ":" in line)
            encoder, content_type = choose_encoder(headers.get("accept", ""))
            async with asyncio.timeout(SCRAPE_TIMEOUT_S):
                stats = await self._read()
            reply = _response(200, encoder(scrape_registry(stats)), content_type)
        writer.write(reply)
        async with asyncio.timeout(WRITE_TIMEOUT_S):
            await writer.drain()


_REASONS = {
    200: "OK",
    400: "Bad Request",
    404: "Not Found",
    405: "Method Not Allowed",
    431: "Request Header Fields Too Large",
    503: "Service Unavailable",
}


def _header(line: str) -> tuple[str, str]:
    name, _, value = line.partition(":")
    return name.strip().lower(), value.strip()


def _response(status: int, body: bytes, content_type: str = "text/plain; charset=utf-8") -> bytes:
    head = (
        f"HTTP/1.1 {status} {_REASONS[status]}\r\n"
        f"Content-Type: {content_type}\r\n"
        f"Content-Length: {len(body)}\r\n"
        "Connection: close\r\n\r\n"
    )
    return head.encode("latin-1") + body
