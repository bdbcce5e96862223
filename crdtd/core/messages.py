"""Protocol messages: frozen, slotted dataclasses named with nouns.

Every datagram carries exactly one message plus a header naming its sender
(``Origin``) and a per-sender sequence number (room for replay protection). Lists inside
a message are split across datagrams by ``crdtd.core.wire``; every message stays
meaningful on its own when only some of its datagrams arrive.

Replication:
- ``Announce``: periodic multicast; mode, epoch, the barrier the sender is in, and its
  digest (per variable, per origin, the highest contiguous nonce it holds).
- ``Summary``: multicast with every announce (since 0.2): mode, epoch, barrier, the
  number of variables and a 16-byte hash of every watermark held; the ``Announce``
  beside it then names only the variables that changed since the last one.
- ``SummaryRequest``: unicast to a peer whose summary differs from ours; it answers
  with its full ``Announce`` by unicast.
- ``OpBatch``: ops, multicast when fresh and unicast as repair. A group with no ops
  still says that its variable exists (that is how ``create`` replicates).
- ``Bases``: folded prefixes ``(variable, origin, upto, total)``, the repair answer for
  ops that were compacted away.
- ``Nack``: a unicast request for exactly the missing nonce ranges.
- ``Graves``: deleted variables, each with the cut its delete removed (per origin, the
  prefix ``upto`` and its total); multicast when made and with every announce.

Fleet operations:
- ``PeerList``: the peers a node knows, sent by unicast to peers that do not hear our
  multicast, so a node that knows one seed learns everyone (multicast-less networks).
- ``DigestRequest`` / ``DigestReply``: ``crdtctl verify`` asks every peer for its per
  variable value, op-set hash and watermarks.

Full sync (see ``crdtd.core.barrier``): ``SyncStart``, ``SyncJoin``, ``SyncReady``,
``SyncReadyAck``, ``SyncCommit``, ``SyncDone``, ``SyncAbort``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

from crdtd.core.ids import Origin
from crdtd.core.modes import Mode


class BarrierId(NamedTuple):
    """Names one barrier attempt; the smallest id wins when two run at once."""

    epoch: int
    initiator: str
    serial: int


@dataclass(frozen=True, slots=True)
class OpGroup:
    variable: str
    origin: Origin
    ops: tuple[tuple[int, int], ...]  # (nonce, delta), nonces ascending


@dataclass(frozen=True, slots=True)
class OpBatch:
    groups: tuple[OpGroup, ...]


@dataclass(frozen=True, slots=True)
class BaseEntry:
    variable: str
    origin: Origin
    upto: int
    total: int


@dataclass(frozen=True, slots=True)
class Bases:
    entries: tuple[BaseEntry, ...]


@dataclass(frozen=True, slots=True)
class Grave:
    """*variable* was deleted: per origin, its ops 1..upto (summing to total) count no
    more. Empty *marks*: it was deleted before it had any op."""

    variable: str
    marks: tuple[tuple[Origin, int, int], ...]  # (origin, upto, total)


@dataclass(frozen=True, slots=True)
class Graves:
    graves: tuple[Grave, ...]


@dataclass(frozen=True, slots=True)
class VariableDigest:
    variable: str
    marks: tuple[tuple[Origin, int], ...]  # (origin, highest contiguous nonce held)


@dataclass(frozen=True, slots=True)
class Announce:
    mode: Mode
    epoch: int
    barrier: BarrierId | None
    digests: tuple[VariableDigest, ...]


@dataclass(frozen=True, slots=True)
class Summary:
    """What an announce stands for when it carries only what changed: the sender's
    mode, epoch and barrier, its number of variables and the hash of all its marks
    (`crdtd.core.summary`)."""

    mode: Mode
    epoch: int
    barrier: BarrierId | None
    count: int
    digest: bytes


@dataclass(frozen=True, slots=True)
class SummaryRequest:
    """Please send me your full announce (by unicast): our summaries differ."""


@dataclass(frozen=True, slots=True)
class NackRange:
    variable: str
    origin: Origin
    first: int
    last: int


@dataclass(frozen=True, slots=True)
class Nack:
    ranges: tuple[NackRange, ...]


@dataclass(frozen=True, slots=True)
class PeerList:
    """``heard``: whether the sender hears that peer's multicast. A node that cannot
    receive multicast says so here, so its peers send it unicast copies."""

    peers: tuple[tuple[str, str, int, bool], ...]  # (node_id, host, port, heard)


@dataclass(frozen=True, slots=True)
class DigestRequest:
    token: int


@dataclass(frozen=True, slots=True)
class VariableReport:
    """One node's view of one variable, for verify: value, op-set hash, watermarks."""

    variable: str
    value: int
    ops_hash: bytes
    marks: tuple[tuple[Origin, int], ...]


@dataclass(frozen=True, slots=True)
class DigestReply:
    token: int
    page: int
    pages: int
    reports: tuple[VariableReport, ...]


@dataclass(frozen=True, slots=True)
class SyncStart:
    """The initiator asks a peer to freeze and take part."""

    barrier: BarrierId


@dataclass(frozen=True, slots=True)
class SyncJoin:
    """A participant acknowledges ``SyncStart``: it is frozen for this barrier."""

    barrier: BarrierId


@dataclass(frozen=True, slots=True)
class SyncReady:
    """A participant holds every op it knows any participant holds; ``digest`` names that set."""

    barrier: BarrierId
    digest: bytes


@dataclass(frozen=True, slots=True)
class SyncReadyAck:
    barrier: BarrierId
    digest: bytes


@dataclass(frozen=True, slots=True)
class SyncCommit:
    """Everyone reported the same digest: fold exactly that set and return to work."""

    barrier: BarrierId
    digest: bytes


@dataclass(frozen=True, slots=True)
class SyncDone:
    """A participant acknowledges ``SyncCommit`` or ``SyncAbort``."""

    barrier: BarrierId


@dataclass(frozen=True, slots=True)
class SyncAbort:
    barrier: BarrierId


Message = (
    Announce
    | Summary
    | SummaryRequest
    | PeerList
    | DigestRequest
    | DigestReply
    | OpBatch
    | Bases
    | Nack
    | Graves
    | SyncStart
    | SyncJoin
    | SyncReady
    | SyncReadyAck
    | SyncCommit
    | SyncDone
    | SyncAbort
)


@dataclass(frozen=True, slots=True)
class Envelope:
    """A decoded datagram: who sent it, its sequence number, and the message."""

    sender: Origin
    seq: int
    message: Message
