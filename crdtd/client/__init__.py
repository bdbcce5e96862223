"""crdtd's client library for Python programs: `Client` (blocking) and `AsyncClient`.

    from crdtd.client import Client

    with Client() as counters:  # --socket's rules: the path, $CRDTD_SOCKET, the default
        counters.create("seats")
        added = counters.add("seats", -1)  # durable on this node when it returns
        print(added.value, counters.get("seats").value)

Rules:
- the socket is the *path* given, else ``$CRDTD_SOCKET``, else ``/run/crdtd/crdtd.sock``,
  as for crdtctl;
- a call fails with `DaemonUnreachable` (no socket, refused, permission denied, the
  connection lost) or `ControlError` (``code`` and ``message``: the daemon's refusal,
  or ``timeout`` when no answer came in time), as crdtctl's calls do;
- every `add` carries a request id: yours (``request_id=``), or a fresh random one.
  After a lost connection or a timeout the add is sent again, once, with the same id:
  the daemon applies an id once, also across its restarts, and answers a repeat with
  the op the first one became. So retrying an add never counts it twice; an id reused
  for another add is refused (``bad_request``);
- `AsyncClient` pipelines: concurrent calls share one connection, and the daemon
  answers them in order, so a thousand concurrent adds share a few disk commits.

The control protocol itself (JSON lines) is described in docs/control.md.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from crdtd.control.client import DEFAULT_SOCKET, DaemonUnreachable, connect_failure
from crdtd.control.client import Client as _Blocking
from crdtd.control.protocol import (
    RESPONSE_BYTES_MAX,
    ControlError,
    ErrorCode,
    LineBuffer,
    decode_response,
    encode_request,
)

__all__ = [
    "Added",
    "AsyncClient",
    "Client",
    "ControlError",
    "DaemonUnreachable",
    "Op",
    "Synced",
    "Value",
    "socket_path",
]

READ_BYTES = 256 * 1024


def socket_path(path: str | os.PathLike[str] | None = None) -> str:
    """The control socket a client uses: *path*, else ``$CRDTD_SOCKET``, else the
    default, ``/run/crdtd/crdtd.sock``."""
    if path is not None:
        return os.fspath(path)
    return os.environ.get("CRDTD_SOCKET") or DEFAULT_SOCKET


@dataclass(frozen=True, slots=True)
class Added:
    """An add, applied and durable on the node that answered: the op it became."""

    variable: str
    node_id: str
    incarnation: int
    nonce: int
    value: int
    """The variable's value on that node right after the add."""


@dataclass(frozen=True, slots=True)
class Value:
    """A variable as one node sees it: ``value`` is ``before`` (what the last full sync
    folded in) plus the ops since; ``mode`` is the node's barrier mode."""

    variable: str
    value: int
    before: int
    mode: str


@dataclass(frozen=True, slots=True)
class Op:
    """One op of a variable's history."""

    node_id: str
    incarnation: int
    nonce: int
    delta: int


@dataclass(frozen=True, slots=True)
class Synced:
    """How a full sync ended: ``result`` is ``completed`` or ``aborted`` (``reason``)."""

    result: str
    epoch: int
    duration_ms: float
    reason: str | None


def _added(data: Mapping[str, Any]) -> Added:
    return Added(
        data["variable"], data["node_id"], data["incarnation"], data["nonce"], data["value"]
    )


def _value(data: Mapping[str, Any]) -> Value:
    return Value(data["variable"], data["value"], data["before"], data["mode"])


def _ops(data: Mapping[str, Any]) -> list[Op]:
    return [Op(op["node_id"], op["incarnation"], op["nonce"], op["delta"]) for op in data["ops"]]


def _synced(data: Mapping[str, Any]) -> Synced:
    return Synced(data["result"], data["epoch"], data["duration_ms"], data.get("reason"))


def _add_args(variable: str, delta: int, request_id: str | None) -> dict[str, Any]:
    return {"variable": variable, "delta": delta, "request_id": request_id or os.urandom(8).hex()}


def _retryable(error: Exception) -> bool:
    return isinstance(error, DaemonUnreachable) or (
        isinstance(error, ControlError) and error.code == ErrorCode.TIMEOUT
    )


