"""Control requests, answered through the driver.

Every request becomes one typed operation of the driver (`crdtd.net.driver`), applied
in the owner task's next step and answered after that step's commit, so it sees only
durable state and never races the protocol; reads come back as frozen views. An add is
answered once its op is on disk, a sync once its barrier ended, a verify once every
live peer answered or ``verify_timeout_s`` passed.

No request applied in the owner task may take long (the watchdog and every other
client wait for it): ``history`` answers one page of `HISTORY_PAGE_OPS` ops at a time
(``next`` names the page after), and ``populate`` applies its ops in steps of
`POPULATE_STEP_OPS`, each durable before the next is handed over.

``net-test`` and ``stats`` add what the kernel says of our sockets
(`crdtd.daemon.diagnosis`), read outside the owner task, after it answered.
"""

from __future__ import annotations

import asyncio
import collections
import functools
import random
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

from crdtd.control.protocol import HISTORY_PAGE_OPS, ControlError, ErrorCode, Request
from crdtd.control.server import CoroutineHandler, Reply
from crdtd.core.events import AddApplied
from crdtd.core.ids import InvalidInput
from crdtd.core.requests import Add, ReadVariable
from crdtd.core.settings import Settings
from crdtd.core.view import NodeState, UnknownVariable, VariableView
from crdtd.daemon.diagnosis import (
    NetInfo,
    Unreadable,
    igmp_groups,
    interface_flags,
    net_checks,
    udp_drops,
)
from crdtd.daemon.reporting import BarrierStats, Reporter
from crdtd.daemon.verify import summarize
from crdtd.net.driver import Driver

POPULATE_DELTA_MAX = 10
POPULATE_DELTAS = range(-POPULATE_DELTA_MAX, POPULATE_DELTA_MAX + 1)
POPULATE_STEP_OPS = 5000  # ops of a populate applied in one step: ~10 ms, one commit


