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
import ipaddress
import struct
from collections.abc import Callable, Sequence

from crdtd.core.ids import NAME_MAX, NONCE_MAX, Origin, is_name
from crdtd.core.messages import (
    Announce,
    BarrierId,
    BaseEntry,
    Bases,
    DigestReply,
    DigestRequest,
    Envelope,
    Message,
    Nack,
    NackRange,
    OpBatch,
    OpGroup,
    PeerList,
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
from crdtd.core.settings import DATAGRAM_BYTES_MAX, Key

MAGIC = b"cR"
VERSION = 1
FLAG_MAC = 0x01
MAC_BYTES = 32
DIGEST_BYTES = 16
BIGINT_BYTES_MAX = 32
TOTAL_PER_OP_MAX = 2**63
"""A base's total is at most this much per op it folds, in either direction."""
MODES = (Mode.WORK, Mode.SYNC, Mode.READY)
"""Each mode's index on the wire: append a new one, never reorder."""

T_ANNOUNCE, T_OPS, T_BASES, T_NACK = 1, 2, 3, 4
T_PEERS, T_DIGEST_REQUEST, T_DIGEST_REPLY = 5, 6, 7
OPS_HASH_BYTES = 8
T_SYNC_START, T_SYNC_JOIN, T_SYNC_READY, T_SYNC_READY_ACK = 10, 11, 12, 13
T_SYNC_COMMIT, T_SYNC_DONE, T_SYNC_ABORT = 14, 15, 16

SyncMessage = SyncStart | SyncJoin | SyncReady | SyncReadyAck | SyncCommit | SyncDone | SyncAbort

_PREFIX = struct.Struct(">2sBBB")
_U8 = struct.Struct(">B")
_U16 = struct.Struct(">H")
_U64 = struct.Struct(">Q")
_U64X2 = struct.Struct(">QQ")
_OP = struct.Struct(">Qq")
OP_BYTES = _OP.size
"""What one op costs inside an OpBatch: what a repair's byte budget counts per op."""
BASE_BYTES = 64
"""What a repair's byte budget counts per base entry: its fixed fields, a short name
and a total (an estimate on the generous side; a base stands for many ops)."""
_OPS_CACHE: dict[int, struct.Struct] = {}


class MalformedDatagram(Exception):
    """A datagram that must be dropped; ``reason`` names the counter to bump.

    ``key_id`` is the key id a signed datagram names in its trailer, when the MAC check
    refused it (``unknown_key``, ``bad_mac``, ``unexpected_mac``) and the trailer holds a
    plausible one: the operator's clue to which key file a node lacks. It is the
    sender's claim, unchecked, and is only ever reported.
    """

    def __init__(self, reason: str, detail: str = "", *, key_id: str | None = None) -> None:
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason
        self.key_id = key_id


# --- encoding ---------------------------------------------------------------------


def _name(value: str) -> bytes:
    raw = value.encode("ascii")
    return _U8.pack(len(raw)) + raw


def _bigint(value: int) -> bytes:
    # The fewest bytes that hold *value* in two's complement (-(2**255) fits in 32).
    raw = value.to_bytes((value + (value < 0)).bit_length() // 8 + 1, "big", signed=True)
    assert len(raw) <= BIGINT_BYTES_MAX, "total beyond 255 bits"
    return _U8.pack(len(raw)) + raw


def _origin(origin: Origin) -> bytes:
    return _name(origin.node_id) + _U64.pack(origin.incarnation)


def _barrier(barrier: BarrierId) -> bytes:
    return _U64.pack(barrier.epoch) + _name(barrier.initiator) + _U64.pack(barrier.serial)


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
                flat = [v for op in part for v in op]
                items.append(head + _U16.pack(len(part)) + _ops_struct(len(part)).pack(*flat))
        return self._pack(T_OPS, b"", items)

    def bases(self, entries: Sequence[BaseEntry]) -> list[bytes]:
        items = [
            _name(e.variable) + _origin(e.origin) + _U64.pack(e.upto) + _bigint(e.total)
            for e in entries
        ]
        return self._pack(T_BASES, b"", items)

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
            head = _name(digest.variable)
            marks = [_origin(origin) + _U64.pack(mark) for origin, mark in digest.marks]
            part: list[bytes] = []
            size = len(head)
            for mark in marks:
                if part and size + len(mark) > budget:
                    items.append(head + _U16.pack(len(part)) + b"".join(part))
                    part, size = [], len(head)
                part.append(mark)
                size += len(mark)
            items.append(head + _U16.pack(len(part)) + b"".join(part))
        return self._pack(T_ANNOUNCE, prefix, items)

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


def _ops_struct(count: int) -> struct.Struct:
    cached = _OPS_CACHE.get(count)
    if cached is None:
        cached = _OPS_CACHE[count] = struct.Struct(">" + "Qq" * count)
    return cached


# --- decoding ---------------------------------------------------------------------


class _Reader:
    """A cursor over a datagram; every read checks bounds and raises MalformedDatagram."""

    __slots__ = ("data", "end", "pos")

    def __init__(self, data: bytes, end: int) -> None:
        self.data = data
        self.pos = 0
        self.end = end

    def take(self, fmt: struct.Struct) -> tuple[int, ...]:
        if self.pos + fmt.size > self.end:
            raise MalformedDatagram("malformed", "truncated")
        values = fmt.unpack_from(self.data, self.pos)
        self.pos += fmt.size
        return values

    def u8(self) -> int:
        return self.take(_U8)[0]

    def u16(self) -> int:
        return self.take(_U16)[0]

    def u64(self) -> int:
        return self.take(_U64)[0]

    def raw(self, size: int) -> bytes:
        if self.pos + size > self.end:
            raise MalformedDatagram("malformed", "truncated")
        value = self.data[self.pos : self.pos + size]
        self.pos += size
        return value

    def name(self) -> str:
        raw = self.raw(self.u8())
        try:
            value = raw.decode("ascii")
        except UnicodeDecodeError:
            raise MalformedDatagram("malformed", "non-ascii name") from None
        if not is_name(value):
            raise MalformedDatagram("malformed", f"bad name {value!r}")
        return value

    def origin(self) -> Origin:
        return Origin(self.name(), self.u64())

    def nonce(self) -> int:
        value = self.u64()
        if not 1 <= value <= NONCE_MAX:
            raise MalformedDatagram("malformed", "nonce out of range")
        return value

    def mark(self) -> int:
        value = self.u64()
        if value > NONCE_MAX:
            raise MalformedDatagram("malformed", "watermark out of range")
        return value

    def bigint(self) -> int:
        size = self.u8()
        if not 1 <= size <= BIGINT_BYTES_MAX:
            raise MalformedDatagram("malformed", "integer length")
        return int.from_bytes(self.raw(size), "big", signed=True)

    def barrier(self) -> BarrierId:
        return BarrierId(self.u64(), self.name(), self.u64())

    def count(self, item_bytes_min: int) -> int:
        value = self.u16()
        if value * item_bytes_min > self.end - self.pos:
            raise MalformedDatagram("malformed", "count beyond datagram")
        return value


def _decode_ops(r: _Reader) -> OpBatch:
    groups = []
    for _ in range(r.count(12)):
        variable, origin, count = r.name(), r.origin(), r.u16()
        if count * _OP.size > r.end - r.pos:
            raise MalformedDatagram("malformed", "op count beyond datagram")
        flat = r.take(_ops_struct(count)) if count else ()
        ops = tuple(zip(flat[0::2], flat[1::2], strict=True))
        previous = 0
        for nonce, _delta in ops:
            if nonce <= previous:
                raise MalformedDatagram("malformed", "nonces not ascending")
            previous = nonce
        if previous > NONCE_MAX:
            raise MalformedDatagram("malformed", "nonce out of range")
        groups.append(OpGroup(variable, origin, ops))
    return OpBatch(tuple(groups))


def _decode_bases(r: _Reader) -> Bases:
    entries = []
    for _ in range(r.count(20)):
        variable, origin, upto, total = r.name(), r.origin(), r.nonce(), r.bigint()
        if abs(total) > upto * TOTAL_PER_OP_MAX:
            # More than *upto* int64 deltas can sum to: sums of such claims would
            # outgrow what a digest or a repair can carry.
            raise MalformedDatagram("malformed", "total beyond its ops")
        entries.append(BaseEntry(variable, origin, upto, total))
    return Bases(tuple(entries))


def _decode_nack(r: _Reader) -> Nack:
    ranges = []
    for _ in range(r.count(28)):
        variable, origin = r.name(), r.origin()
        first, last = r.take(_U64X2)
        if not 1 <= first <= last <= NONCE_MAX:
            raise MalformedDatagram("malformed", "bad range")
        ranges.append(NackRange(variable, origin, first, last))
    return Nack(tuple(ranges))


def _decode_announce(r: _Reader) -> Announce:
    mode_index, epoch = r.u8(), r.u64()
    if mode_index >= len(MODES):
        raise MalformedDatagram("malformed", "mode")
    has_barrier = r.u8()
    if has_barrier > 1:
        raise MalformedDatagram("malformed", "barrier flag")
    barrier = r.barrier() if has_barrier else None
    digests = []
    for _ in range(r.count(4)):
        variable = r.name()
        marks = tuple((r.origin(), r.mark()) for _ in range(r.count(18)))
        digests.append(VariableDigest(variable, marks))
    return Announce(MODES[mode_index], epoch, barrier, tuple(digests))


def _decode_peers(r: _Reader) -> PeerList:
    peers = []
    for _ in range(r.count(7)):
        node_id, host, port, heard = r.name(), r.name(), r.u16(), r.u8()
        if port == 0 or heard > 1 or not _is_unicast_ipv4(host):
            raise MalformedDatagram("malformed", "peer entry")
        peers.append((node_id, host, port, bool(heard)))
    return PeerList(tuple(peers))


def _is_unicast_ipv4(host: str) -> bool:
    """True for a dotted-quad IPv4 literal a datagram may be sent to."""
    try:
        address = ipaddress.IPv4Address(host)
    except ValueError:
        return False
    return not (address.is_multicast or address.is_unspecified or address == _BROADCAST)


_BROADCAST = ipaddress.IPv4Address("255.255.255.255")


def _decode_digest_request(r: _Reader) -> DigestRequest:
    return DigestRequest(r.u64())


def _decode_digest_reply(r: _Reader) -> DigestReply:
    token, page, pages = r.u64(), r.u16(), r.u16()
    if not page < pages:
        raise MalformedDatagram("malformed", "page beyond count")
    reports = []
    for _ in range(r.count(13)):
        variable, value, ops_hash = r.name(), r.bigint(), r.raw(OPS_HASH_BYTES)
        marks = tuple((r.origin(), r.mark()) for _ in range(r.count(18)))
        reports.append(VariableReport(variable, value, ops_hash, marks))
    return DigestReply(token, page, pages, tuple(reports))


def _sync_decoder(cls: type, with_digest: bool) -> Callable[[_Reader], Message]:
    def decode(r: _Reader) -> Message:
        barrier = r.barrier()
        if with_digest:
            return cls(barrier, r.raw(DIGEST_BYTES))  # type: ignore[no-any-return]
        return cls(barrier)  # type: ignore[no-any-return]

    return decode


_SYNC_TYPES: dict[type, int] = {
    SyncStart: T_SYNC_START,
    SyncJoin: T_SYNC_JOIN,
    SyncReady: T_SYNC_READY,
    SyncReadyAck: T_SYNC_READY_ACK,
    SyncCommit: T_SYNC_COMMIT,
    SyncDone: T_SYNC_DONE,
    SyncAbort: T_SYNC_ABORT,
}

_DECODERS: dict[int, Callable[[_Reader], Message]] = {
    T_ANNOUNCE: _decode_announce,
    T_OPS: _decode_ops,
    T_BASES: _decode_bases,
    T_NACK: _decode_nack,
    T_PEERS: _decode_peers,
    T_DIGEST_REQUEST: _decode_digest_request,
    T_DIGEST_REPLY: _decode_digest_reply,
    **{
        kind: _sync_decoder(cls, cls in (SyncReady, SyncReadyAck, SyncCommit))
        for cls, kind in _SYNC_TYPES.items()
    },
}


def decode(data: bytes, keys: Sequence[Key] = ()) -> Envelope:
    """Parse and authenticate one datagram, or raise `MalformedDatagram`."""
    if len(data) > DATAGRAM_BYTES_MAX:
        raise MalformedDatagram("oversized")
    if len(data) < _PREFIX.size:
        raise MalformedDatagram("malformed", "short")
    magic, version, kind, flags = _PREFIX.unpack_from(data)
    if magic != MAGIC:
        raise MalformedDatagram("malformed", "magic")
    if version != VERSION:
        raise MalformedDatagram("unknown_version", str(version))
    if flags & ~FLAG_MAC:
        raise MalformedDatagram("malformed", "flags")
    end = _check_mac(data, flags, keys)
    r = _Reader(data, end)
    r.pos = _PREFIX.size
    sender, seq = r.origin(), r.u64()
    decoder = _DECODERS.get(kind)
    if decoder is None:
        raise MalformedDatagram("unknown_type", str(kind))
    message = decoder(r)
    if r.pos != end:
        raise MalformedDatagram("malformed", "trailing bytes")
    return Envelope(sender, seq, message)


def _check_mac(data: bytes, flags: int, keys: Sequence[Key]) -> int:
    """Return where the body ends, after checking the MAC the flags and keys call for."""
    if not flags & FLAG_MAC:
        if keys:
            raise MalformedDatagram("unauthenticated")
        return len(data)
    mac_at = len(data) - MAC_BYTES
    if not keys:
        raise MalformedDatagram("unexpected_mac", key_id=_trailer_key_id(data, mac_at))
    # The trailer is key_id (u8 length + name) then the MAC; find it from the end.
    # One key id's encoding can be the tail of another's, so try every key that fits.
    named = False
    for key in keys:
        name = _name(key.key_id)
        start = mac_at - len(name)
        if start > _PREFIX.size and data[start:mac_at] == name:
            named = True
            expected = hmac.digest(key.secret, data[:mac_at], "sha256")  # one-shot, in C
            if hmac.compare_digest(expected, data[mac_at:]):
                return start
    raise MalformedDatagram(
        "bad_mac" if named else "unknown_key", key_id=_trailer_key_id(data, mac_at)
    )


def _trailer_key_id(data: bytes, mac_at: int) -> str | None:
    """The key id the trailer before *mac_at* names, or None if there is no plausible one.

    Read from the end: the shortest length L whose byte sits L bytes before the MAC and
    whose L bytes form a name. Another reading can fit only where a byte that is a name
    character also equals a length (45..57: ``-``, ``.`` or a digit), which takes an id
    of 45 characters or more; shorter ids read one way.
    """
    for length in range(1, NAME_MAX + 1):
        start = mac_at - length
        if start - 1 <= _PREFIX.size:
            return None
        if data[start - 1] == length:
            name = data[start:mac_at].decode("ascii", "replace")
            if is_name(name):
                return name
    return None
