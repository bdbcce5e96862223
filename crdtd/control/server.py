"""The asyncio shell around `crdtd.control.protocol`: crdtd's Unix-socket control server.

Rules:
- one task per connection reads requests; answers are written strictly in request
  order, so a client may pipeline, and a slow request (``sync``) delays only its own
  connection. A request whose answer is small and cheap (`STARTED_AT_ONCE`: ``add``,
  ``get``...) starts as soon as it is read, so pipelined adds share a disk commit;
  any other starts only when its turn to be written comes, after the answers before
  it went out. So a connection holds at most one big answer (``history``, ``verify``,
  ``stats``...) and ``PIPELINE_MAX`` small ones; while they wait unsent, reading stops:
  a client that pipelines without reading costs bounded memory and no work;
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
import contextlib
import os
import socket
import stat
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from types import TracebackType
from typing import Any, Protocol

import structlog

from crdtd.control.protocol import (
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
    encode_error,
    encode_response,
)

SOCKET_MODE = 0o660
READ_BYTES = 64 * 1024
PIPELINE_MAX = 256  # requests of one connection read and not yet answered
STARTED_AT_ONCE = frozenset({"add", "create", "get", "before", "ping"})
"""Commands started as soon as they are read: their answers are a few hundred bytes."""
PROBE_TIMEOUT_S = 1.0


_Pending = asyncio.Future[bytes] | Request | None
"""What waits in a connection's answer queue: an answer being computed, a request not
started yet, or None for the end of input."""


class Handler(Protocol):
    """What the daemon implements to answer control requests."""

    async def handle(self, request: Request) -> dict[str, Any]:
        """Answer any command but ``watch`` and ``ping`` with the response's ``data``,
        or raise `ControlError` (``not_found``, ``busy``, ``timeout``, ...)."""
        ...

    def watch(self, variable: str) -> AsyncIterator[dict[str, Any]]:
        """Items ``{"variable", "value"}``, one per change; yield the current value
        first so the client knows the watch is live. Raise `ControlError` (for example
        ``not_found``) to refuse. Closed (``aclose``) when the client goes away."""
        ...


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
        self._connections: set[asyncio.Task[None]] = set()
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
            self._server = await asyncio.start_unix_server(
                self._accept, sock=self._listening, **keep
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
            self._server = await asyncio.start_unix_server(self._accept, sock=sock)
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
        for task in self._connections:
            task.cancel()
        await asyncio.gather(*self._connections, return_exceptions=True)
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

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if len(self._connections) >= self._connections_max:
            message = f"too many control connections (limit {self._connections_max})"
            writer.write(encode_error(None, ErrorCode.BUSY, message))
            writer.close()  # the transport flushes the answer before closing
            return
        task = asyncio.current_task()
        assert task is not None
        self._connections.add(task)
        try:
            await self._converse(reader, writer)
        except (ConnectionError, TimeoutError):
            pass  # the client went away or stopped reading; nothing to answer
        except asyncio.CancelledError:
            if not self._closing:
                raise
            # `close` ended us: finish quietly, because asyncio 3.11's stream callback
            # logs a cancelled connection task as an error.
        finally:
            self._connections.discard(task)
            writer.close()

    async def _converse(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """Read requests and start each at once; a second task writes answers in order.

        Starting a request before the previous one is answered is what lets a pipelining
        client's adds share one disk commit instead of paying one fsync each.
        """
        answers: asyncio.Queue[_Pending] = asyncio.Queue(PIPELINE_MAX)
        sender = asyncio.ensure_future(self._send_in_order(answers, writer))
        try:
            await self._read_requests(reader, writer, answers)
            await answers.put(None)
            await sender
        finally:
            if not sender.done():
                sender.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await sender

    async def _send_in_order(
        self, answers: asyncio.Queue[_Pending], writer: asyncio.StreamWriter
    ) -> None:
        """Write each answer in turn; a `Request` queued unstarted is answered now, once
        everything before it is written (the transport's buffer is drained)."""
        try:
            while (answer := await answers.get()) is not None:
                if isinstance(answer, Request):
                    line = await self._answer(answer)
                else:
                    line = await answer
                await self._send(writer, line)
                answers.task_done()
        finally:
            while not answers.empty():
                pending = answers.get_nowait()
                if isinstance(pending, asyncio.Future):
                    pending.cancel()

    async def _read_requests(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        answers: asyncio.Queue[_Pending],
    ) -> None:
        lines = LineBuffer(REQUEST_BYTES_MAX)
        while True:
            try:
                line = lines.next_line()
            except LineTooLong:
                message = f"request line longer than {REQUEST_BYTES_MAX} bytes; closing"
                await answers.put(_done(encode_error(None, ErrorCode.BAD_REQUEST, message)))
                return
            if line is None:
                try:
                    async with asyncio.timeout(self._idle_timeout_s):
                        data = await reader.read(READ_BYTES)
                except TimeoutError:
                    return  # idle
                if not data:
                    return  # end of input; a partial last line is dropped
                lines.feed(data)
                continue
            try:
                request = decode_request(line)
            except Rejected as rejected:
                reply = encode_error(rejected.request_id, rejected.code, rejected.message)
                await answers.put(_done(reply))
                continue
            if request.cmd == "watch":
                await answers.join()  # earlier answers go out before the stream starts
                await self._stream(request, reader, writer)
                return
            if request.cmd in STARTED_AT_ONCE:
                await answers.put(asyncio.ensure_future(self._answer(request)))
            else:
                await answers.put(request)  # started by the sender on its turn

    async def _answer(self, request: Request) -> bytes:
        if request.cmd == "ping":
            return encode_response(request.id, {})
        if self._read_only and request.cmd not in READS:
            message = (
                f"{self.path} is a read-only socket; writes go through the "
                "daemon's main control socket (control.socket)"
            )
            return encode_error(request.id, ErrorCode.READ_ONLY, message)
        try:
            return encode_response(request.id, await self._handler.handle(request))
        except ControlError as error:
            return encode_error(request.id, error.code, error.message)
        except Exception:
            _log().exception("control_handler_failed", cmd=request.cmd, request_id=request.id)
            return _internal(request.id)

    async def _stream(
        self, request: Request, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        """Run a watch until the handler's iterator ends or the client hangs up."""
        async with asyncio.TaskGroup() as group:
            hangup = group.create_task(_drain_input(reader))
            pump = group.create_task(self._pump(request, writer))
            hangup.add_done_callback(lambda _: pump.cancel())
            pump.add_done_callback(lambda _: hangup.cancel())

    async def _pump(self, request: Request, writer: asyncio.StreamWriter) -> None:
        items: AsyncIterator[dict[str, Any]] | None = None
        try:
            items = self._handler.watch(request.args["variable"])
            async for item in items:
                await self._send(writer, encode_response(request.id, item))
            return  # the handler ended the stream
        except ControlError as error:
            ending = encode_error(request.id, error.code, error.message)
        except (ConnectionError, TimeoutError):
            return  # the watcher went away or stopped reading
        except Exception:
            _log().exception("control_watch_failed", request_id=request.id)
            ending = _internal(request.id)
        finally:
            aclose = getattr(items, "aclose", None)
            if aclose is not None:
                await aclose()
        with contextlib.suppress(ConnectionError, TimeoutError):
            await self._send(writer, ending)

    async def _send(self, writer: asyncio.StreamWriter, line: bytes) -> None:
        writer.write(line)
        async with asyncio.timeout(self._idle_timeout_s):
            await writer.drain()


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


async def _drain_input(reader: asyncio.StreamReader) -> None:
    """Read and drop input until the client hangs up."""
    with contextlib.suppress(ConnectionError):
        while await reader.read(READ_BYTES):
            pass


def _done(line: bytes) -> asyncio.Future[bytes]:
    future: asyncio.Future[bytes] = asyncio.get_running_loop().create_future()
    future.set_result(line)
    return future


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