class Handler(CoroutineHandler):
    """The daemon's answers. ``add`` and ``get`` (the hot ones) are answered without a
    task or a future: the driver's reply (`Driver.call`) calls the server's; the rest
    run as coroutines."""

    def __init__(
        self,
        driver: Driver,
        reporter: Reporter,
        settings: Settings,
        rng: random.Random,
        net: NetInfo | None = None,
    ) -> None:
        self._loop = asyncio.get_running_loop()  # asked once: each ask is a getpid()
        self._driver = driver
        self._reporter = reporter
        self._rng = rng
        self._net = net
        self._verifying: asyncio.Future[dict[str, Any]] | None = None
        freeze = settings.sync_freeze_max_s
        self._add_timeout_s = freeze + 5.0
        self._sync_timeout_s = 3 * freeze + 5.0
        self._verify_timeout_s = settings.verify_timeout_s + 5.0
        self._late_adds = Deadlines(
            self._loop,
            self._add_timeout_s,
            ControlError(ErrorCode.TIMEOUT, "the add was not applied in time"),
        )

    def answer(self, request: Request, reply: Reply) -> asyncio.Future[Any] | None:
        args = request.args
        if request.cmd == "add":
            add = Add(args["variable"], (args["delta"],), args.get("request_id"))
            self._driver.call(
                add, functools.partial(_reply, self._late_adds.watch(reply), _add_data)
            )
            return None
        if request.cmd == "get":
            get = ReadVariable(args["variable"])
            self._driver.call(get, functools.partial(_reply, reply, _get_data))
            return None
        return super().answer(request, reply)

    async def handle(self, request: Request) -> dict[str, Any]:
        try:
            result = await ANSWERS[request.cmd](self, **request.args)
        except UnknownVariable as error:
            raise ControlError(ErrorCode.NOT_FOUND, str(error)) from None
        except InvalidInput as error:
            raise ControlError(ErrorCode.BAD_REQUEST, str(error)) from None
        return result

    async def watch(self, variable: str) -> AsyncIterator[dict[str, Any]]:
        """The value now, then every change. The queue is subscribed before the read,
        so no change is missed; what it caught meanwhile is at least as new as the read
        (the step reads before it applies datagrams), so its last value, if any, is
        where the watch starts. A delete is a change too: the watch goes on, since an
        add shows the variable again."""
        queue = self._reporter.watch(variable)
        try:
            try:
                value: int | None = (await self._driver.get(variable)).value
            except UnknownVariable as error:
                raise ControlError(ErrorCode.NOT_FOUND, str(error)) from None
            while not queue.empty():
                value = queue.get_nowait()
            yield _watch_data(variable, value)
            while True:
                yield _watch_data(variable, await queue.get())
        finally:
            self._reporter.unwatch(variable, queue)

    # --- reads ----------------------------------------------------------------------

    async def _cmd_get(self, variable: str) -> dict[str, Any]:
        return _get_data(await self._driver.get(variable))

    async def _cmd_before(self, variable: str) -> dict[str, Any]:
        view = await self._driver.get(variable)
        return {"variable": variable, "before": view.before}

    async def _cmd_history(self, variable: str, after: str | None = None) -> dict[str, Any]:
        """One page of the log, from the start or from the cursor *after* (a page's
        ``next``; None on the last page). A cursor made before a sync folded the log
        would skip ops the fold took: the first page is answered instead, with
        ``restarted`` true, so a client that joins the pages starts over."""
        page = await self._driver.history(variable, after, HISTORY_PAGE_OPS)
        return {
            "variable": variable,
            "before": page.before,
            "ops": [
                {
                    "node_id": origin.node_id,
                    "incarnation": origin.incarnation,
                    "nonce": nonce,
                    "delta": delta,
                }
                for origin, nonce, delta in page.ops
            ],
            "next": page.next,
            "restarted": page.restarted,
        }

    async def _cmd_variables(self) -> dict[str, Any]:
        return {"variables": list(await self._driver.variables())}

    async def _cmd_peers(self) -> dict[str, Any]:
        return {"peers": _peers(await self._driver.state())}

    async def _cmd_status(self) -> dict[str, Any]:
        state = await self._driver.state()
        return {
            "node_id": state.node_id,
            "incarnation": state.incarnation,
            "mode": state.mode.value,
            "epoch": state.epoch,
            "peers": _peers(state),
            "ops_in_log": state.ops_in_log,
            "variables": state.variables,
            "stats": dict(sorted({**state.stats, **self._driver.stats}.items())),
        }

    async def _cmd_keys(self) -> dict[str, Any]:
        state = await self._driver.state()
        return {
            "signing": state.key_ids[0] if state.key_ids else None,
            "accepted": list(state.key_ids),
            "rejected": {
                name.removeprefix("rejected_"): count
                for name, count in sorted(state.stats.items())
                if name.startswith("rejected_")
            },
        }

    # --- writes ---------------------------------------------------------------------

    async def _cmd_create(self, variable: str) -> dict[str, Any]:
        created = await self._driver.create(variable)
        return {"variable": variable, "created": created}

    async def _cmd_delete(self, variable: str) -> dict[str, Any]:
        """False, not ``not_found``, for a name not shown here: deleting twice, or a
        name a peer already deleted, is an outcome, not a mistake."""
        deleted = await self._driver.delete(variable)
        return {"variable": variable, "deleted": deleted}

    async def _cmd_add(
        self, variable: str, delta: int, request_id: str | None = None
    ) -> dict[str, Any]:
        """An add; one named by *request_id* is applied once, by the node, which also
        answers a retry (and refuses the id's reuse for another add) across restarts."""
        return await self._add(variable, (delta,), request_id)

    async def _cmd_populate(self, variable: str, count: int) -> dict[str, Any]:
        """*count* random ops, `POPULATE_STEP_OPS` per step: each step's ops are durable
        before the next are drawn, so other requests, datagrams and the watchdog get
        their turn in between, and memory holds one step's ops, not *count*."""
        result: dict[str, Any] = {}
        for done in range(0, count, POPULATE_STEP_OPS):
            step = min(POPULATE_STEP_OPS, count - done)
            deltas = tuple(self._rng.choices(POPULATE_DELTAS, k=step))
            result = await self._add(variable, deltas)
        return {"variable": variable, "count": count, "value": result["value"]}

    async def _add(
        self, variable: str, deltas: tuple[int, ...], request_id: str | None = None
    ) -> dict[str, Any]:
        """Apply *deltas* in one step (one commit) and wait until the last is durable
        (the step's records are written in one transaction, so the others are too);
        *request_id* names a single add."""
        try:
            async with asyncio.timeout(self._add_timeout_s):
                last = await self._driver.add(variable, deltas, request_id)
        except TimeoutError:
            raise ControlError(ErrorCode.TIMEOUT, "the add was not applied in time") from None
        return _add_data(last)

    async def _cmd_sync(self) -> dict[str, Any]:
        try:
            async with asyncio.timeout(self._sync_timeout_s):
                event = await self._driver.sync()
        except TimeoutError:
            raise ControlError(ErrorCode.TIMEOUT, "the sync did not finish in time") from None
        return {
            "result": event.result,
            "epoch": event.epoch,
            "duration_ms": round(event.duration_s * 1000, 1),
            "reason": event.reason,
        }

    # --- diagnosis --------------------------------------------------------------------

    async def _cmd_verify(self) -> dict[str, Any]:
        """One verify at a time: a request while one runs gets its answer (each walks
        every op here and on every peer)."""
        if self._verifying is None or self._verifying.done():
            self._verifying = asyncio.ensure_future(self._verify())
        return await asyncio.shield(self._verifying)

    async def _verify(self) -> dict[str, Any]:
        try:
            async with asyncio.timeout(self._verify_timeout_s):
                event = await self._driver.verify()
        except TimeoutError:
            raise ControlError(ErrorCode.TIMEOUT, "the verify did not finish in time") from None
        return summarize(event.reports, event.silent, event.conflicts)

    async def stats(self, values: bool = False) -> dict[str, Any]:
        """The numbers of ``crdtctl stats`` and of the Prometheus endpoint; *values*
        adds each variable's value (``metrics.variable_values``), off for crdtctl: a
        line per variable would bury the rest."""
        driver = self._driver
        stats = collect_stats(await driver.state(values), driver, self._reporter.barriers)
        inodes = self._net.socket_inodes if self._net is not None else ()
        drops = udp_drops(inodes)
        kernel = 0 if isinstance(drops, Unreadable) else sum(drops.values())
        if kernel:
            stats["datagrams"]["dropped"]["kernel_receive_buffer"] = kernel
        return stats

    async def _cmd_stats(self) -> dict[str, Any]:
        return await self.stats()

    async def _cmd_net_test(self) -> dict[str, Any]:
        if self._net is None:
            raise ControlError(ErrorCode.INTERNAL, "this daemon was started without net info")
        state = await self._driver.state()
        view = {
            "peers": [
                {
                    "node_id": peer.node_id,
                    "incarnation": peer.incarnation,
                    "superseded": peer.superseded,
                    "forgotten_in_s": peer.forgotten_in_s,
                    "address": peer.address,
                    "known_s": peer.known_s,
                    "multicast_ago_s": peer.multicast_ago_s,
                    "last_seen_s": peer.last_seen_s,
                    "suspected": peer.suspected,
                    "unicast_copies": peer.unicast_copies,
                    "unicast_copy_ago_s": peer.unicast_copy_ago_s,
                }
                for peer in state.peers
            ],
            "seeds": list(state.seeds),
            "quiet_s": state.multicast_quiet_s,
            "inbox_dropped": self._driver.stats.get("dropped_inbox_full", 0),
        }
        groups = igmp_groups(self._net.interface)
        drops = udp_drops(self._net.socket_inodes)
        flags = interface_flags(self._net.interface)
        checks = net_checks(self._net, view, groups, drops, flags)
        return {
            "ok": all(check["status"] == "OK" for check in checks),
            "interface": self._net.interface,
            "address": self._net.address,
            "group": f"{self._net.group}:{self._net.port}",
            "unicast_port": self._net.unicast_port,
            "ttl": self._net.ttl,
            "checks": checks,
        }