class Client:
    """A blocking client on one connection (opened on first use). Not thread-safe:
    give each thread its own. *timeout_s* bounds each call (None: wait forever)."""

    def __init__(
        self, path: str | os.PathLike[str] | None = None, *, timeout_s: float | None = 30.0
    ) -> None:
        self.path = socket_path(path)
        self._client = _Blocking(self.path, timeout_s=timeout_s)

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def close(self) -> None:
        """Close the connection (the next call opens another)."""
        self._client.close()

    def call(self, cmd: str, **args: Any) -> dict[str, Any]:
        """Any command of the control protocol; the answer's ``data``."""
        return self._client.call(cmd, args)

    def add(self, variable: str, delta: int, *, request_id: str | None = None) -> Added:
        """Add *delta* to *variable* (created if new); retried once with the same id."""
        args = _add_args(variable, delta, request_id)
        try:
            return _added(self._client.call("add", args))
        except (DaemonUnreachable, ControlError) as error:
            if not _retryable(error):
                raise
        return _added(self._client.call("add", args))

    def get(self, variable: str) -> Value:
        """The variable as this node sees it now."""
        return _value(self._client.call("get", {"variable": variable}))

    def create(self, variable: str) -> bool:
        """Create *variable* at 0 everywhere; False if it existed."""
        return bool(self._client.call("create", {"variable": variable})["created"])

    def delete(self, variable: str) -> bool:
        """Delete *variable* everywhere; False (nothing deleted) if this node does not
        show it. The adds this node held count no more; one it had not seen, or a later
        one (or `create`), shows the variable again, from 0."""
        return bool(self._client.call("delete", {"variable": variable})["deleted"])

    def history(self, variable: str) -> list[Op]:
        """Every op of *variable* since the last full sync, all pages joined (a fold
        meanwhile restarts the walk, so no op is skipped or repeated)."""
        ops: list[Op] = []
        after: str | None = None
        while True:
            args: dict[str, Any] = {"variable": variable}
            if after is not None:
                args["after"] = after
            data = self._client.call("history", args)
            if data.get("restarted"):
                ops = []
            ops += _ops(data)
            after = data.get("next")
            if after is None:
                return ops

    def watch(self, variable: str) -> Iterator[int]:
        """The value now, then each new value, until the daemon ends the stream
        (`DaemonUnreachable`). Uses a connection of its own. A delete reads 0, the value
        an add starts the variable from again."""
        watcher = _Blocking(self.path, timeout_s=self._client.timeout_s)
        try:
            for item in watcher.watch(variable):
                yield int(item["value"])
        finally:
            watcher.close()

    def sync(self) -> Synced:
        """Run a full sync (the barrier) now and wait for its end."""
        return _synced(self._client.call("sync"))

    def status(self) -> dict[str, Any]:
        """The node: ``node_id``, ``incarnation``, ``mode``, ``epoch``, ``peers``..."""
        return self._client.call("status")

    def verify(self) -> dict[str, Any]:
        """Compare this node's ops with every live peer's (see ``crdtctl verify``)."""
        return self._client.call("verify")


