"""The control protocol spoken on crdtd's Unix socket: framing and validation, no IO.

Rules:
- a message is one JSON object on one line of UTF-8 ending in ``\\n``;
- a request is ``{"v": 1, "id": ID, "cmd": NAME, "args": {...}}``; ``ID`` is an integer
  (signed 64-bit) or a string of 1-64 characters and is echoed in the response; ``args``
  may be left out when a command takes none; any other field is refused;
- a response is ``{"v": 1, "id": ID, "ok": true, "data": {...}}`` or
  ``{"v": 1, "id": ID, "ok": false, "error": {"code": CODE, "message": TEXT}}``; ``id`` is
  null when the request was too broken to read one;
- a request line longer than `REQUEST_BYTES_MAX` bytes (newline excluded) is refused
  with ``bad_request`` and the connection is then closed: past that point the reader
  cannot know where the next request starts without buffering without bound;
- responses are in request order; ``watch`` answers with one response per change,
  all carrying the watch's id, until the connection closes;
- every argument is checked here, before a handler sees it: variable names are 1-64
  characters of ``[A-Za-z0-9_.-]``; a delta is an ``int`` (never a ``bool``, ``float`` or
  string) in the signed 64-bit range; a count is 1..1,000,000; a ``request_id`` is a string
  of 1-64 characters; unknown and missing arguments are refused.

Faults split as elsewhere in crdtd: a peer's garbage becomes a `Rejected` carrying the
error to send back; our own misuse (encoding a bad request, an unknown error code)
raises `InvalidArgument` or fails an assertion.

Theory of operation: the server feeds received bytes to a `LineBuffer`, turns each line
into a `Request` with `decode_request` (or answers the `Rejected` it raises with
`encode_error`), and answers with `encode_response`. The client does the reverse with
`encode_request` and `decode_response`. The ``check_*``/``parse_*`` helpers are shared
with ``crdtctl`` so a person gets the same rule, and the same words, before anything is
sent. The name and delta rules are copied from ``crdtd.core.ids`` so that ``crdtctl``
never imports the core.
"""

from __future__ import annotations

import enum
import json
import math
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

VERSION = 1
REQUEST_BYTES_MAX = 64 * 1024
RESPONSE_BYTES_MAX = 256 * 1024 * 1024
"""Far above any answer: ``history`` comes in pages of `HISTORY_PAGE_OPS` (~80 B an op),
and the biggest, ``verify`` and ``variables``, grow with ``limits.variables_max``."""
HISTORY_PAGE_OPS = 5000
"""Ops in one ``history`` answer: a page is built in one short owner-task step."""
CURSOR_CHARS_MAX = 128

NAME_CHARS_MAX = 64
REQUEST_ID_CHARS_MAX = 64
COUNT_MAX = 1_000_000
TIMEOUT_S_MAX = 86_400.0
INT64_MIN = -(2**63)
INT64_MAX = 2**63 - 1

_NAME = re.compile(r"[A-Za-z0-9_.-]{1,64}\Z")
_SIGNED_INTEGER = re.compile(r"[+-]?[0-9]+\Z")
_CURSOR = re.compile(r"[0-9]{1,20}:[0-9]{1,20}:[0-9]{1,20}:[A-Za-z0-9_.-]{1,64}\Z")
_FIELDS = frozenset({"v", "id", "cmd", "args"})

RequestId = int | str


class ErrorCode(enum.StrEnum):
    BAD_REQUEST = "bad_request"
    NOT_FOUND = "not_found"
    UNSUPPORTED_VERSION = "unsupported_version"
    TIMEOUT = "timeout"
    INTERNAL = "internal"
    BUSY = "busy"
    READ_ONLY = "read_only"


