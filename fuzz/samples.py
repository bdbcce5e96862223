"""The seed corpus: real datagrams of every message kind, made by the encoder, and real
control request lines, made by the request encoder. ``fuzz/corpus`` holds their bytes;
``python -m fuzz.samples`` writes them again (after the wire format changes)."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

from crdtd.control.protocol import COMMANDS, encode_request
from crdtd.core import wire
from crdtd.core.ids import INT64_MAX, INT64_MIN, Origin
from crdtd.core.messages import (
    BarrierId,
    BaseEntry,
    Grave,
    NackRange,
    OpGroup,
    SyncAbort,
    SyncCommit,
    SyncDone,
    SyncJoin,
    SyncReady,
    SyncReadyAck,
    SyncStart,
    VariableDigest,
    VariableReport,
)
from crdtd.core.modes import Mode
from fuzz.targets import KEYS

CORPUS = Path(__file__).resolve().parent / "corpus"
A = Origin("node-a", 1_717_000_000_000)
B = Origin("b", 2)
BARRIER = BarrierId(7, "node-a", 3)
DIGEST = bytes(range(16))


def datagrams() -> Iterator[tuple[str, bytes]]:
    """``(name, datagram)`` for every kind of message, unsigned and signed."""
    for signed, keys in (("plain", ()), ("signed", KEYS[:1]), ("signed-2nd", KEYS[1:])):
        encoder = wire.Encoder(A, keys, seq_start=41)
        yield from _kinds(encoder, signed)


def _kinds(e: wire.Encoder, suffix: str) -> Iterator[tuple[str, bytes]]:
    def one(name: str, payloads: list[bytes]) -> tuple[str, bytes]:
        return f"{name}-{suffix}", payloads[0]

    yield one("ops", e.op_batch([OpGroup("x", A, ((1, 5), (2, -3), (9, INT64_MAX)))]))
    yield one(
        "ops-two-groups",
        e.op_batch([OpGroup("x", B, ((3, 1),)), OpGroup("y.total", A, ((1, INT64_MIN),))]),
    )
    yield one("ops-empty-group", e.op_batch([OpGroup("fresh", A, ())]))
    yield one("bases", e.bases([BaseEntry("x", A, 12, 12 * 2**63), BaseEntry("y", B, 1, -7)]))
    yield one("nack", e.nack([NackRange("x", B, 1, 4), NackRange("x", A, 9, 9)]))
    yield one("graves", e.graves([Grave("x", ((A, 9, -3), (B, 2, 2**63))), Grave("gone", ())]))
    digests = [VariableDigest("x", ((A, 9), (B, 3))), VariableDigest("y", ())]
    yield one("announce", e.announce(Mode.WORK, 0, None, digests))
    yield one("announce-in-barrier", e.announce(Mode.READY, 6, BARRIER, digests))
    yield one("announce-empty", e.announce(Mode.SYNC, 2, BARRIER, []))
    for message in (
        SyncStart(BARRIER),
        SyncJoin(BARRIER),
        SyncReady(BARRIER, DIGEST),
        SyncReadyAck(BARRIER, DIGEST),
        SyncCommit(BARRIER, DIGEST),
        SyncDone(BARRIER),
        SyncAbort(BARRIER),
    ):
        yield f"{type(message).__name__.lower()}-{suffix}", e.sync(message)
    yield one("peers", e.peer_list([("b", "10.0.0.2", 7778, True), ("c", "127.0.0.3", 1, False)]))
    yield f"digest-request-{suffix}", e.digest_request(2**40 + 1)
    report = VariableReport("x", -12, bytes(8), ((A, 9), (B, 3)))
    yield one("digest-reply", e.digest_reply(5, [report]))
    yield f"summary-{suffix}", e.summary(Mode.WORK, 3, None, 10_005, DIGEST)
    yield f"summary-in-barrier-{suffix}", e.summary(Mode.READY, 6, BARRIER, 2, DIGEST)
    yield f"summary-request-{suffix}", e.summary_request()


def request_lines() -> Iterator[tuple[str, bytes]]:
    """``(name, line)``: a request of every command, and a few the daemon refuses."""
    args = {
        "create": {"variable": "x"},
        "delete": {"variable": "x"},
        "get": {"variable": "a.B-c_9"},
        "history": {"variable": "x"},
        "before": {"variable": "x"},
        "add": {"variable": "x", "delta": -(2**63), "request_id": "0f3a9c5e7b21d480"},
        "populate": {"variable": "x", "count": 1000},
        "watch": {"variable": "x"},
    }
    for index, cmd in enumerate(sorted(COMMANDS)):
        request_id: int | str = index if index % 2 else f"req-{index}"
        yield cmd, encode_request(request_id, cmd, args.get(cmd, {}))
    yield (
        "pipelined",
        b"".join(encode_request(n, "get", {"variable": "x"}) for n in range(3))
        + encode_request(3, "status", {}),
    )
    yield (
        "bad-delta-string",
        b'{"v": 1, "id": 2, "cmd": "add", "args": {"variable": "x", "delta": "5"}}\n',
    )
    yield "bad-version", b'{"v": 2, "id": "a", "cmd": "status"}\n'
    yield "nested", b"[" * 200 + b"]" * 200 + b"\n"
    yield "not-utf8", b'{"v": 1, "id": 1, "cmd": "get", "args": {"variable": "\xff"}}\n'
    yield "unicode-escape", b'{"v": 1, "id": 1, "cmd": "get", "args": {"variable": "\\u00e9"}}\n'


def write(corpus: Path = CORPUS) -> int:
    written = 0
    for kind, items in (("decoder", datagrams()), ("control", request_lines())):
        directory = corpus / kind
        directory.mkdir(parents=True, exist_ok=True)
        for name, data in items:
            (directory / name).write_bytes(data)
            written += 1
    return written


if __name__ == "__main__":
    print(f"wrote {write()} files under {CORPUS}", file=sys.stderr)
