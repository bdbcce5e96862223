"""Reading datagrams: every field checked before anything reaches the node.

`decode` verifies the frame (magic, version, flags, the MAC against the configured
keys) and hands the body to the decoder of its type; every read is bounds-checked by
`crdtd.core.reader.Reader`, and anything wrong raises `MalformedDatagram` whose
``reason`` is the counter the node bumps. The layout is `crdtd.core.wire`'s docstring.
"""

from __future__ import annotations

import hmac
import ipaddress
import operator
from collections.abc import Callable, Sequence

from crdtd.core.ids import NAME_MAX, NONCE_MAX, is_name
from crdtd.core.layout import (
    _OP,
    _PREFIX,
    _SYNC_TYPES,
    _U64X2,
    DIGEST_BYTES,
    FLAG_MAC,
    MAC_BYTES,
    MAGIC,
    MODES,
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
    TOTAL_PER_OP_MAX,
    VERSION,
    MalformedDatagram,
    _name,
    _ops_struct,
)
from crdtd.core.messages import (
    Announce,
    BarrierId,
    BaseEntry,
    Bases,
    DigestReply,
    DigestRequest,
    Envelope,
    Grave,
    Graves,
    Message,
    Nack,
    NackRange,
    OpBatch,
    OpGroup,
    PeerList,
    Summary,
    SummaryRequest,
    SyncCommit,
    SyncReady,
    SyncReadyAck,
    VariableDigest,
    VariableReport,
)
from crdtd.core.modes import Mode
from crdtd.core.reader import Reader
from crdtd.core.settings import DATAGRAM_BYTES_MAX, Key


def _decode_ops(r: Reader) -> OpBatch:
    groups = []
    for _ in range(r.count(12)):
        variable, origin, count = r.name(), r.origin(), r.u16()
        if count * _OP.size > r.end - r.pos:
            raise MalformedDatagram("malformed", "op count beyond datagram")
        flat = r.take(_ops_struct(count)) if count else ()
        nonces = flat[0::2]
        if nonces and not (nonces[0] > 0 and all(map(operator.lt, nonces, nonces[1:]))):
            raise MalformedDatagram("malformed", "nonces not ascending")
        if nonces and nonces[-1] > NONCE_MAX:
            raise MalformedDatagram("malformed", "nonce out of range")
        ops = tuple(zip(nonces, flat[1::2], strict=True))
        groups.append(OpGroup(variable, origin, ops))
    return OpBatch(tuple(groups))


def _decode_bases(r: Reader) -> Bases:
    entries = []
    for _ in range(r.count(20)):
        variable, origin, upto, total = r.name(), r.origin(), r.nonce(), r.bigint()
        if abs(total) > upto * TOTAL_PER_OP_MAX:
            # More than *upto* int64 deltas can sum to: sums of such claims would
            # outgrow what a digest or a repair can carry.
            raise MalformedDatagram("malformed", "total beyond its ops")
        entries.append(BaseEntry(variable, origin, upto, total))
    return Bases(tuple(entries))


def _decode_graves(r: Reader) -> Graves:
    graves = []
    for _ in range(r.count(4)):
        variable = r.name()
        marks = []
        for _ in range(r.count(20)):
            origin, upto, total = r.origin(), r.nonce(), r.bigint()
            if abs(total) > upto * TOTAL_PER_OP_MAX:
                raise MalformedDatagram("malformed", "total beyond its ops")
            marks.append((origin, upto, total))
        graves.append(Grave(variable, tuple(marks)))
    return Graves(tuple(graves))


def _decode_nack(r: Reader) -> Nack:
    ranges = []
    for _ in range(r.count(28)):
        variable, origin = r.name(), r.origin()
        first, last = r.take(_U64X2)
        if not 1 <= first <= last <= NONCE_MAX:
            raise MalformedDatagram("malformed", "bad range")
        ranges.append(NackRange(variable, origin, first, last))
    return Nack(tuple(ranges))


def _state(r: Reader) -> tuple[Mode, int, BarrierId | None]:
    """An announce's or a summary's head: mode, epoch and the barrier, if any."""
    mode_index, epoch = r.u8(), r.u64()
    if mode_index >= len(MODES):
        raise MalformedDatagram("malformed", "mode")
    has_barrier = r.u8()
    if has_barrier > 1:
        raise MalformedDatagram("malformed", "barrier flag")
    barrier = r.barrier() if has_barrier else None
    return MODES[mode_index], epoch, barrier


def _decode_summary(r: Reader) -> Summary:
    mode, epoch, barrier = _state(r)
    return Summary(mode, epoch, barrier, r.u64(), r.raw(DIGEST_BYTES))


def _decode_summary_request(r: Reader) -> SummaryRequest:
    return SummaryRequest()


def _decode_announce(r: Reader) -> Announce:
    mode, epoch, barrier = _state(r)
    digests = []
    for _ in range(r.count(4)):
        variable = r.name()
        marks = tuple((r.origin(), r.mark()) for _ in range(r.count(18)))
        digests.append(VariableDigest(variable, marks))
    return Announce(mode, epoch, barrier, tuple(digests))


def _decode_peers(r: Reader) -> PeerList:
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


def _decode_digest_request(r: Reader) -> DigestRequest:
    return DigestRequest(r.u64())


def _decode_digest_reply(r: Reader) -> DigestReply:
    token, page, pages = r.u64(), r.u16(), r.u16()
    if not page < pages:
        raise MalformedDatagram("malformed", "page beyond count")
    reports = []
    for _ in range(r.count(13)):
        variable, value, ops_hash = r.name(), r.bigint(), r.raw(OPS_HASH_BYTES)
        marks = tuple((r.origin(), r.mark()) for _ in range(r.count(18)))
        reports.append(VariableReport(variable, value, ops_hash, marks))
    return DigestReply(token, page, pages, tuple(reports))


def _sync_decoder(cls: type, with_digest: bool) -> Callable[[Reader], Message]:
    def decode(r: Reader) -> Message:
        barrier = r.barrier()
        if with_digest:
            return cls(barrier, r.raw(DIGEST_BYTES))  # type: ignore[no-any-return]
        return cls(barrier)  # type: ignore[no-any-return]

    return decode


_DECODERS: dict[int, Callable[[Reader], Message]] = {
    T_ANNOUNCE: _decode_announce,
    T_OPS: _decode_ops,
    T_BASES: _decode_bases,
    T_NACK: _decode_nack,
    T_GRAVES: _decode_graves,
    T_PEERS: _decode_peers,
    T_DIGEST_REQUEST: _decode_digest_request,
    T_DIGEST_REPLY: _decode_digest_reply,
    T_SUMMARY: _decode_summary,
    T_SUMMARY_REQUEST: _decode_summary_request,
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
    r = Reader(data, end)
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
