"""The wire format's layout: its constants, field encodings and the one error.

`crdtd.core.wire` (building datagrams) and `crdtd.core.decoding` (reading them) share
what is here, so a field is laid out in one place. See `crdtd.core.wire` for the
datagram layout and its rules.
"""

from __future__ import annotations

import struct

from crdtd.core.ids import Origin
from crdtd.core.messages import (
    BarrierId,
    SyncAbort,
    SyncCommit,
    SyncDone,
    SyncJoin,
    SyncReady,
    SyncReadyAck,
    SyncStart,
)
from crdtd.core.modes import Mode

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
T_PEERS, T_DIGEST_REQUEST, T_DIGEST_REPLY, T_GRAVES = 5, 6, 7, 8
T_SUMMARY, T_SUMMARY_REQUEST = 9, 17
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


_SYNC_TYPES: dict[type, int] = {
    SyncStart: T_SYNC_START,
    SyncJoin: T_SYNC_JOIN,
    SyncReady: T_SYNC_READY,
    SyncReadyAck: T_SYNC_READY_ACK,
    SyncCommit: T_SYNC_COMMIT,
    SyncDone: T_SYNC_DONE,
    SyncAbort: T_SYNC_ABORT,
}


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


def _ops_struct(count: int) -> struct.Struct:
    cached = _OPS_CACHE.get(count)
    if cached is None:
        cached = _OPS_CACHE[count] = struct.Struct(">" + "Qq" * count)
    return cached
