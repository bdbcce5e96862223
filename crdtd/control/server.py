"""The asyncio shell around `crdtd.control.protocol`: crdtd's Unix-socket control server.

Rules:
- each connection is an `asyncio.Protocol`: every complete line of a read is decoded at
  once, and a request whose answer is small and cheap (`STARTED_AT_ONCE`: ``add``,
  ``get``...) is started at once, without a task (`Handler.answer` calls back), so
  the adds of a read (a pipelining client's, or many clients') land in one driver step
  and share its one disk commit. Answers are written strictly in request order, and
  those ready at the head together in one write, so a client may pipeline, and a slow
  request (``sync``) delays only its own connection. Any other request starts only
  when its turn comes, after the answers before it were written. So a connection holds
  at most one big answer (``history``, ``verify``, ``stats``...) and ``PIPELINE_MAX``
  small ones; while that many wait, or the client does not read what we write (the
  transport's flow control), reading stops: a client that pipelines without reading
  costs bounded memory and no work;
- the handler sees only validated `Request` objects; bad lines are answered here and the
  connection stays usable, except a line over the size limit: answered, then closed;
- ``ping`` is answered here with ``{}``; ``watch`` turns the connection into a stream
  of the handler's items, all with the watch's id, until either side ends it; input
  after a ``watch`` is read and dropped, so a hang-up is seen;
- a handler refuses a request by raising `ControlError`; any other exception is logged
  and answered with ``internal``, and the connection stays usable;
- a connection that sends nothing (or reads nothing we write) for ``idle_timeout_s``
  is closed; no limit applies while a request is being handled or a watch is open;
- at most ``connections_max`` connections: one more is answered ``busy`` and closed;
- the socket file is created with mode 0660 under a temporary name and renamed into
  place, so it is never reachable with looser permissions, and a stale socket is
  replaced atomically. An existing path is replaced only if it is a socket nobody
  answers on; `close` removes the file only if it is still ours;
- a read-only server (systemd's ``crdtd.socket``, for a group that may read but
  not change counters) serves only the `READS` and answers anything else with
  ``read_only`` before the handler sees it. Access is the socket file's permissions:
  who can connect, can use it.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import functools
import os
import socket
import stat
import sys
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from types import TracebackType
from typing import Any, Protocol, cast

import structlog

from crdtd.control.protocol import (
    COMMANDS,
    READS,
    REQUEST_BYTES_MAX,
    ControlError,
    ErrorCode,
    LineBuffer,
    LineTooLong,
    Rejected,
    Request,
    RequestId,
    decode_request,
    encode_add_response,
    encode_error,
    encode_response,
)

SOCKET_MODE = 0o660
PIPELINE_MAX = 256  # requests of one connection read and not yet answered
STARTED_AT_ONCE = frozenset(name for name, command in COMMANDS.items() if command.small)
"""Commands started as soon as they are read: their answers are a few hundred bytes."""
PROBE_TIMEOUT_S = 1.0


Reply = Callable[[dict[str, Any] | None, BaseException | None], None]
"""Given a response's ``data``, or the error that refuses the request (then None)."""


class Handler(Protocol):
    """What the daemon implements to answer control requests."""

    def answer(self, request: Request, reply: Reply) -> asyncio.Future[Any] | None:
        """Start answering any command but ``watch`` and ``ping``: *reply* is called
        once, in the event loop, with the response's ``data`` or a `ControlError`
        (``not_found``, ``busy``, ``timeout``, ...). Returns what to cancel if the
        client goes first (a task), if anything. Called in the loop; must not block.
        A callback, not a future: the hot commands answer one loop turn sooner."""
        ...

    def watch(self, variable: str) -> AsyncIterator[dict[str, Any]]:
        """Items ``{"variable", "value"}``, one per change; yield the current value
        first so the client knows the watch is live. Raise `ControlError` (for example
        ``not_found``) to refuse. Closed (``aclose``) when the client goes away."""
        ...


