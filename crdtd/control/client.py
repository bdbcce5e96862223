"""A small blocking client for crdtd's control socket (used by ``crdtctl``).

Rules:
- imports only the standard library and `crdtd.control.protocol`, so ``crdtctl``
  starts fast: no asyncio, no crdtd.core;
- one connection, opened on first use and reused; requests go one at a time;
- ``timeout_s`` bounds a whole call (connect, send, answer); after a timeout the
  connection is dropped, because its late answer would be read as the next one's;
- failures split three ways: `DaemonUnreachable` (no socket, refused, permission denied,
  connection lost), `ControlError` with code ``timeout`` (no answer in time), and
  `ControlError` with the daemon's code when it answered with an error;
- ``retry=True`` sends a request again, once, on a fresh connection after a connection
  failure; use it only for requests the daemon applies once (``add`` with a
  ``request_id``).
"""

from __future__ import annotations

import os
import socket
import time
from collections.abc import Iterator, Mapping
from typing import Any

from crdtd.control.protocol import (
    RESPONSE_BYTES_MAX,
    ControlError,
    ErrorCode,
    LineBuffer,
    LineTooLong,
    Response,
    decode_response,
    encode_request,
)

DEFAULT_SOCKET = "/run/crdtd/crdtd.sock"
RECV_BYTES = 256 * 1024


class DaemonUnreachable(Exception):
    """The daemon cannot be reached on its socket; ``reason`` says how it failed."""

    def __init__(self, path: str, reason: str) -> None:
        super().__init__(f"cannot reach crdtd at {path}: {reason}")
        self.path = path
        self.reason = reason


class Client:
    def __init__(self, path: str | os.PathLike[str], *, timeout_s: float | None = 10.0) -> None:
        self.path = os.fspath(path)
        self.timeout_s = timeout_s
        self._sock: socket.socket | None = None
        self._lines = LineBuffer(RESPONSE_BYTES_MAX)
        self._next_id = 1

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None
            self._lines = LineBuffer(RESPONSE_BYTES_MAX)

    def call(
        self,
        cmd: str,
        args: Mapping[str, object] | None = None,
        *,
        timeout_s: float | None = None,
        retry: bool = False,
    ) -> dict[str, Any]:
        """Send one request and return the response's ``data``.

        ``timeout_s`` overrides the client's for this call (None: the client's).
        """
        limit_s = self.timeout_s if timeout_s is None else timeout_s
        deadline = None if limit_s is None else time.monotonic() + limit_s
        try:
            return self._exchange(cmd, args or {}, deadline)
        except DaemonUnreachable:
            if not retry:
                raise
        return self._exchange(cmd, args or {}, deadline)

    def watch(self, variable: str) -> Iterator[dict[str, Any]]:
        """Yield each change of *variable* until the daemon ends the stream, which
        raises `DaemonUnreachable`; the timeout bounds only the first answer."""
        deadline = None if self.timeout_s is None else time.monotonic() + self.timeout_s
        request_id = self._send("watch", {"variable": variable}, deadline)
        yield self._receive(request_id, deadline)
        while True:
            yield self._receive(request_id, None)

    def _exchange(
        self, cmd: str, args: Mapping[str, object], deadline: float | None
    ) -> dict[str, Any]:
        return self._receive(self._send(cmd, args, deadline), deadline)

    def _send(self, cmd: str, args: Mapping[str, object], deadline: float | None) -> int:
        request_id = self._next_id
        self._next_id += 1
        line = encode_request(request_id, cmd, args)
        sock = self._connect(deadline)
        try:
            sock.settimeout(self._remaining_s(deadline))
            sock.sendall(line)
        except TimeoutError:
            raise self._timed_out() from None
        except OSError as error:
            refusal = self._parting_error()
            self.close()
            if refusal is not None:
                raise refusal from None
            raise DaemonUnreachable(self.path, f"connection lost ({error.strerror})") from None
        return request_id

    def _parting_error(self) -> ControlError | None:
        """The error a daemon sent before hanging up on us (``busy``), if it is here:
        it may have closed before our request went out."""
        assert self._sock is not None
        try:
            self._sock.setblocking(False)
            self._lines.feed(self._sock.recv(RECV_BYTES))
            line = self._lines.next_line()
            return None if line is None else decode_response(line).error
        except (OSError, LineTooLong, ControlError):
            return None

    def _receive(self, request_id: int, deadline: float | None) -> dict[str, Any]:
        response = decode_response(self._read_line(deadline))
        if response.id not in (request_id, None):
            self.close()
            raise ControlError(
                ErrorCode.INTERNAL,
                f"crdtd answered request {response.id!r} when {request_id} was expected",
            )
        return _unwrap(response)

    def _connect(self, deadline: float | None) -> socket.socket:
        if self._sock is not None:
            return self._sock
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            sock.settimeout(self._remaining_s(deadline))
            sock.connect(self.path)
        except TimeoutError:
            sock.close()
            raise self._timed_out() from None
        except OSError as error:
            sock.close()
            raise DaemonUnreachable(self.path, connect_failure(error)) from None
        self._sock = sock
        return sock

    def _read_line(self, deadline: float | None) -> bytes:
        assert self._sock is not None
        while True:
            try:
                line = self._lines.next_line()
            except LineTooLong:
                self.close()
                raise ControlError(
                    ErrorCode.INTERNAL, f"response from crdtd over {RESPONSE_BYTES_MAX} bytes"
                ) from None
            if line is not None:
                return line
            try:
                self._sock.settimeout(self._remaining_s(deadline))
                data = self._sock.recv(RECV_BYTES)
            except TimeoutError:
                raise self._timed_out() from None
            except OSError as error:
                self.close()
                raise DaemonUnreachable(self.path, f"connection lost ({error.strerror})") from None
            if not data:
                self.close()
                raise DaemonUnreachable(self.path, "connection closed by crdtd")
            self._lines.feed(data)

    def _remaining_s(self, deadline: float | None) -> float | None:
        if deadline is None:
            return None
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise self._timed_out()
        return remaining

    def _timed_out(self) -> ControlError:
        self.close()
        return ControlError(ErrorCode.TIMEOUT, f"no answer from crdtd at {self.path} in time")


def _unwrap(response: Response) -> dict[str, Any]:
    if response.error is not None:
        raise response.error
    assert response.data is not None
    return response.data


def connect_failure(error: OSError) -> str:
    if isinstance(error, FileNotFoundError):
        return "socket missing (is crdtd running? set --socket or CRDTD_SOCKET)"
    if isinstance(error, ConnectionRefusedError):
        return "connection refused (a stale socket: crdtd is not running)"
    if isinstance(error, PermissionError):
        return "permission denied (is this user in the socket's group?)"
    return error.strerror or str(error)
