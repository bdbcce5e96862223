"""A dict-backed stand-in for the daemon's control handler, and a way to serve it from a
background thread so blocking clients (crdtctl) can be tested in the main thread."""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from crdtd.control.protocol import ControlError, ErrorCode, Request
from crdtd.control.server import ControlServer, CoroutineHandler, serve

PEER = {"node_id": "n2", "address": ["10.0.0.2", 7946], "mode": "work", "last_seen_ms": 1500}


class FakeHandler(CoroutineHandler):
    """Answers like the daemon, from dicts. Knobs: ``modes`` (status answers these modes
    in turn before ``mode``), ``sync_hangs``, ``sync_result``, ``scripted_changes``
    (queued for each new watch; None ends the stream), ``keys`` (the answer to keys).
    ``get boom`` raises a bug."""

    def __init__(self) -> None:
        self.values: dict[str, int] = {}
        self.befores: dict[str, int] = {}
        self.ops: dict[str, list[dict[str, Any]]] = {}
        self.answers_by_request_id: dict[str, dict[str, Any]] = {}
        self.requests: list[Request] = []
        self.mode = "work"
        self.modes: list[str] = []
        self.sync_hangs = False
        self.sync_result = "completed"
        self.scripted_changes: list[int | None] = []
        self.watchers: dict[str, list[asyncio.Queue[int | None]]] = {}
        self.watch_ended = asyncio.Event()
        self.sync_started = asyncio.Event()
        self._nonce = 0
        self.keys: dict[str, Any] = {
            "signing": "k2026b",
            "accepted": ["k2026b", "k2026a"],
            "rejected": {"unknown_key": 2, "bad_mac": 14},
        }

    async def handle(self, request: Request) -> dict[str, Any]:
        self.requests.append(request)
        args = request.args
        match request.cmd:
            case "create":
                created = args["variable"] not in self.values
                if created:
                    self._create(args["variable"])
                return {"variable": args["variable"], "created": created}
            case "delete":
                deleted = self.values.pop(args["variable"], None) is not None
                return {"variable": args["variable"], "deleted": deleted}
            case "variables":
                return {"variables": sorted(self.values)}
            case "get":
                if args["variable"] == "boom":
                    raise RuntimeError("a bug in the handler")
                variable = self._known(args["variable"])
                return {
                    "variable": variable,
                    "value": self.values[variable],
                    "before": self.befores[variable],
                    "mode": self.mode,
                }
            case "history":
                variable = self._known(args["variable"])
                return {
                    "variable": variable,
                    "before": self.befores[variable],
                    "ops": self.ops[variable],
                }
            case "before":
                variable = self._known(args["variable"])
                return {"variable": variable, "before": self.befores[variable]}
            case "add":
                request_id = args.get("request_id")
                if request_id in self.answers_by_request_id:
                    return self.answers_by_request_id[request_id]
                answer = self._add(self._known(args["variable"]), args["delta"])
                if request_id is not None:
                    self.answers_by_request_id[request_id] = answer
                return answer
            case "populate":
                variable = self._known(args["variable"])
                for index in range(args["count"]):
                    self._add(variable, index % 7 - 3)
                return {
                    "variable": variable,
                    "count": args["count"],
                    "value": self.values[variable],
                }
            case "sync":
                self.sync_started.set()
                if self.sync_hangs:
                    await asyncio.Event().wait()
                return {"result": self.sync_result, "epoch": 3, "duration_ms": 42}
            case "peers":
                return {"peers": [PEER]}
            case "keys":
                return dict(self.keys)
            case "status":
                mode = self.modes.pop(0) if self.modes else self.mode
                return {
                    "node_id": "n1",
                    "mode": mode,
                    "epoch": 3,
                    "peers": [PEER],
                    "ops_in_log": sum(len(ops) for ops in self.ops.values()),
                }
        raise AssertionError(f"unexpected command {request.cmd}")

    async def watch(self, variable: str) -> AsyncIterator[dict[str, Any]]:
        self._known(variable)
        queue: asyncio.Queue[int | None] = asyncio.Queue()
        for change in self.scripted_changes:
            queue.put_nowait(change)
        self.watchers.setdefault(variable, []).append(queue)
        try:
            yield {"variable": variable, "value": self.values[variable]}
            while (value := await queue.get()) is not None:
                yield {"variable": variable, "value": value}
        finally:
            self.watchers[variable].remove(queue)
            self.watch_ended.set()

    def _create(self, variable: str) -> None:
        self.values[variable] = self.befores[variable] = 0
        self.ops[variable] = []

    def _known(self, variable: str) -> str:
        if variable not in self.values:
            raise ControlError(ErrorCode.NOT_FOUND, f"no variable named {variable!r}")
        return variable

    def _add(self, variable: str, delta: int) -> dict[str, Any]:
        self._nonce += 1
        self.values[variable] += delta
        op = {"node_id": "n1", "incarnation": 1, "nonce": self._nonce, "delta": delta}
        self.ops[variable].append(op)
        for queue in self.watchers.get(variable, []):
            queue.put_nowait(self.values[variable])
        return {
            "variable": variable,
            "node_id": "n1",
            "nonce": self._nonce,
            "value": self.values[variable],
        }


@dataclass
class Daemon:
    path: Path
    handler: FakeHandler
    server: ControlServer
    loop: asyncio.AbstractEventLoop


@contextlib.contextmanager
def daemon_in_thread(path: Path, **limits: Any) -> Iterator[Daemon]:
    """Serve a `FakeHandler` on *path* from an event loop in a background thread."""
    handler = FakeHandler()
    loop = asyncio.new_event_loop()
    unhandled: list[dict[str, Any]] = []
    loop.set_exception_handler(lambda _, context: unhandled.append(context))
    thread = threading.Thread(target=loop.run_forever, name="fake-crdtd", daemon=True)
    thread.start()
    try:
        server = asyncio.run_coroutine_threadsafe(serve(path, handler, **limits), loop).result(5)
        try:
            yield Daemon(path, handler, server, loop)
        finally:
            asyncio.run_coroutine_threadsafe(server.close(), loop).result(5)
    finally:
        loop.call_soon_threadsafe(loop.stop)
        thread.join(5)
        loop.close()
    assert unhandled == [], "errors asyncio would only have logged"
