from __future__ import annotations

import json
from collections.abc import Callable

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from crdtd.control import protocol
from crdtd.control.protocol import (
    COMMANDS,
    READS,
    REQUEST_BYTES_MAX,
    WRITES,
    ControlError,
    ErrorCode,
    InvalidArgument,
    LineBuffer,
    LineTooLong,
    Rejected,
    Request,
    check_timeout,
    decode_request,
    decode_response,
    encode_add_response,
    encode_error,
    encode_request,
    encode_response,
    parse_count,
    parse_delta,
    parse_timeout,
)


def line(message: object) -> bytes:
    return json.dumps(message).encode()


def request(cmd: str, args: object = None, **fields: object) -> bytes:
    message: dict[str, object] = {"v": 1, "id": 7, "cmd": cmd}
    if args is not None:
        message["args"] = args
    message.update(fields)
    return line(message)


def rejection(raw: bytes) -> Rejected:
    with pytest.raises(Rejected) as caught:
        decode_request(raw)
    return caught.value


# Round trips


@pytest.mark.parametrize(
    ("cmd", "args"),
    [
        ("create", {"variable": "x"}),
        ("delete", {"variable": "x"}),
        ("variables", {}),
        ("get", {"variable": "a.B-c_9"}),
        ("history", {"variable": "x"}),
        ("before", {"variable": "x"}),
        ("add", {"variable": "x", "delta": -(2**63)}),
        ("add", {"variable": "x", "delta": 2**63 - 1, "request_id": "r" * 64}),
        ("populate", {"variable": "x", "count": 1_000_000}),
        ("sync", {}),
        ("peers", {}),
        ("status", {}),
        ("keys", {}),
        ("verify", {}),
        ("stats", {}),
        ("net-test", {}),
        ("watch", {"variable": "x" * 64}),
        ("ping", {}),
    ],
)
def test_every_command_round_trips(cmd: str, args: dict[str, object]) -> None:
    for request_id in (0, -5, 2**63 - 1, "a", "x" * 64):
        encoded = encode_request(request_id, cmd, args)
        assert encoded.endswith(b"\n") and encoded.count(b"\n") == 1
        assert decode_request(encoded.rstrip(b"\n")) == Request(request_id, cmd, args)


def test_every_command_is_covered_by_the_round_trip() -> None:
    assert set(COMMANDS) == {
        "create", "delete", "variables", "get", "history", "before", "add",
        "populate", "sync", "peers", "status", "keys", "verify", "stats", "net-test",
        "watch", "ping",
    }  # fmt: skip


def test_args_may_be_left_out_when_a_command_takes_none() -> None:
    assert decode_request(request("status")) == Request(7, "status", {})


def test_responses_round_trip() -> None:
    ok = decode_response(encode_response("a", {"value": 5}).rstrip(b"\n"))
    assert (ok.id, ok.data, ok.error) == ("a", {"value": 5}, None)
    failed = decode_response(encode_error(3, ErrorCode.NOT_FOUND, "no x"))
    assert failed.id == 3 and failed.data is None
    assert failed.error is not None
    assert (failed.error.code, failed.error.message) == ("not_found", "no x")
    anonymous = decode_response(encode_error(None, ErrorCode.BUSY, "full"))
    assert anonymous.id is None


def test_a_response_is_one_line_of_json() -> None:
    encoded = encode_response(1, {"text": "two\nlines"})
    assert encoded.count(b"\n") == 1
    assert json.loads(encoded) == {"v": 1, "id": 1, "ok": True, "data": {"text": "two\nlines"}}


def test_encode_response_refuses_data_that_is_not_an_object_or_json() -> None:
    with pytest.raises(TypeError):
        encode_response(1, [1, 2])  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        encode_response(1, {"value": object()})
    with pytest.raises(ValueError):
        encode_response(1, {"value": float("nan")})


def test_encode_request_refuses_our_own_bad_arguments() -> None:
    with pytest.raises(InvalidArgument):
        encode_request(1, "add", {"variable": "x", "delta": "5"})


