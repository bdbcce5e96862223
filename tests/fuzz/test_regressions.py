"""Inputs the fuzz checks must keep passing: the tricky corners of both parsers, and every
crash a fuzzer ever found. To add a crash: put its file (``fuzz/artifacts/crash-*``, or a
``node-history-*.bin``) under ``fuzz/regressions/decoder`` or ``fuzz/regressions/control``,
fix the code, and this test keeps it fixed. (1,000,000 inputs of each fuzzer found none.)
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
from pathlib import Path

import pytest

from crdtd.control.protocol import REQUEST_BYTES_MAX
from crdtd.core import wire
from crdtd.core.ids import Origin
from crdtd.core.messages import SyncStart
from crdtd.core.settings import Key
from fuzz import targets
from fuzz.samples import BARRIER

REGRESSIONS = Path(__file__).resolve().parents[2] / "fuzz" / "regressions"


def files(kind: str) -> list[Path]:
    directory = REGRESSIONS / kind
    return sorted(directory.iterdir()) if directory.is_dir() else []


def sync_start(keys: tuple[Key, ...]) -> bytes:
    return wire.Encoder(Origin("b", 1), keys, seq_start=5).sync(SyncStart(BARRIER))


def with_trailer(body: bytes, key_id: bytes, secret: bytes) -> bytes:
    head = body + bytes([len(key_id)]) + key_id
    return head + hmac.new(secret, head, hashlib.sha256).digest()


# Two key ids where the encoding of one ends the other's: length 48 is the byte "0".
SHORT = Key("k" * 48, b"s" * 32)
LONG = Key("0" + "k" * 48, b"t" * 32)
KEYS = (SHORT, LONG)


def signed_with(key: Key) -> bytes:
    plain = sync_start(())
    return with_trailer(plain[:4] + b"\x01" + plain[5:], key.key_id.encode(), key.secret)


DATAGRAMS = {
    "key-id-tail-of-another-long": signed_with(LONG),
    "key-id-tail-of-another-short": signed_with(SHORT),
    # A MAC trailer but nothing before it: the key id would overlap the header.
    "trailer-without-body": b"cR\x01\x0a\x01" + b"\x02ba" + bytes(32),
    "header-only": b"cR\x01\x02\x00",
    "max-count-empty-body": sync_start(())[:-20] + b"\xff\xff",
    "unknown-type-signed": with_trailer(b"cR\x01\xee\x01\x01b" + bytes(16), b"ba", b"s" * 32),
    "oversized": b"cR\x01\x02\x00" + bytes(1400),
    "resigned-twice": targets.sign(targets.sign(sync_start(()))),
}


@pytest.mark.parametrize("data", list(DATAGRAMS.values()), ids=list(DATAGRAMS))
def test_tricky_datagrams(data: bytes) -> None:
    targets.check_decode(data)
    targets.LiveNodes().feed(data)
    for keys in (KEYS, KEYS[::-1], KEYS[:1], KEYS[1:]):
        with contextlib.suppress(wire.MalformedDatagram):
            wire.decode(data, keys)


@pytest.mark.parametrize("keys", [KEYS, KEYS[::-1]], ids=["short-first", "long-first"])
def test_a_key_id_that_ends_another_still_verifies_under_either(keys: tuple[Key, ...]) -> None:
    for key in KEYS:
        envelope = wire.decode(signed_with(key), keys)
        assert envelope.message == SyncStart(BARRIER)
    assert wire.decode(signed_with(LONG), (LONG,)).message == SyncStart(BARRIER)
    with pytest.raises(wire.MalformedDatagram, match="bad_mac"):
        wire.decode(signed_with(LONG), (SHORT,))


LINES = {
    "deep-nesting": b"[" * 100_000 + b"]" * 100_000,
    "huge-integer-id": b'{"v": 1, "id": ' + b"9" * 5000 + b', "cmd": "ping"}',
    "float-overflow": b'{"v": 1, "id": 1e999, "cmd": "ping"}',
    "nan": b'{"v": 1, "id": NaN, "cmd": "ping"}',
    "lone-surrogate": b'{"v": 1, "id": "\\ud800", "cmd": "get", "args": {"variable": "x"}}',
    "duplicate-fields": b'{"v": 1, "id": 1, "cmd": "get", "cmd": "status"}',
    "at-the-limit": b"x" * REQUEST_BYTES_MAX + b"\n",
    "over-the-limit": b"x" * (REQUEST_BYTES_MAX + 1) + b"\n",
}


@pytest.mark.parametrize("data", list(LINES.values()), ids=list(LINES))
def test_tricky_request_lines(data: bytes) -> None:
    targets.check_control(data)


def test_crashes_found_by_fuzzing_stay_fixed() -> None:
    for path in files("decoder"):
        if path.name.startswith("node-history-"):
            targets.replay_node_history(path.read_bytes())
        else:
            targets.check_decode(path.read_bytes())
            targets.LiveNodes().feed(path.read_bytes())
    for path in files("control"):
        targets.check_control(path.read_bytes())
