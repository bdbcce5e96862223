"""Events a node reports to its driver after the records and datagrams of the same step.

Events are facts, named with nouns; the driver logs them, answers waiting clients, and
feeds ``watch``. ``ticket`` ties an event to the command call that returned it.
"""

from __future__ import annotations

from dataclasses import dataclass

from crdtd.core.ids import Address, Origin
from crdtd.core.messages import VariableReport


@dataclass(frozen=True, slots=True)
class AddApplied:
    """A local add is durable and applied; answer the client that asked."""

    ticket: int
    variable: str
    origin: Origin
    nonce: int
    value: int


@dataclass(frozen=True, slots=True)
class VariableAdded:
    """A variable became known here (created locally or learned from a peer)."""

    variable: str


@dataclass(frozen=True, slots=True)
class VariableDeleted:
    """A variable is gone here (deleted here or by a peer); an add brings it back,
    starting from zero."""

    variable: str


@dataclass(frozen=True, slots=True)
class ValueChanged:
    """The value of a variable changed (a local add, a remote op, a repair, a base)."""

    variable: str
    value: int


@dataclass(frozen=True, slots=True)
class PeerJoined:
    node_id: str
    incarnation: int
    address: Address


@dataclass(frozen=True, slots=True)
class PeerLost:
    node_id: str
    silent_s: float


@dataclass(frozen=True, slots=True)
class GapRepaired:
    """A hole in an origin's nonce sequence was filled (``first..last`` now held)."""

    variable: str
    origin: Origin
    first: int
    last: int


@dataclass(frozen=True, slots=True)
class DatagramRejected:
    """A datagram was dropped; ``reason`` is a counter name in ``Node.stats``.

    ``key_id`` is the key id a signed datagram named, when a key mismatch refused it
    (see `crdtd.core.wire.MalformedDatagram`): it tells the operator which key is missing.
    """

    reason: str
    address: Address
    key_id: str | None = None


@dataclass(frozen=True, slots=True)
class IdentityConflict:
    """Two live origins share a node id (*ours* is one of them when it is our id): a
    cloned state directory, or one ``node.id`` configured on two machines. Nothing is
    lost (each has its own incarnation), but the operator must give one a new id."""

    node_id: str
    origins: tuple[Origin, ...]
    address: Address
    ours: bool


@dataclass(frozen=True, slots=True)
class StateRewound:
    """A peer holds ops of an earlier incarnation of ours beyond what our state holds:
    this state is older than the one that issued them (a snapshot reverted, a lost WAL,
    a copy). Repair brings the ops back; the warning says the disk went back in time."""

    origin: Origin
    variable: str
    held: int
    seen: int
    peer: str


@dataclass(frozen=True, slots=True)
class ClaimRefused:
    """A peer claimed an op, base or watermark of our *current* origin that we never
    issued (a forgery, or a clone of ours): refused, never stored."""

    kind: str  # "op", "base" or "mark"
    variable: str
    nonce: int
    peer: str
    address: Address


@dataclass(frozen=True, slots=True)
class VariablesOverLimit:
    """Peers brought this node past ``variables_max``; it keeps them (so nodes never
    diverge) up to the hard bound, and refuses new local names meanwhile."""

    variables: int
    limit: int
    hard_limit: int


@dataclass(frozen=True, slots=True)
class SyncStarted:
    epoch: int
    initiator: str


@dataclass(frozen=True, slots=True)
class SyncFinished:
    """A barrier this node took part in ended; ``tickets`` are the ``start_sync`` calls."""

    result: str  # "completed" or "aborted"
    epoch: int
    initiator: str
    serial: int
    duration_s: float
    reason: str
    tickets: tuple[int, ...]


@dataclass(frozen=True, slots=True)
class VerifyFinished:
    """Every live peer's reports (ours included), the peers that did not answer, and
    the node ids that more than one live origin holds (verify must not say "agree")."""

    ticket: int
    reports: dict[str, dict[str, VariableReport]]
    silent: tuple[str, ...]
    conflicts: tuple[str, ...] = ()


Event = (
    AddApplied
    | VariableAdded
    | VariableDeleted
    | ValueChanged
    | PeerJoined
    | PeerLost
    | GapRepaired
    | DatagramRejected
    | IdentityConflict
    | StateRewound
    | ClaimRefused
    | VariablesOverLimit
    | SyncStarted
    | SyncFinished
    | VerifyFinished
)