class ControlError(Exception):
    """An error answer: raised by a handler to refuse a request, raised by the client
    when the daemon answered with an error. ``code`` is an `ErrorCode` value (a client
    may see codes newer than it knows, so the type is ``str``)."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(code, message)
        self.code = code
        self.message = message

    def __str__(self) -> str:
        return f"{self.code}: {self.message}"


class Rejected(ControlError):
    """A request line broke a rule; answer it with ``encode_error(request_id, ...)``."""

    def __init__(self, request_id: RequestId | None, code: str, message: str) -> None:
        super().__init__(code, message)
        self.request_id = request_id


class InvalidArgument(ValueError):
    """A value broke an argument rule; the message says which rule and what was found."""


class LineTooLong(ValueError):
    """A line grew past its limit before its newline arrived."""


@dataclass(frozen=True, slots=True)
class Request:
    """A validated request: ``cmd`` is one of `COMMANDS` and ``args`` holds exactly the
    arguments that command takes, each already checked (optional ones may be absent)."""

    id: RequestId
    cmd: str
    args: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Response:
    """A decoded response: ``data`` when the request succeeded, else ``error``."""

    id: RequestId | None
    data: dict[str, Any] | None = None
    error: ControlError | None = None


class LineBuffer:
    """Cuts a byte stream into lines (newline removed) of at most ``line_bytes_max``."""

    def __init__(self, line_bytes_max: int) -> None:
        self._line_bytes_max = line_bytes_max
        self._buffer = bytearray()
        self._scanned = 0  # bytes already known to hold no newline

    def feed(self, data: bytes) -> None:
        self._buffer += data

    def next_line(self) -> bytes | None:
        """The next complete line, None until more data arrives, or raise `LineTooLong`."""
        end = self._buffer.find(b"\n", self._scanned)
        if end < 0:
            self._scanned = len(self._buffer)
            if self._scanned > self._line_bytes_max:
                raise LineTooLong(f"line longer than {self._line_bytes_max} bytes")
            return None
        if end > self._line_bytes_max:
            raise LineTooLong(f"line longer than {self._line_bytes_max} bytes")
        line = bytes(self._buffer[:end])
        del self._buffer[: end + 1]
        self._scanned = 0
        return line


# Argument rules, shared by the server (values from JSON) and crdtctl (text typed).


def check_variable(value: object) -> str:
    if not isinstance(value, str):
        raise InvalidArgument(f"variable: expected a string, got {_describe(value)}")
    if not _NAME.match(value):
        raise InvalidArgument(
            f"variable: expected 1-{NAME_CHARS_MAX} characters of [A-Za-z0-9_.-], got {value!r}"
        )
    return value


def check_delta(value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise InvalidArgument(f"delta: expected an integer, got {_describe(value)}")
    if not INT64_MIN <= value <= INT64_MAX:
        raise InvalidArgument(f"delta: expected a signed 64-bit integer, got {value}")
    return value


def parse_delta(text: str) -> int:
    """A delta typed by a person: ``+5``, ``-3`` or ``7``; not ``5.0`` or ``0x5``."""
    if not _SIGNED_INTEGER.match(text):
        raise InvalidArgument(f"delta: expected an integer such as 5 or -3, got {text!r}")
    return check_delta(int(text))


def check_count(value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise InvalidArgument(f"count: expected an integer, got {_describe(value)}")
    if not 1 <= value <= COUNT_MAX:
        raise InvalidArgument(f"count: expected 1..{COUNT_MAX}, got {value}")
    return value


def parse_count(text: str) -> int:
    if not text.isdecimal():
        raise InvalidArgument(f"count: expected an integer 1..{COUNT_MAX}, got {text!r}")
    return check_count(int(text))


def check_request_id(value: object) -> str:
    if not isinstance(value, str):
        raise InvalidArgument(f"request_id: expected a string, got {_describe(value)}")
    if not 1 <= len(value) <= REQUEST_ID_CHARS_MAX:
        raise InvalidArgument(
            f"request_id: expected 1-{REQUEST_ID_CHARS_MAX} characters, got {len(value)}"
        )
    return value


def check_cursor(value: object) -> str:
    """A ``history`` page's ``next``, handed back unchanged to get the page after it."""
    if not isinstance(value, str):
        raise InvalidArgument(f"after: expected a string, got {_describe(value)}")
    if len(value) > CURSOR_CHARS_MAX or not _CURSOR.match(value):
        raise InvalidArgument(
            f"after: expected the next of an earlier history answer, got {value[:40]!r}"
        )
    return value