# Bad requests: each gets a specific code, and the id when it could be read


@pytest.mark.parametrize(
    ("raw", "code", "echoed_id", "words"),
    [
        (b"not json", "bad_request", None, "not JSON"),
        (b"\xff\xfe", "bad_request", None, "not UTF-8"),
        (b"", "bad_request", None, "not JSON"),
        (b"[" * 60_000, "bad_request", None, "not JSON"),
        (b"1" * 5000, "bad_request", None, "not JSON"),
        (line([1, 2]), "bad_request", None, "JSON object, got array"),
        (line("ping"), "bad_request", None, "JSON object, got string"),
        (line({"v": 1, "cmd": "ping"}), "bad_request", None, "no id"),
        (line({"v": 1, "id": True, "cmd": "ping"}), "bad_request", None, "id"),
        (line({"v": 1, "id": 1.5, "cmd": "ping"}), "bad_request", None, "id"),
        (line({"v": 1, "id": "", "cmd": "ping"}), "bad_request", None, "id"),
        (line({"v": 1, "id": "x" * 65, "cmd": "ping"}), "bad_request", None, "id"),
        (line({"v": 1, "id": 2**63, "cmd": "ping"}), "bad_request", None, "id"),
        (line({"v": 1, "id": None, "cmd": "ping"}), "bad_request", None, "id"),
        (line({"id": 7, "cmd": "ping"}), "bad_request", 7, "v:"),
        (line({"v": "1", "id": 7, "cmd": "ping"}), "bad_request", 7, "v:"),
        (line({"v": True, "id": 7, "cmd": "ping"}), "bad_request", 7, "v:"),
        (line({"v": 2, "id": 7, "cmd": "ping"}), "unsupported_version", 7, "version 2"),
        (line({"v": 0, "id": 7, "cmd": "ping"}), "unsupported_version", 7, "version 0"),
        (request("ping", extra=1), "bad_request", 7, "unexpected field(s) extra"),
        (line({"v": 1, "id": 7}), "bad_request", 7, "cmd:"),
        (request("launch"), "bad_request", 7, "cmd:"),
        (line({"v": 1, "id": 7, "cmd": 5}), "bad_request", 7, "cmd:"),
        (request("ping", []), "bad_request", 7, "args: expected an object"),
        (request("ping", {"x": 1}), "bad_request", 7, "unexpected argument(s) x"),
        (request("get", {}), "bad_request", 7, "missing argument variable"),
        (request("get", {"variable": ""}), "bad_request", 7, "variable: expected 1-64"),
        (request("get", {"variable": "x" * 65}), "bad_request", 7, "variable"),
        (request("get", {"variable": "a b"}), "bad_request", 7, "variable"),
        (request("get", {"variable": "x/y"}), "bad_request", 7, "variable"),
        (request("get", {"variable": "x\n"}), "bad_request", 7, "variable"),
        (request("get", {"variable": 5}), "bad_request", 7, "expected a string, got number 5"),
        (request("add", {"variable": "x"}), "bad_request", 7, "missing argument delta"),
        (request("add", {"variable": "x", "delta": "5"}), "bad_request", 7, "got string"),
        (request("add", {"variable": "x", "delta": 5.0}), "bad_request", 7, "got number 5.0"),
        (request("add", {"variable": "x", "delta": True}), "bad_request", 7, "got boolean"),
        (request("add", {"variable": "x", "delta": None}), "bad_request", 7, "got null"),
        (request("add", {"variable": "x", "delta": 2**63}), "bad_request", 7, "64-bit"),
        (request("add", {"variable": "x", "delta": -(2**63) - 1}), "bad_request", 7, "64-bit"),
        (
            request("add", {"variable": "x", "delta": 1, "request_id": ""}),
            "bad_request",
            7,
            "request_id",
        ),
        (
            request("add", {"variable": "x", "delta": 1, "request_id": "r" * 65}),
            "bad_request",
            7,
            "request_id",
        ),
        (
            request("add", {"variable": "x", "delta": 1, "request_id": 5}),
            "bad_request",
            7,
            "request_id",
        ),
        (request("populate", {"variable": "x"}), "bad_request", 7, "missing argument count"),
        (request("populate", {"variable": "x", "count": 0}), "bad_request", 7, "count"),
        (request("populate", {"variable": "x", "count": 1_000_001}), "bad_request", 7, "count"),
        (request("populate", {"variable": "x", "count": 10.0}), "bad_request", 7, "count"),
        (request("populate", {"variable": "x", "count": False}), "bad_request", 7, "count"),
        (request("watch", {"variable": None}), "bad_request", 7, "variable"),
    ],
)
def test_a_bad_request_is_rejected_with_a_specific_code(
    raw: bytes, code: str, echoed_id: object, words: str
) -> None:
    rejected = rejection(raw)
    assert rejected.code == code
    assert rejected.request_id == echoed_id
    assert words in rejected.message
    answer = json.loads(encode_error(rejected.request_id, rejected.code, rejected.message))
    assert answer == {
        "v": 1,
        "id": echoed_id,
        "ok": False,
        "error": {"code": code, "message": rejected.message},
    }