class CoroutineHandler:
    """A `Handler` whose answers are coroutines: ``answer`` runs `handle` as a task.
    The daemon's handler answers its hot commands without a task."""

    async def handle(self, request: Request) -> dict[str, Any]:
        raise NotImplementedError

    def answer(self, request: Request, reply: Reply) -> asyncio.Future[Any] | None:
        task = asyncio.ensure_future(self.handle(request))
        task.add_done_callback(functools.partial(_settled, reply))
        return task


def _settled(reply: Reply, task: asyncio.Future[dict[str, Any]]) -> None:
    """A `CoroutineHandler` task's end into its reply; a cancelled one (the client is
    gone) has nobody to answer."""
    if task.cancelled():
        return
    error = task.exception()
    if error is not None:
        reply(None, error)
    else:
        reply(task.result(), None)


class SocketPathError(Exception):
    """The control socket cannot be created at its path; the message says why."""


class ControlServer:
    """Listens on *path* until `close`; usable as ``async with``."""

    def __init__(
        self,
        path: Path,
        handler: Handler,
        *,
        connections_max: int = 64,
        idle_timeout_s: float = 60.0,
        read_only: bool = False,
        listening: socket.socket | None = None,
    ) -> None:
        """*read_only*: serve only `READS`, answer the rest ``read_only``. *listening*:
        serve this socket, already bound and listening (systemd's socket activation),
        instead of creating one at *path*; its file is then systemd's to remove."""
        if connections_max < 1:
            raise ValueError(f"connections_max: expected >= 1, got {connections_max}")
        if not idle_timeout_s > 0:
            raise ValueError(f"idle_timeout_s: expected > 0, got {idle_timeout_s}")
        self.path = Path(path)
        self._handler = handler
        self._connections_max = connections_max
        self._idle_timeout_s = idle_timeout_s
        self._connections: set[_Connection] = set()
        self._server: asyncio.Server | None = None
        self._closing = False
        self._identity: tuple[int, int] | None = None  # (st_dev, st_ino) of our socket
        self._read_only = read_only
        self._listening = listening

    @property
    def connections(self) -> int:
        return len(self._connections)

    async def start(self) -> None:
        """Claim the path and start listening; raise `SocketPathError` if we may not."""
        assert self._server is None, "started twice"
        if self._listening is not None:
            # The file is systemd's: asyncio 3.13+ would remove it on close unless told.
            keep = {"cleanup_socket": False} if sys.version_info >= (3, 13) else {}
            self._server = await asyncio.get_running_loop().create_unix_server(
                self._connection, sock=self._listening, **keep
            )
            return
        await _refuse_if_taken(self.path)
        staging = self.path.with_name(f".{self.path.name}.{os.getpid()}")
        with contextlib.suppress(FileNotFoundError):
            staging.unlink()  # a leftover of a crashed start of ours
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            sock.bind(os.fspath(staging))
            os.chmod(staging, SOCKET_MODE)
            self._server = await asyncio.get_running_loop().create_unix_server(
                self._connection, sock=sock
            )
            os.rename(staging, self.path)
        except OSError as error:
            sock.close()
            with contextlib.suppress(OSError):
                staging.unlink()
            if self._server is not None:
                self._server.close()
                self._server = None
            raise SocketPathError(
                f"cannot create the control socket {self.path}: {error.strerror or error}"
                f"{_hint(error)}"
            ) from error
        info = os.stat(self.path)
        self._identity = (info.st_dev, info.st_ino)

    async def close(self) -> None:
        """Stop listening, end every connection and remove the socket file."""
        if self._server is None:
            return
        server, self._server = self._server, None
        self._closing = True
        server.close()
        for connection in list(self._connections):
            connection.abort()
        await server.wait_closed()
        with contextlib.suppress(OSError):
            info = os.lstat(self.path)
            if (info.st_dev, info.st_ino) == self._identity:
                self.path.unlink()

    async def __aenter__(self) -> ControlServer:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    def _connection(self) -> asyncio.Protocol:
        if len(self._connections) >= self._connections_max:
            return _Refused(f"too many control connections (limit {self._connections_max})")
        return _Connection(self)

    def _answer(self, request: Request, reply: Reply) -> asyncio.Future[Any] | bytes | None:
        """Start *request* (`Handler.answer`), or give the answer line itself when it
        is answered here (``ping``, a write on a read-only socket)."""
        if request.cmd == "ping":
            return encode_response(request.id, {})
        if self._read_only and request.cmd not in READS:
            message = (
                f"{self.path} is a read-only socket; writes go through the "
                "daemon's main control socket (control.socket)"
            )
            return encode_error(request.id, ErrorCode.READ_ONLY, message)
        return self._handler.answer(request, reply)