ANSWERS: dict[str, Callable[..., Awaitable[dict[str, Any]]]] = {
    "create": Handler._cmd_create,
    "delete": Handler._cmd_delete,
    "variables": Handler._cmd_variables,
    "get": Handler._cmd_get,
    "history": Handler._cmd_history,
    "before": Handler._cmd_before,
    "add": Handler._cmd_add,
    "populate": Handler._cmd_populate,
    "sync": Handler._cmd_sync,
    "peers": Handler._cmd_peers,
    "status": Handler._cmd_status,
    "keys": Handler._cmd_keys,
    "verify": Handler._cmd_verify,
    "stats": Handler._cmd_stats,
    "net-test": Handler._cmd_net_test,
}
"""The daemon's answer to each command of `crdtd.control.protocol.COMMANDS` (``watch``
and ``ping`` are the server's); tests/control/test_commands.py checks both tables."""


def collect_stats(state: NodeState, driver: Driver, barriers: BarrierStats) -> dict[str, Any]:
    """Counters of the node and the driver, grouped; the raw ones under ``counters``,
    and the variables' values under ``values`` when *state* has them."""
    counters = {**state.stats, **driver.stats}
    dropped = {
        name.removeprefix("rejected_"): count
        for name, count in state.stats.items()
        if name.startswith("rejected_")
    }
    for name, count in driver.stats.items():
        if name.startswith("dropped_"):
            reason = name.removeprefix("dropped_")
            dropped[reason] = dropped.get(reason, 0) + count
    live = sum(1 for peer in state.peers if not peer.suspected)
    stats: dict[str, Any] = {
        "node_id": state.node_id,
        "incarnation": state.incarnation,
        "mode": state.mode.value,
        "epoch": state.epoch,
        "ops": {
            "applied": counters.get("ops_applied", 0),
            "local": counters.get("ops_local", 0),
            "batches_sent": counters.get("ops_batches_sent", 0),
            "duplicate": counters.get("ops_duplicate", 0),
        },
        "datagrams": {
            "received": counters.get("datagrams_received", 0),
            "sent": counters.get("datagrams_sent", 0),
            "send_errors": counters.get("send_errors", 0),
            "dropped": dict(sorted(dropped.items())),
        },
        "repairs": {
            name: counters.get(name, 0)
            for name in (
                "gaps_detected",
                "gaps_repaired",
                "nacks_sent",
                "nacks_received",
                "repairs_served",
                "repairs_rate_limited",
            )
        },
        "barriers": {"started": counters.get("barriers_started", 0), **barriers.snapshot()},
        "owner": driver.steps.snapshot(),
        "log_length": state.ops_in_log,
        "variables": state.variables,
        "peers": {"live": live, "suspected": len(state.peers) - live},
        "counters": dict(sorted(counters.items())),
    }
    if state.values is not None:
        stats["values"] = dict(sorted(state.values.items()))
    return stats


