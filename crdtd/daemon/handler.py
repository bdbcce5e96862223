"""Control requests, answered through the driver.

Every request runs inside the owner task (`Driver.call`), so it sees only durable state
and never races the protocol. Adds and syncs then wait for the event carrying their
ticket: an add is answered once its op is on disk, a sync once its barrier ended.
"""

from __future__ import annotations

import asyncio
import collections
import random
from collections.abc import AsyncIterator
from typing import Any

from crdtd.control.protocol import ControlError, ErrorCode, Request
from crdtd.core.events import AddApplied, SyncFinished
from crdtd.core.ids import InvalidInput
from crdtd.core.node import Node
from crdtd.net.driver import Driver

REQUEST_IDS_MAX = 4096
POPULATE_DELTA_MAX = 10


class Handler:
    def __init__(self, driver: Driver, rng: random.Random) -> None:
        self._driver = driver
        self._rng = rng
        self._adds: collections.OrderedDict[str, asyncio.Future[dict[str, Any]]]
        self._adds = collections.OrderedDict()
        freeze = driver.node.settings.sync_freeze_max_s
        self._add_timeout_s = freeze + 5.0
        self._sync_timeout_s = 3 * freeze + 5.0

    async def handle(self, request: Request) -> dict[str, Any]:
        method = getattr(self, f"_cmd_{request.cmd}")
        try:
            result: dict[str, Any] = await method(**request.args)
        except InvalidInput as error:
            raise ControlError(ErrorCode.BAD_REQUEST, str(error)) from None
        return result

    async def watch(self, variable: str) -> AsyncIterator[dict[str, Any]]:
        def subscribe(node: Node, now: float) -> tuple[int, asyncio.Queue[int]]:
            return _value(node, variable), self._driver.watch(variable)

        value, queue = await self._driver.call(subscribe)
        try:
            yield {"variable": variable, "value": value}
            while True:
                yield {"variable": variable, "value": await queue.get()}
        finally:
            self._driver.unwatch(variable, queue)

    # --- reads ----------------------------------------------------------------------

    async def _cmd_get(self, variable: str) -> dict[str, Any]:
        def read(node: Node, now: float) -> dict[str, Any]:
            return {
                "variable": variable,
                "value": _value(node, variable),
                "before": node.before(variable),
                "mode": node.mode.value,
            }

        return await self._driver.call(read)

    async def _cmd_before(self, variable: str) -> dict[str, Any]:
        def read(node: Node, now: float) -> dict[str, Any]:
            _value(node, variable)
            return {"variable": variable, "before": node.before(variable)}

        return await self._driver.call(read)

    async def _cmd_history(self, variable: str) -> dict[str, Any]:
        def read(node: Node, now: float) -> dict[str, Any]:
            _value(node, variable)
            ops = [
                {
                    "node_id": origin.node_id,
                    "incarnation": origin.incarnation,
                    "nonce": nonce,
                    "delta": delta,
                }
                for origin, nonce, delta in node.history(variable) or []
            ]
            return {"variable": variable, "before": node.before(variable), "ops": ops}

        return await self._driver.call(read)

    async def _cmd_variables(self) -> dict[str, Any]:
        return await self._driver.call(lambda node, now: {"variables": node.variables()})

    async def _cmd_peers(self) -> dict[str, Any]:
        return await self._driver.call(lambda node, now: {"peers": _peers(node, now)})

    async def _cmd_status(self) -> dict[str, Any]:
        driver = self._driver

        def read(node: Node, now: float) -> dict[str, Any]:
            return {
                "node_id": node.node_id,
                "incarnation": node.origin.incarnation,
                "mode": node.mode.value,
                "epoch": node.epoch,
                "peers": _peers(node, now),
                "ops_in_log": node.ops_in_log(),
                "variables": len(node.counters),
                "stats": dict(sorted({**node.stats, **driver.stats}.items())),
            }

        return await driver.call(read)

    async def _cmd_keys(self) -> dict[str, Any]:
        def read(node: Node, now: float) -> dict[str, Any]:
            keys = node.settings.keys
            return {
                "signing": keys[0].key_id if keys else None,
                "accepted": [key.key_id for key in keys],
                "rejected": {
                    name.removeprefix("rejected_"): count
                    for name, count in sorted(node.stats.items())
                    if name.startswith("rejected_")
                },
            }

        return await self._driver.call(read)

    # --- writes ---------------------------------------------------------------------

    async def _cmd_create(self, variable: str) -> dict[str, Any]:
        created = await self._driver.call(lambda node, now: node.create(variable, now))
        return {"variable": variable, "created": created}

    async def _cmd_add(
        self, variable: str, delta: int, request_id: str | None = None
    ) -> dict[str, Any]:
        if request_id is None:
            return await self._add(variable, [delta])
        earlier = self._adds.get(request_id)
        if earlier is not None:
            return await asyncio.shield(earlier)  # a retry: answer as the first time
        future = asyncio.ensure_future(self._add(variable, [delta]))
        self._adds[request_id] = future
        while len(self._adds) > REQUEST_IDS_MAX:
            self._adds.popitem(last=False)
        try:
            return await asyncio.shield(future)
        except Exception:
            self._adds.pop(request_id, None)  # it failed: a retry may try again
            raise

    async def _cmd_populate(self, variable: str, count: int) -> dict[str, Any]:
        deltas = [self._rng.randint(-POPULATE_DELTA_MAX, POPULATE_DELTA_MAX) for _ in range(count)]
        result = await self._add(variable, deltas)
        return {"variable": variable, "count": count, "value": result["value"]}

    async def _add(self, variable: str, deltas: list[int]) -> dict[str, Any]:
        """Apply *deltas* in one step (one commit) and wait until the last is durable."""
        driver = self._driver

        def apply(node: Node, now: float) -> list[asyncio.Future[Any]]:
            return [driver.waiter(node.add(variable, delta, now)) for delta in deltas]

        waiters = await driver.call(apply)
        try:
            async with asyncio.timeout(self._add_timeout_s):
                events: list[AddApplied] = list(await asyncio.gather(*waiters))
        except TimeoutError:
            raise ControlError(ErrorCode.TIMEOUT, "the add was not applied in time") from None
        last = events[-1]
        return {
            "variable": variable,
            "node_id": last.origin.node_id,
            "incarnation": last.origin.incarnation,
            "nonce": last.nonce,
            "value": last.value,
        }

    async def _cmd_sync(self) -> dict[str, Any]:
        driver = self._driver
        waiter = await driver.call(lambda node, now: driver.waiter(node.start_sync(now)))
        try:
            async with asyncio.timeout(self._sync_timeout_s):
                event: SyncFinished = await waiter
        except TimeoutError:
            raise ControlError(ErrorCode.TIMEOUT, "the sync did not finish in time") from None
        return {
            "result": event.result,
            "epoch": event.epoch,
            "duration_ms": round(event.duration_s * 1000, 1),
            "reason": event.reason,
        }


def _value(node: Node, variable: str) -> int:
    value = node.value(variable)
    if value is None:
        raise ControlError(ErrorCode.NOT_FOUND, f"no variable {variable!r} on {node.node_id}")
    return value


def _peers(node: Node, now: float) -> list[dict[str, Any]]:
    return [
        {
            "node_id": peer.node_id,
            "incarnation": peer.incarnation,
            "address": f"{peer.address[0]}:{peer.address[1]}",
            "mode": peer.mode,
            "epoch": peer.epoch,
            "last_seen_ms": peer.last_seen_ms,
            "suspected": peer.suspected,
        }
        for peer in node.peer_views(now)
    ]