class _Refused(asyncio.Protocol):
    """One connection over the limit: answered ``busy``, then closed."""

    def __init__(self, message: str) -> None:
        self._message = message

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.WriteTransport)
        transport.write(encode_error(None, ErrorCode.BUSY, self._message))
        transport.close()  # the transport flushes the answer before closing


class _Pending:
    """A request read and not yet answered, in the connection's answer order."""

    __slots__ = ("cancel", "line", "request", "started")

    def __init__(self, request: Request | None = None, line: bytes | None = None) -> None:
        self.request = request  # not started yet (a big one, or a watch, waits its turn)
        self.started = False  # started, unanswered
        self.cancel: asyncio.Future[Any] | None = None  # the handler's task, if any
        self.line = line  # answered: the line to write


class _Connection(asyncio.Protocol):
    """One client. Every complete line of a read is decoded at once and each small
    request started, so pipelined adds share a step and its one commit; answers go
    out strictly in request order, the ready ones at the head in one write."""

    def __init__(self, server: ControlServer) -> None:
        self._server = server
        self._lines = LineBuffer(REQUEST_BYTES_MAX)
        self._pending: collections.deque[_Pending] = collections.deque()
        self._transport: asyncio.Transport | None = None
        self._reading = True
        self._writable = asyncio.Event()
        self._writable.set()
        self._input_ended = False  # end of input, a line over the limit, or a watch
        self._close_when_answered = False
        self._write_soon = False
        self._watch: asyncio.Task[None] | None = None
        self._idle: asyncio.TimerHandle | None = None
        self._moved_at = 0.0  # the loop's time when something last moved
        self._loop = asyncio.get_running_loop()  # asked once: each ask is a getpid()

    # --- asyncio.Protocol -------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # asyncio's, or uvloop's (`crdtd.daemon.loop`), which is not a subclass of it.
        self._transport = cast(asyncio.Transport, transport)
        self._server._connections.add(self)
        self._touch()

    def data_received(self, data: bytes) -> None:
        self._touch()
        if self._input_ended:
            return  # after a watch: read and dropped, so that a hang-up is seen
        self._lines.feed(data)
        while not self._input_ended:
            try:
                line = self._lines.next_line()
            except LineTooLong:
                message = f"request line longer than {REQUEST_BYTES_MAX} bytes; closing"
                line = encode_error(None, ErrorCode.BAD_REQUEST, message)
                self._pending.append(_Pending(line=line))
                self._input_ended = self._close_when_answered = True
                break
            if line is None:
                break
            self._take(line)
        self._write_ready()

    def eof_received(self) -> bool:
        """End of input (a partial last line is dropped): answer what was asked, then
        close. A watch ends with the hang-up."""
        self._input_ended = True
        if self._watch is not None:
            self._watch.cancel()
            return False
        self._close_when_answered = True
        self._write_ready()
        return True  # keep the transport open to write the remaining answers

    def pause_writing(self) -> None:
        self._writable.clear()
        self._touch()

    def resume_writing(self) -> None:
        self._writable.set()
        self._touch()
        self._write_ready()

    def connection_lost(self, exc: Exception | None) -> None:
        self._server._connections.discard(self)
        if self._idle is not None:
            self._idle.cancel()
        for pending in self._pending:
            pending.started = False  # a reply still to come has nobody to go to
            if pending.cancel is not None:
                pending.cancel.cancel()
        self._pending.clear()
        if self._watch is not None:
            self._watch.cancel()
        self._writable.set()  # a watch waiting to write wakes up and sees the end

    def abort(self) -> None:
        if self._transport is not None:
            self._transport.abort()

    # --- requests and answers ---------------------------------------------------------

    def _take(self, line: bytes) -> None:
        try:
            request = decode_request(line)
        except Rejected as rejected:
            reply = encode_error(rejected.request_id, rejected.code, rejected.message)
            self._pending.append(_Pending(line=reply))
            return
        pending = _Pending(request)
        self._pending.append(pending)
        if request.cmd == "watch":
            self._input_ended = True  # the stream starts once earlier answers are out
        elif request.cmd in STARTED_AT_ONCE:
            self._start(pending)

    def _start(self, pending: _Pending) -> None:
        request = pending.request
        assert request is not None
        pending.request = None
        pending.started = True
        answer = self._server._answer(request, functools.partial(self._answered, pending, request))
        if isinstance(answer, bytes):
            pending.started = False
            pending.line = answer
            return
        pending.cancel = answer

    def _answered(
        self,
        pending: _Pending,
        request: Request,
        data: dict[str, Any] | None,
        error: BaseException | None,
    ) -> None:
        if not pending.started:
            return  # the connection is gone
        pending.started = False
        pending.cancel = None
        if error is None:
            assert data is not None
            if request.cmd == "add":
                pending.line = encode_add_response(request.id, data)
            else:
                pending.line = encode_response(request.id, data)
        elif isinstance(error, ControlError):
            pending.line = encode_error(request.id, error.code, error.message)
        else:
            _log().error(
                "control_handler_failed", cmd=request.cmd, request_id=request.id, exc_info=error
            )
            pending.line = _internal(request.id)
        if not self._write_soon:
            # Answers settle one callback at a time (a step's adds all at once): write
            # them together, once the loop has run the others.
            self._write_soon = True
            self._loop.call_soon(self._write_ready)

    def _write_ready(self) -> None:
        """Write the ready answers at the head in one write; start the head if it
        waited for its turn (everything before it is written, and the client reads);
        stop reading while `PIPELINE_MAX` wait; close once all is answered if the
        input ended."""
        self._write_soon = False
        transport = self._transport
        if transport is None or transport.is_closing():
            return
        lines: list[bytes] = []
        while self._pending:
            head = self._pending[0]
            if head.line is not None:
                lines.append(self._pending.popleft().line)  # type: ignore[arg-type]
                continue
            if head.request is None or not self._writable.is_set():
                break  # being answered; or the client does not read what we write
            if lines:
                transport.write(b"".join(lines))
                lines = []
                if not self._writable.is_set():
                    break
            if head.request.cmd == "watch":
                self._pending.popleft()
                self._start_watch(head.request)
                break
            self._start(head)
        if lines:
            transport.write(b"".join(lines))
        waiting = len(self._pending)
        if self._reading and waiting >= PIPELINE_MAX:
            self._reading = False
            transport.pause_reading()
        elif not self._reading and waiting < PIPELINE_MAX and self._watch is None:
            self._reading = True
            transport.resume_reading()
        if not self._pending and self._close_when_answered and self._watch is None:
            transport.close()

    # --- watch --------------------------------------------------------------------------

    def _start_watch(self, request: Request) -> None:
        self._watch = asyncio.ensure_future(self._stream(request))

    async def _stream(self, request: Request) -> None:
        """Write the handler's items until it ends the stream or the client hangs up."""
        items: AsyncIterator[dict[str, Any]] | None = None
        ending: bytes | None = None
        try:
            items = self._server._handler.watch(request.args["variable"])
            async for item in items:
                await self._write(encode_response(request.id, item))
        except ControlError as error:
            ending = encode_error(request.id, error.code, error.message)
        except (ConnectionError, TimeoutError):
            pass  # the watcher went away or stopped reading
        except asyncio.CancelledError:
            pass  # the client hung up, or the server closes
        except Exception:
            _log().exception("control_watch_failed", request_id=request.id)
            ending = _internal(request.id)
        finally:
            aclose = getattr(items, "aclose", None)
            if aclose is not None:
                await aclose()
        transport = self._transport
        if transport is not None and not transport.is_closing():
            if ending is not None:
                transport.write(ending)
            transport.close()

    async def _write(self, line: bytes) -> None:
        transport = self._transport
        if transport is None or transport.is_closing():
            raise ConnectionError("the watcher went away")
        transport.write(line)
        if not self._writable.is_set():
            async with asyncio.timeout(self._server._idle_timeout_s):
                await self._writable.wait()

    # --- idleness -----------------------------------------------------------------------

    def _touch(self) -> None:
        """Something moved: the idle clock starts again. One timer per connection,
        moved on when it fires, not a new one per read."""
        self._moved_at = self._loop.time()
        if self._idle is None:
            deadline = self._moved_at + self._server._idle_timeout_s
            self._idle = self._loop.call_at(deadline, self._idle_check)

    def _idle_check(self) -> None:
        """Close a connection that sent nothing, or read nothing we wrote, for the idle
        timeout; no limit while a request is being answered or a watch is open."""
        self._idle = None
        deadline = self._moved_at + self._server._idle_timeout_s
        if self._loop.time() < deadline:
            self._idle = self._loop.call_at(deadline, self._idle_check)
            return
        busy = any(pending.started for pending in self._pending)
        if self._writable.is_set() and (busy or self._watch is not None):
            self._touch()
            return
        if self._transport is not None:
            self._transport.abort()