class AsyncClient:
    """An asyncio client on one connection; concurrent calls are pipelined on it.
    Use ``async with AsyncClient() as counters:``. *timeout_s* bounds each call."""

    def __init__(
        self, path: str | os.PathLike[str] | None = None, *, timeout_s: float | None = 30.0
    ) -> None:
        self.path = socket_path(path)
        self.timeout_s = timeout_s
        self._writer: asyncio.StreamWriter | None = None
        self._reader_task: asyncio.Task[None] | None = None
        self._waiting: dict[int, asyncio.Future[dict[str, Any]]] = {}
        self._next_id = 1
        self._connecting = asyncio.Lock()

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    async def close(self) -> None:
        """Close the connection; calls still waiting fail with `DaemonUnreachable`."""
        writer, self._writer = self._writer, None
        if self._reader_task is not None:
            self._reader_task.cancel()
            self._reader_task = None
        if writer is not None:
            writer.close()
        self._fail_all(DaemonUnreachable(self.path, "the client was closed"))

    async def call(self, cmd: str, **args: Any) -> dict[str, Any]:
        """Any command of the control protocol; the answer's ``data``."""
        return await self._call(cmd, args)

    async def add(self, variable: str, delta: int, *, request_id: str | None = None) -> Added:
        """Add *delta* to *variable* (created if new); retried once with the same id."""
        args = _add_args(variable, delta, request_id)
        try:
            return _added(await self._call("add", args))
        except (DaemonUnreachable, ControlError) as error:
            if not _retryable(error):
                raise
        return _added(await self._call("add", args))

    async def get(self, variable: str) -> Value:
        """The variable as this node sees it now."""
        return _value(await self._call("get", {"variable": variable}))

    async def create(self, variable: str) -> bool:
        """Create *variable* at 0 everywhere; False if it existed."""
        return bool((await self._call("create", {"variable": variable}))["created"])

    async def delete(self, variable: str) -> bool:
        """Delete *variable* everywhere; False (nothing deleted) if this node does not
        show it. The adds this node held count no more; one it had not seen, or a later
        one (or `create`), shows the variable again, from 0."""
        return bool((await self._call("delete", {"variable": variable}))["deleted"])

    async def history(self, variable: str) -> list[Op]:
        """Every op of *variable* since the last full sync, all pages joined."""
        ops: list[Op] = []
        after: str | None = None
        while True:
            args: dict[str, Any] = {"variable": variable}
            if after is not None:
                args["after"] = after
            data = await self._call("history", args)
            if data.get("restarted"):
                ops = []
            ops += _ops(data)
            after = data.get("next")
            if after is None:
                return ops

    async def sync(self) -> Synced:
        """Run a full sync (the barrier) now and wait for its end."""
        return _synced(await self._call("sync", {}))

    async def status(self) -> dict[str, Any]:
        """The node: ``node_id``, ``incarnation``, ``mode``, ``epoch``, ``peers``..."""
        return await self._call("status", {})

    async def verify(self) -> dict[str, Any]:
        """Compare this node's ops with every live peer's (see ``crdtctl verify``)."""
        return await self._call("verify", {})

    async def watch(self, variable: str) -> AsyncIterator[int]:
        """The value now, then each new value, on a connection of its own, until the
        daemon ends the stream (`DaemonUnreachable`) or the caller stops iterating. A
        delete reads 0, the value an add starts the variable from again."""
        reader, writer = await _open(self.path)
        try:
            writer.write(encode_request(1, "watch", {"variable": variable}))
            lines = LineBuffer(RESPONSE_BYTES_MAX)
            while True:
                line = lines.next_line()
                if line is None:
                    data = await reader.read(READ_BYTES)
                    if not data:
                        raise DaemonUnreachable(self.path, "connection closed by crdtd")
                    lines.feed(data)
                    continue
                response = decode_response(line)
                if response.error is not None:
                    raise response.error
                assert response.data is not None
                yield int(response.data["value"])
        finally:
            writer.close()

    async def _call(self, cmd: str, args: Mapping[str, Any]) -> dict[str, Any]:
        writer = await self._connect()
        request_id = self._next_id
        self._next_id += 1
        future: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self._waiting[request_id] = future
        writer.write(encode_request(request_id, cmd, args))
        try:
            return await asyncio.wait_for(asyncio.shield(future), self.timeout_s)
        except TimeoutError:
            # Its late answer would still come, in order: drop the connection instead,
            # so the next call starts clean (the request may have been applied).
            self._waiting.pop(request_id, None)
            await self.close()
            raise ControlError(
                ErrorCode.TIMEOUT, f"no answer from crdtd at {self.path} in time"
            ) from None
        finally:
            self._waiting.pop(request_id, None)

    async def _connect(self) -> asyncio.StreamWriter:
        async with self._connecting:
            if self._writer is None or self._writer.is_closing():
                reader, self._writer = await _open(self.path)
                self._reader_task = asyncio.ensure_future(self._read_answers(reader))
            return self._writer

    async def _read_answers(self, reader: asyncio.StreamReader) -> None:
        lines = LineBuffer(RESPONSE_BYTES_MAX)
        try:
            while True:
                line = lines.next_line()
                if line is None:
                    data = await reader.read(READ_BYTES)
                    if not data:
                        raise DaemonUnreachable(self.path, "connection closed by crdtd")
                    lines.feed(data)
                    continue
                response = decode_response(line)
                future = self._waiting.get(response.id) if isinstance(response.id, int) else None
                if future is None or future.done():
                    continue  # a call that timed out, or a refusal of the connection
                if response.error is not None:
                    future.set_exception(response.error)
                else:
                    assert response.data is not None
                    future.set_result(response.data)
        except (OSError, DaemonUnreachable, ControlError) as error:
            if isinstance(error, OSError):
                error = DaemonUnreachable(self.path, f"connection lost ({error.strerror})")
            self._writer = None
            self._fail_all(error)

    def _fail_all(self, error: Exception) -> None:
        for future in self._waiting.values():
            if not future.done():
                future.set_exception(error)


async def _open(path: str) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    try:
        return await asyncio.open_unix_connection(path, limit=RESPONSE_BYTES_MAX)
    except OSError as error:
        raise DaemonUnreachable(path, connect_failure(error)) from None
