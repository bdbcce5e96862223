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
    """Every live peer's reports (ours included), and the peers that did not answer."""

    ticket: int
    reports: dict[str, dict[str, VariableReport]]
    silent: tuple[str, ...]


Event = (
    AddApplied
    | VariableAdded
    | ValueChanged
    | PeerJoined
    | PeerLost
    | GapRepaired
    | DatagramRejected
    | SyncStarted
    | SyncFinished
    | VerifyFinished
)