async def serve(
    path: Path,
    handler: Handler,
    *,
    connections_max: int = 64,
    idle_timeout_s: float = 60.0,
    read_only: bool = False,
) -> ControlServer:
    """Start a `ControlServer` on *path*; the caller must ``await server.close()``."""
    server = ControlServer(
        path,
        handler,
        connections_max=connections_max,
        idle_timeout_s=idle_timeout_s,
        read_only=read_only,
    )
    await server.start()
    return server


def _internal(request_id: RequestId) -> bytes:
    return encode_error(request_id, ErrorCode.INTERNAL, "internal error in crdtd; see its log")


async def _refuse_if_taken(path: Path) -> None:
    """Return if *path* is free or a stale socket; else raise `SocketPathError`."""
    try:
        info = os.lstat(path)
    except FileNotFoundError:
        return
    if not stat.S_ISSOCK(info.st_mode):
        raise SocketPathError(f"{path} exists and is not a socket; refusing to replace it")
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    probe.setblocking(False)
    try:
        async with asyncio.timeout(PROBE_TIMEOUT_S):
            await asyncio.get_running_loop().sock_connect(probe, os.fspath(path))
    except (ConnectionRefusedError, FileNotFoundError):
        return  # stale: nobody listens; the rename in `start` replaces it
    except TimeoutError:
        raise SocketPathError(f"another crdtd is listening on {path}") from None
    except OSError as error:
        raise SocketPathError(
            f"{path} exists and cannot be probed ({error.strerror}); refusing to replace it"
        ) from error
    finally:
        probe.close()
    raise SocketPathError(f"another crdtd is listening on {path}")


def _hint(error: OSError) -> str:
    if isinstance(error, FileNotFoundError):
        return " (does its directory exist?)"
    if isinstance(error, PermissionError):
        return " (may this user write to its directory?)"
    if "too long" in str(error):
        return " (Unix socket paths are limited to 107 bytes)"
    return ""


def _log() -> Any:
    """The daemon's structlog logger, looked up when used so it follows the daemon's
    configuration: a handler's crash is a JSON line in the journal like the rest."""
    return structlog.get_logger()