def test_a_rejection_message_names_the_argument_not_the_command() -> None:
    """The answer is to one request, which names its command; crdtctl prints that name
    before the message, so the message repeating it read "add: add: ..."."""
    assert rejection(request("add", {"variable": "x", "delta": "5"})).message == (
        'delta: expected an integer, got string "5"'
    )


# Responses the client cannot trust


@pytest.mark.parametrize(
    "raw",
    [
        b"nonsense",
        line([]),
        line({"v": 1, "id": 1, "ok": "yes"}),
        line({"v": 1, "id": 1, "ok": True}),
        line({"v": 1, "id": 1, "ok": True, "data": []}),
        line({"v": 1, "id": 1, "ok": False}),
        line({"v": 1, "id": 1, "ok": False, "error": {"code": 1, "message": "m"}}),
        line({"v": 1, "id": [], "ok": True, "data": {}}),
    ],
)
def test_a_malformed_response_is_an_internal_error(raw: bytes) -> None:
    with pytest.raises(ControlError) as caught:
        decode_response(raw)
    assert caught.value.code == "internal"
    assert "malformed response" in caught.value.message


def test_a_response_of_another_version_is_unsupported() -> None:
    with pytest.raises(ControlError) as caught:
        decode_response(line({"v": 2, "id": 1, "ok": True, "data": {}}))
    assert caught.value.code == "unsupported_version"


# Framing


def test_line_buffer_joins_pieces_and_splits_lines() -> None:
    lines = LineBuffer(100)
    lines.feed(b'{"a"')
    assert lines.next_line() is None
    lines.feed(b":1}\n{}\n{")
    assert lines.next_line() == b'{"a":1}'
    assert lines.next_line() == b"{}"
    assert lines.next_line() is None
    lines.feed(b"}\n")
    assert lines.next_line() == b"{}"


def test_line_buffer_accepts_a_line_exactly_at_the_limit() -> None:
    lines = LineBuffer(REQUEST_BYTES_MAX)
    lines.feed(b"x" * REQUEST_BYTES_MAX + b"\n")
    assert lines.next_line() == b"x" * REQUEST_BYTES_MAX


def test_line_buffer_refuses_a_long_line_before_its_newline_arrives() -> None:
    lines = LineBuffer(REQUEST_BYTES_MAX)
    lines.feed(b"x" * REQUEST_BYTES_MAX)
    assert lines.next_line() is None
    lines.feed(b"x")
    with pytest.raises(LineTooLong):
        lines.next_line()


def test_line_buffer_refuses_a_long_line_that_arrived_whole() -> None:
    lines = LineBuffer(10)
    lines.feed(b"x" * 11 + b"\n")
    with pytest.raises(LineTooLong):
        lines.next_line()


# Values typed by people


