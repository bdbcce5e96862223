"""The wire format: versioned, compact, binary; at most 1400 bytes a datagram.

Layout (big-endian)::

    magic "cR" | version u8 | type u8 | flags u8 | sender: name, incarnation u64 |
    seq u64 | body | [key_id: name | HMAC-SHA256 over everything before it (32 bytes)]

A *name* is a u8 length and that many ASCII bytes matching the node-id/variable rules.
Integers that can exceed 64 bits (base totals: sums of many 64-bit deltas) are a u8
length and a signed big-endian integer.

Rules:
- ``decode`` validates every field before anything reaches the node and raises only
  `MalformedDatagram` (with a counter name as ``reason``); the node drops and counts.
- ``encode_*`` assert the bound ``decode`` checks: no datagram exceeds 1400 bytes.
- Nonces, bases' ``upto`` and watermarks are at most `NONCE_MAX`; a PeerList names its
  peers by IPv4 literal only (never a host name, which would mean a DNS lookup, and
  never a multicast, broadcast or unspecified address).
- With keys configured, the first key signs and any listed key verifies; a datagram
  without a valid MAC is rejected. Without keys, a signed datagram is rejected too: a
  node that cannot check a cluster's MAC is not part of that cluster.
"""

from __future__ import annotations

import hmac
import itertools
from collections.abc import Sequence

from crdtd.core.decoding import _DECODERS, decode
from crdtd.core.ids import Origin
from crdtd.core.layout import (
    _OP,
    _PREFIX,
    _SYNC_TYPES,
    _U8,
    _U16,
    _U64,
    _U64X2,
    BASE_BYTES,
    DIGEST_BYTES,
    FLAG_MAC,
    MAC_BYTES,
    MAGIC,
    MODES,
    OP_BYTES,
    OPS_HASH_BYTES,
    T_ANNOUNCE,
    T_BASES,
    T_DIGEST_REPLY,
    T_DIGEST_REQUEST,
    T_GRAVES,
    T_NACK,
    T_OPS,
    T_PEERS,
    T_SUMMARY,
    T_SUMMARY_REQUEST,
    T_SYNC_ABORT,
    T_SYNC_START,
    TOTAL_PER_OP_MAX,
    VERSION,
    MalformedDatagram,
    SyncMessage,
    _barrier,
    _bigint,
    _name,
    _ops_struct,
    _origin,
)
from crdtd.core.messages import (
    BarrierId,
    BaseEntry,
    Grave,
    NackRange,
    OpGroup,
    VariableDigest,
    VariableReport,
)
from crdtd.core.modes import Mode
from crdtd.core.settings import DATAGRAM_BYTES_MAX, Key

__all__ = [
    "BASE_BYTES",
    "FLAG_MAC",
    "MODES",
    "OP_BYTES",
    "TOTAL_PER_OP_MAX",
    "T_ANNOUNCE",
    "T_BASES",
    "T_GRAVES",
    "T_NACK",
    "T_OPS",
    "T_SUMMARY",
    "T_SUMMARY_REQUEST",
    "T_SYNC_ABORT",
    "T_SYNC_START",
    "VERSION",
    "_DECODERS",
    "_SYNC_TYPES",
    "Encoder",
    "MalformedDatagram",
    "SyncMessage",
    "decode",
]
"""The wire format's one door: building here, reading in `crdtd.core.decoding`, the
layout in `crdtd.core.layout`."""