def _add_data(applied: AddApplied) -> dict[str, Any]:
    return {
        "variable": applied.variable,
        "node_id": applied.origin.node_id,
        "incarnation": applied.origin.incarnation,
        "nonce": applied.nonce,
        "value": applied.value,
    }


def _watch_data(variable: str, value: int | None) -> dict[str, Any]:
    """A watch line; a deleted variable (None) reads 0, where an add starts it again,
    so a watcher that reads only ``value`` still gets a number."""
    if value is None:
        return {"variable": variable, "value": 0, "deleted": True}
    return {"variable": variable, "value": value}


def _get_data(view: VariableView) -> dict[str, Any]:
    return {
        "variable": view.variable,
        "value": view.value,
        "before": view.before,
        "mode": view.mode.value,
    }


def _reply(
    reply: Reply, convert: Callable[[Any], dict[str, Any]], result: Any, error: Exception | None
) -> None:
    """A driver answer (`Driver.call`) to the server's *reply*, converted by *convert*:
    no task, and no future, of the driver's or ours."""
    if error is not None:
        reply(None, _control_error(error))
    else:
        reply(convert(result), None)


class Deadlines:
    """Answers that must come within *timeout_s*, else they are *late*: one timer for
    all of them, not one per request. They all wait as long, so they expire in the
    order they came; the answered ones at the head are dropped as new ones come, so
    the queue holds about what is in flight."""

    def __init__(
        self, loop: asyncio.AbstractEventLoop, timeout_s: float, late: ControlError
    ) -> None:
        self._loop = loop
        self._timeout_s = timeout_s
        self._late = late
        self._waiting: collections.deque[tuple[float, _Once]] = collections.deque()
        self._timer: asyncio.TimerHandle | None = None

    def watch(self, reply: Reply) -> Reply:
        """*reply*, called once: with the answer, or with *late* when the time is up
        (the answer that comes after is dropped)."""
        loop = self._loop
        waiting = self._waiting
        while waiting and waiting[0][1].done:
            waiting.popleft()
        once = _Once(reply)
        waiting.append((loop.time() + self._timeout_s, once))
        if self._timer is None:
            self._timer = loop.call_at(waiting[0][0], self._expire)
        return once

    def _expire(self) -> None:
        loop = self._loop
        now, waiting = loop.time(), self._waiting
        while waiting and (waiting[0][1].done or waiting[0][0] <= now):
            _, once = waiting.popleft()
            once(None, ControlError(self._late.code, self._late.message))
        self._timer = loop.call_at(waiting[0][0], self._expire) if waiting else None


class _Once:
    """A reply that passes on its first call only (`Deadlines`)."""

    __slots__ = ("_reply", "done")

    def __init__(self, reply: Reply) -> None:
        self.done = False
        self._reply = reply

    def __call__(self, data: dict[str, Any] | None, error: BaseException | None) -> None:
        if not self.done:
            self.done = True
            self._reply(data, error)


def _control_error(error: BaseException) -> BaseException:
    if isinstance(error, UnknownVariable):
        return ControlError(ErrorCode.NOT_FOUND, str(error))
    if isinstance(error, InvalidInput):
        return ControlError(ErrorCode.BAD_REQUEST, str(error))
    return error


def _peers(state: NodeState) -> list[dict[str, Any]]:
    return [
        {
            "node_id": peer.node_id,
            "incarnation": peer.incarnation,
            "address": f"{peer.address[0]}:{peer.address[1]}",
            "mode": peer.mode.value,
            "epoch": peer.epoch,
            "last_seen_ms": int(peer.last_seen_s * 1000),
            "suspected": peer.suspected,
        }
        for peer in state.peers
    ]