@pytest.mark.parametrize(("text", "value"), [("5", 5), ("+5", 5), ("-3", -3), ("0", 0)])
def test_parse_delta_reads_signed_integers(text: str, value: int) -> None:
    assert parse_delta(text) == value


@pytest.mark.parametrize("text", ["5.0", "0x5", "", "five", "1e3", str(2**63), " 5"])
def test_parse_delta_refuses_anything_else(text: str) -> None:
    with pytest.raises(InvalidArgument, match="delta"):
        parse_delta(text)


@pytest.mark.parametrize("text", ["0", "-1", "1000001", "ten", "1.5"])
def test_parse_count_refuses_out_of_range_or_non_integers(text: str) -> None:
    with pytest.raises(InvalidArgument, match="count"):
        parse_count(text)


@pytest.mark.parametrize("text", ["0", "-1", "nan", "inf", "soon", "86401"])
def test_parse_timeout_refuses_non_positive_or_non_numbers(text: str) -> None:
    with pytest.raises(InvalidArgument, match="timeout"):
        parse_timeout(text)


def test_timeouts_are_positive_numbers_but_not_booleans() -> None:
    assert parse_timeout("0.25") == 0.25
    assert check_timeout(3) == 3.0
    with pytest.raises(InvalidArgument):
        check_timeout(True)


def test_every_command_is_either_a_read_or_a_write() -> None:
    """The read-only socket serves only READS: a new command must be classified here."""
    assert set(COMMANDS) == READS | WRITES
    assert not READS & WRITES


@given(
    st.one_of(st.integers(-(2**64), 2**64), st.text(min_size=1, max_size=3)),
    st.one_of(st.from_regex(r"[A-Za-z0-9_.-]{1,66}", fullmatch=True), st.text(max_size=3)),
    st.one_of(st.integers(-(2**64), 2**64), st.booleans()),
    st.one_of(st.none(), st.from_regex(r"[A-Za-z0-9_.:-]{1,66}", fullmatch=True), st.text()),
    st.sampled_from([(",", ":"), (", ", ": "), (",", ": "), (",  ", ":")]),
)
@settings(max_examples=300, deadline=None)
def test_the_add_fast_path_reads_every_line_as_the_general_path_does(
    request_id: object,
    variable: object,
    delta: object,
    named: object,
    separators: tuple[str, str],
) -> None:
    """Compact or with json.dumps's default separators, the fast path reads a line as
    json.loads does; two spaces take the general path, with the same outcome."""
    args = {"variable": variable, "delta": delta}
    if named is not None:
        args["request_id"] = named
    line = json.dumps(
        {"v": 1, "id": request_id, "cmd": "add", "args": args}, separators=separators
    ).encode()

    def outcome(decode: Callable[[bytes], Request]) -> object:
        try:
            return decode(line)
        except Rejected as rejected:
            return (rejected.request_id, rejected.code, rejected.message)

    assert outcome(decode_request) == outcome(protocol._decode_request)


_NAMES = st.from_regex(r"[A-Za-z0-9_.-]{1,64}", fullmatch=True)


@given(
    request_id=st.one_of(st.integers(-(2**63), 2**63 - 1), st.text(min_size=1, max_size=8)),
    data=st.fixed_dictionaries(
        {
            "variable": st.one_of(_NAMES, st.text(max_size=8)),
            "node_id": _NAMES,
            "incarnation": st.integers(0, 2**64),
            "nonce": st.one_of(st.integers(0, 2**64), st.booleans()),
            "value": st.integers(-(2**80), 2**80),
        }
    ),
)
@settings(max_examples=300, deadline=None)
def test_an_add_answer_is_the_same_bytes_by_the_fast_way(
    request_id: int | str, data: dict[str, object]
) -> None:
    """Strings that need escaping and booleans go the general way; the rest by the
    format string, byte for byte what `encode_response` writes."""
    assert encode_add_response(request_id, data) == encode_response(request_id, data)
    other = {"value": 1}
    assert encode_add_response(request_id, other) == encode_response(request_id, other)