class Encoder:
    """Turns messages from one sender into signed datagrams of at most 1400 bytes."""

    def __init__(self, sender: Origin, keys: Sequence[Key] = (), seq_start: int = 0) -> None:
        self._sender = _origin(sender)
        self._key = keys[0] if keys else None
        trailer = len(_name(self._key.key_id)) + MAC_BYTES if self._key else 0
        self.seq = seq_start
        self.body_bytes_max = (
            DATAGRAM_BYTES_MAX - _PREFIX.size - len(self._sender) - _U64.size - trailer
        )

    def _frame(self, kind: int, body: bytes) -> bytes:
        self.seq += 1
        flags = FLAG_MAC if self._key else 0
        head = _PREFIX.pack(MAGIC, VERSION, kind, flags) + self._sender + _U64.pack(self.seq)
        data = head + body
        if self._key is not None:
            data += _name(self._key.key_id)
            data += hmac.digest(self._key.secret, data, "sha256")
        assert len(data) <= DATAGRAM_BYTES_MAX, len(data)
        return data

    def _pack(self, kind: int, prefix: bytes, items: Sequence[bytes]) -> list[bytes]:
        """Greedily pack counted *items* behind *prefix*; an empty list still sends one."""
        budget = self.body_bytes_max - len(prefix) - _U16.size
        return [
            self._frame(kind, prefix + _U16.pack(len(chunk)) + b"".join(chunk))
            for chunk in _chunks(items, budget)
        ]

    def op_batch(self, groups: Sequence[OpGroup]) -> list[bytes]:
        budget = self.body_bytes_max - 2 * _U16.size
        items: list[bytes] = []
        for group in groups:
            head = _name(group.variable) + _origin(group.origin)
            per = (budget - len(head)) // _OP.size
            ops = group.ops
            for start in range(0, max(len(ops), 1), per):
                part = ops[start : start + per]
                flat = itertools.chain.from_iterable(part)
                items.append(head + _U16.pack(len(part)) + _ops_struct(len(part)).pack(*flat))
        return self._pack(T_OPS, b"", items)

    def bases(self, entries: Sequence[BaseEntry]) -> list[bytes]:
        items = [
            _name(e.variable) + _origin(e.origin) + _U64.pack(e.upto) + _bigint(e.total)
            for e in entries
        ]
        return self._pack(T_BASES, b"", items)

    def graves(self, graves: Sequence[Grave]) -> list[bytes]:
        """A grave too large for one datagram is split by origins: each part is a grave
        of its own, and graves join (`crdtd.core.counters.Counter.bury`)."""
        budget = self.body_bytes_max - 2 * _U16.size
        items: list[bytes] = []
        for grave in graves:
            marks = [
                _origin(origin) + _U64.pack(upto) + _bigint(total)
                for origin, upto, total in grave.marks
            ]
            items += _split(_name(grave.variable), marks, budget)
        return self._pack(T_GRAVES, b"", items)

    def nack(self, ranges: Sequence[NackRange]) -> list[bytes]:
        items = [
            _name(r.variable) + _origin(r.origin) + _U64X2.pack(r.first, r.last) for r in ranges
        ]
        return self._pack(T_NACK, b"", items)

    def announce(
        self, mode: Mode, epoch: int, barrier: BarrierId | None, digests: Sequence[VariableDigest]
    ) -> list[bytes]:
        prefix = _U8.pack(MODES.index(mode)) + _U64.pack(epoch)
        prefix += _U8.pack(1) + _barrier(barrier) if barrier else _U8.pack(0)
        budget = self.body_bytes_max - len(prefix) - 2 * _U16.size
        items: list[bytes] = []
        for digest in digests:
            marks = [_origin(origin) + _U64.pack(mark) for origin, mark in digest.marks]
            items += _split(_name(digest.variable), marks, budget)
        return self._pack(T_ANNOUNCE, prefix, items)

    def summary(
        self, mode: Mode, epoch: int, barrier: BarrierId | None, count: int, digest: bytes
    ) -> bytes:
        assert len(digest) == DIGEST_BYTES
        body = _U8.pack(MODES.index(mode)) + _U64.pack(epoch)
        body += _U8.pack(1) + _barrier(barrier) if barrier else _U8.pack(0)
        return self._frame(T_SUMMARY, body + _U64.pack(count) + digest)

    def summary_request(self) -> bytes:
        return self._frame(T_SUMMARY_REQUEST, b"")

    def peer_list(self, peers: Sequence[tuple[str, str, int, bool]]) -> list[bytes]:
        items = [
            _name(node_id) + _name(host) + _U16.pack(port) + _U8.pack(heard)
            for node_id, host, port, heard in peers
        ]
        return self._pack(T_PEERS, b"", items)

    def digest_request(self, token: int) -> bytes:
        return self._frame(T_DIGEST_REQUEST, _U64.pack(token))

    def digest_reply(self, token: int, reports: Sequence[VariableReport]) -> list[bytes]:
        """Pages carry (index, count), so the asker knows when it has the whole reply."""
        header = _U64.size + 2 * _U16.size
        budget = self.body_bytes_max - header - 2 * _U16.size
        items: list[bytes] = []
        for report in reports:
            assert len(report.ops_hash) == OPS_HASH_BYTES
            head = _name(report.variable) + _bigint(report.value) + report.ops_hash
            part: list[bytes] = []
            size = len(head)
            for origin, mark in report.marks:
                entry = _origin(origin) + _U64.pack(mark)
                if part and size + len(entry) > budget:
                    items.append(head + _U16.pack(len(part)) + b"".join(part))
                    part, size = [], len(head)
                part.append(entry)
                size += len(entry)
            items.append(head + _U16.pack(len(part)) + b"".join(part))
        chunks = _chunks(items, budget + _U16.size)
        return [
            self._frame(
                T_DIGEST_REPLY,
                _U64.pack(token)
                + _U16.pack(index)
                + _U16.pack(len(chunks))
                + _U16.pack(len(chunk))
                + b"".join(chunk),
            )
            for index, chunk in enumerate(chunks)
        ]

    def sync(self, message: SyncMessage) -> bytes:
        """Encode one of the small, fixed-size barrier messages."""
        kind = _SYNC_TYPES[type(message)]
        body = _barrier(message.barrier)
        digest = getattr(message, "digest", None)
        if digest is not None:
            assert len(digest) == DIGEST_BYTES
            body += digest
        return self._frame(kind, body)


def _split(head: bytes, marks: Sequence[bytes], budget: int) -> list[bytes]:
    """Items ``head | u16 count | marks``, as many as it takes for each to fit *budget*
    (at least one, also with no marks): one variable's marks over several datagrams."""
    items: list[bytes] = []
    part: list[bytes] = []
    size = len(head)
    for mark in marks:
        if part and size + len(mark) > budget:
            items.append(head + _U16.pack(len(part)) + b"".join(part))
            part, size = [], len(head)
        part.append(mark)
        size += len(mark)
    items.append(head + _U16.pack(len(part)) + b"".join(part))
    return items


def _chunks(items: Sequence[bytes], budget: int) -> list[list[bytes]]:
    """Split *items* into runs that each fit *budget* bytes; always at least one run."""
    chunks: list[list[bytes]] = [[]]
    size = 0
    for item in items:
        assert len(item) <= budget, "item larger than a datagram"
        if chunks[-1] and size + len(item) > budget:
            chunks.append([])
            size = 0
        chunks[-1].append(item)
        size += len(item)
    return chunks