def check_timeout(value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise InvalidArgument(f"timeout: expected a number of seconds, got {_describe(value)}")
    if not (math.isfinite(value) and 0 < value <= TIMEOUT_S_MAX):
        raise InvalidArgument(
            f"timeout: expected seconds > 0 and <= {TIMEOUT_S_MAX:g}, got {value}"
        )
    return float(value)


def parse_timeout(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise InvalidArgument(f"timeout: expected a number of seconds, got {text!r}") from None
    return check_timeout(value)


_Check = Callable[[object], object]


@dataclass(frozen=True, slots=True)
class Argument:
    """One argument of a command: its name on the wire, its check, and, when crdtctl
    takes it from the command line, its ``metavar`` and the parse of its text."""

    name: str
    check: _Check
    required: bool = True
    metavar: str | None = None
    parse: Callable[[str], object] | None = None
    default: object = None
    """crdtctl's value when the argument is left out (None: it may not be)."""


@dataclass(frozen=True, slots=True)
class Command:
    """A command, declared once: its arguments, whether it changes counters (a
    read-only socket refuses it), whether its answer is small and cheap (the server
    starts it as soon as it is read), and crdtctl's one-line help. The daemon's
    handler and crdtctl's runner and renderer are tables keyed by `name`, checked
    against this one by tests/control/test_commands.py."""

    name: str
    summary: str
    writes: bool = False
    small: bool = False
    arguments: tuple[Argument, ...] = ()


_VARIABLE = Argument("variable", check_variable, metavar="VAR", parse=check_variable)

COMMANDS: Mapping[str, Command] = {
    command.name: command
    for command in (
        Command("create", "create a counter", writes=True, small=True, arguments=(_VARIABLE,)),
        Command(
            "delete",
            "delete a counter everywhere (a later add starts it again from 0)",
            writes=True,
            small=True,
            arguments=(_VARIABLE,),
        ),
        Command("variables", "list the counters"),
        Command("get", "show a counter", small=True, arguments=(_VARIABLE,)),
        Command(
            "history",
            "ops since the last full sync",
            arguments=(_VARIABLE, Argument("after", check_cursor, required=False)),
        ),
        Command("before", "value at the last full sync", small=True, arguments=(_VARIABLE,)),
        Command(
            "add",
            "add DELTA to a counter (seed syntax: +5 VAR, -- -3 VAR)",
            writes=True,
            small=True,
            arguments=(
                _VARIABLE,
                Argument("delta", check_delta, metavar="DELTA", parse=parse_delta),
                Argument("request_id", check_request_id, required=False),
            ),
        ),
        Command(
            "populate",
            "add COUNT random ops to a counter",
            writes=True,
            arguments=(
                _VARIABLE,
                Argument("count", check_count, metavar="COUNT", parse=parse_count, default=100),
            ),
        ),
        Command("sync", "run a full sync and wait for its outcome", writes=True),
        Command("peers", "the peers this node knows"),
        Command("status", "this node's state"),
        Command("keys", "the key ids this node signs with and accepts, and rejected datagrams"),
        Command(
            "verify",
            "ask every node for its values; exit 0 if all agree, 4 if not (who is behind)",
        ),
        Command("stats", "ops, datagrams, repairs and barriers counted since start"),
        Command("net-test", "check the multicast and unicast paths; exit 0 if all OK, 1 if not"),
        Command("watch", "print each change of a counter until Ctrl-C", arguments=(_VARIABLE,)),
        Command("ping", "answered by the server itself: is the daemon there", small=True),
    )
}
"""Every command of the control protocol."""

WRITES = frozenset(name for name, command in COMMANDS.items() if command.writes)
"""The commands that change counters: a read-only socket answers them ``read_only``."""

READS = frozenset(name for name, command in COMMANDS.items() if not command.writes)
"""The commands a read-only socket serves: every command is a read or a write, so a
new command is served there only if it is declared not to write."""


def validate_args(cmd: str, args: Mapping[str, object]) -> dict[str, Any]:
    """Return a checked copy of *args* for *cmd*, or raise `InvalidArgument`. The
    message does not repeat *cmd*: it answers that request, and crdtctl names it."""
    arguments = COMMANDS[cmd].arguments
    if unexpected := sorted(set(args) - {argument.name for argument in arguments}):
        raise InvalidArgument(f"unexpected argument(s) {', '.join(unexpected)}")
    checked: dict[str, Any] = {}
    for argument in arguments:
        if argument.name in args:
            checked[argument.name] = argument.check(args[argument.name])
        elif argument.required:
            raise InvalidArgument(f"missing argument {argument.name}")
    return checked


def _is_request_id(value: object) -> bool:
    if isinstance(value, bool):
        return False
    if isinstance(value, int):
        return INT64_MIN <= value <= INT64_MAX
    return isinstance(value, str) and 1 <= len(value) <= REQUEST_ID_CHARS_MAX


def _describe(value: object) -> str:
    """A JSON-flavoured description of a value for error messages."""
    kind = {
        bool: "boolean",
        int: "number",
        float: "number",
        str: "string",
        list: "array",
        dict: "object",
        type(None): "null",
    }.get(type(value), type(value).__name__)
    text = json.dumps(value) if kind in ("boolean", "number", "string", "null") else ""
    if len(text) > 40:
        text = text[:37] + "..."
    return f"{kind} {text}".rstrip()


_ENCODER = json.JSONEncoder(separators=(",", ":"), allow_nan=False)
"""Made once: `json.dumps` with options builds an encoder per call."""


def _dumps(message: dict[str, Any]) -> bytes:
    return _ENCODER.encode(message).encode() + b"\n"


def encode_request(request_id: RequestId, cmd: str, args: Mapping[str, object]) -> bytes:
    """One request line; raises `InvalidArgument` or ``KeyError`` on our own misuse."""
    assert _is_request_id(request_id), request_id
    line = _dumps({"v": VERSION, "id": request_id, "cmd": cmd, "args": validate_args(cmd, args)})
    assert len(line) - 1 <= REQUEST_BYTES_MAX, "arguments are bounded far below the limit"
    return line


_INTEGER = rb"-?(?:0|[1-9][0-9]{0,18})"
_ADD_LINE = re.compile(
    rb'\{"v": ?1, ?"id": ?(' + _INTEGER + rb'), ?"cmd": ?"add", ?"args": ?\{'
    rb'"variable": ?"([A-Za-z0-9_.-]{1,64})", ?"delta": ?(' + _INTEGER + rb")"
    rb'(?:, ?"request_id": ?"([A-Za-z0-9_.:-]{1,64})")?\}\}\Z'
)
"""An ``add`` as `encode_request` writes it (crdtctl, crdtd.client), or as JSON
libraries write it by default (a space after ``:`` and ``,``), with the fields in
that order, an integer id and a plain request id: the hot path, read without
json.loads. Anything else, however valid, takes the general path; both give the same
`Request` (tests/control/test_protocol.py checks them against each other)."""


def decode_request(line: bytes) -> Request:
    """Turn one request line into a `Request`, or raise `Rejected` saying what to answer."""
    add = _ADD_LINE.match(line)
    if add is not None:
        request_id, delta = int(add[1]), int(add[3])
        if INT64_MIN <= request_id <= INT64_MAX and INT64_MIN <= delta <= INT64_MAX:
            args: dict[str, Any] = {"variable": add[2].decode(), "delta": delta}
            if add[4] is not None:
                args["request_id"] = add[4].decode()
            return Request(request_id, "add", args)
    return _decode_request(line)


def _decode_request(line: bytes) -> Request:
    try:
        message = json.loads(line.decode("utf-8"))
    except UnicodeDecodeError:
        raise Rejected(None, ErrorCode.BAD_REQUEST, "request is not UTF-8") from None
    except (ValueError, RecursionError) as error:
        # RecursionError: deeply nested arrays fit in 64 KiB.
        raise Rejected(None, ErrorCode.BAD_REQUEST, f"request is not JSON: {error}") from None
    if not isinstance(message, dict):
        raise Rejected(
            None,
            ErrorCode.BAD_REQUEST,
            f"request must be a JSON object, got {_describe(message)}",
        )
    if "id" not in message:
        raise Rejected(None, ErrorCode.BAD_REQUEST, "request has no id")
    request_id = message["id"]
    if not _is_request_id(request_id):
        raise Rejected(
            None,
            ErrorCode.BAD_REQUEST,
            f"id: expected a 64-bit integer or 1-{REQUEST_ID_CHARS_MAX} characters, "
            f"got {_describe(request_id)}",
        )
    version = message.get("v")
    if isinstance(version, bool) or not isinstance(version, int):
        raise Rejected(
            request_id,
            ErrorCode.BAD_REQUEST,
            f"v: expected the protocol version {VERSION}, got {_describe(version)}",
        )
    if version != VERSION:
        raise Rejected(
            request_id,
            ErrorCode.UNSUPPORTED_VERSION,
            f"protocol version {version} is not supported; this crdtd speaks {VERSION}",
        )
    if unexpected := sorted(set(message) - _FIELDS):
        raise Rejected(
            request_id,
            ErrorCode.BAD_REQUEST,
            f"unexpected field(s) {', '.join(unexpected)}",
        )
    cmd = message.get("cmd")
    if not isinstance(cmd, str) or cmd not in COMMANDS:
        raise Rejected(
            request_id,
            ErrorCode.BAD_REQUEST,
            f"cmd: expected one of {', '.join(COMMANDS)}, got {_describe(cmd)}",
        )
    args = message.get("args", {})
    if not isinstance(args, dict):
        raise Rejected(
            request_id,
            ErrorCode.BAD_REQUEST,
            f"args: expected an object, got {_describe(args)}",
        )
    try:
        checked = validate_args(cmd, args)
    except InvalidArgument as error:
        raise Rejected(request_id, ErrorCode.BAD_REQUEST, str(error)) from None
    return Request(request_id, cmd, checked)


def encode_response(request_id: RequestId, data: dict[str, Any]) -> bytes:
    """One success line; raises ``TypeError``/``ValueError`` if *data* is not JSON."""
    if not isinstance(data, dict):
        raise TypeError(f"response data must be a dict, got {type(data).__name__}")
    return _dumps({"v": VERSION, "id": request_id, "ok": True, "data": data})


_ADD_ANSWER = (
    '{"v":%d,"id":%s,"ok":true,"data":{"variable":"%s","node_id":"%s",'
    '"incarnation":%d,"nonce":%d,"value":%d}}\n'
)
_PLAIN = re.compile(r"[A-Za-z0-9_.-]*\Z")  # the characters of names: none needs escaping
_ADD_KEYS = ("variable", "node_id", "incarnation", "nonce", "value")


def encode_add_response(request_id: RequestId, data: dict[str, Any]) -> bytes:
    """`encode_response` of an add's answer, the same bytes, from a format string: the
    JSON encoder was a tenth of a pipelined daemon's CPU (bench/profile_add.py at 1 x
    256: ``iterencode`` 12% own). Anything but an add's plain names and integers goes
    the general way."""
    if tuple(data) == _ADD_KEYS:
        variable, node_id, incarnation, nonce, value = data.values()
        if (
            type(variable) is str
            and type(node_id) is str
            and type(incarnation) is int
            and type(nonce) is int
            and type(value) is int
            and _PLAIN.match(variable)
            and _PLAIN.match(node_id)
        ):
            quoted = str(request_id) if type(request_id) is int else _ENCODER.encode(request_id)
            numbers = (incarnation, nonce, value)
            return (_ADD_ANSWER % (VERSION, quoted, variable, node_id, *numbers)).encode()
    return encode_response(request_id, data)


def encode_error(request_id: RequestId | None, code: str, message: str) -> bytes:
    assert code in ErrorCode.__members__.values(), code
    error = {"code": str(code), "message": message}
    return _dumps({"v": VERSION, "id": request_id, "ok": False, "error": error})


def decode_response(line: bytes) -> Response:
    """Turn one response line into a `Response`; a malformed line raises `ControlError`
    with code ``internal`` (the daemon broke the protocol, not the caller)."""
    try:
        message = json.loads(line.decode("utf-8"))
    except (ValueError, RecursionError) as error:
        raise _malformed(f"not JSON: {error}") from None
    if not isinstance(message, dict):
        raise _malformed(f"expected an object, got {_describe(message)}")
    version = message.get("v")
    if version != VERSION:
        raise ControlError(
            ErrorCode.UNSUPPORTED_VERSION,
            f"crdtd answered with protocol version {version!r}; this client speaks {VERSION}",
        )
    request_id = message.get("id")
    if request_id is not None and not _is_request_id(request_id):
        raise _malformed(f"bad id {_describe(request_id)}")
    ok = message.get("ok")
    if ok is True:
        data = message.get("data")
        if not isinstance(data, dict):
            raise _malformed(f"data: expected an object, got {_describe(data)}")
        return Response(request_id, data=data)
    if ok is False:
        failure = message.get("error")
        if not (
            isinstance(failure, dict)
            and isinstance(failure.get("code"), str)
            and isinstance(failure.get("message"), str)
        ):
            raise _malformed("error: expected {code, message} strings")
        return Response(request_id, error=ControlError(failure["code"], failure["message"]))
    raise _malformed(f"ok: expected true or false, got {_describe(ok)}")


def _malformed(why: str) -> ControlError:
    return ControlError(ErrorCode.INTERNAL, f"malformed response from crdtd: {why}")
