"""Durable records: what a node asks its driver to write down before anything else.

Every owner obeys one order on every flush (`crdtd.core.step.Flush`): write and sync
the records, then answer, then send, then report the events. So a nonce is on disk
before it is on the wire, and an add is acknowledged only once it is durable.

A node is rebuilt by replaying records in the order they were written (``Node(...,
records=...)``). Every record is idempotent, so a store may also hand back an equivalent,
compacted sequence: the latest incarnation started, then each variable, then each base,
then the ops above the bases, then the epoch, then the replay floors, then the named adds
(oldest first).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

from crdtd.core.ids import Origin


@dataclass(frozen=True, slots=True)
class IncarnationStarted:
    """This state started a boot as ``(node_id, incarnation)``: the next boot of the same
    state, or of any copy of it, must take a larger one (see `crdtd.core.identity`)."""

    incarnation: int


@dataclass(frozen=True, slots=True)
class VariableCreated:
    """A variable exists from now on; creating it again is a no-op."""

    variable: str


@dataclass(frozen=True, slots=True)
class OpRecorded:
    """One op of the log. ``(variable, origin, nonce)`` names it; its delta never changes."""

    variable: str
    origin: Origin
    nonce: int
    delta: int


@dataclass(frozen=True, slots=True)
class OpsRecorded:
    """A run of ops of one variable and origin, nonces ``first``, ``first + 1``, ...: the
    `OpRecorded` of each, in one record. A batch add and in-order replication write
    runs, so what a step costs grows with its runs, not with its ops."""

    variable: str
    origin: Origin
    first: int
    deltas: tuple[int, ...]

    def each(self) -> Iterator[OpRecorded]:
        variable, origin, first = self.variable, self.origin, self.first
        for k, delta in enumerate(self.deltas):
            yield OpRecorded(variable, origin, first + k, delta)


@dataclass(frozen=True, slots=True)
class BaseFolded:
    """The ops of *origin* on *variable* with nonce <= ``upto`` are folded into ``total``.

    The ops themselves may be deleted: any node whose base for that origin is lower
    adopts this one, which replaces exactly those ops.
    """

    variable: str
    origin: Origin
    upto: int
    total: int


@dataclass(frozen=True, slots=True)
class Buried:
    """*variable* was deleted: its grave, whole (it replaces the one kept before).

    Per origin, the ops 1..upto summing to total count zero from now on (see
    `crdtd.core.counters.Counter.bury`); restoring it buries them again, in any order
    with the other records.
    """

    variable: str
    marks: tuple[tuple[Origin, int, int], ...]  # (origin, upto, total)


@dataclass(frozen=True, slots=True)
class EpochAdvanced:
    """A full sync completed; ``epoch`` counts completed barriers this node took part in."""

    epoch: int


@dataclass(frozen=True, slots=True)
class ReplayFloor:
    """Datagrams of *sender* numbered up to ``seq`` were accepted: refuse them for good.

    Replay windows live in memory; this record carries their high-water marks across a
    restart of the receiving node, so a datagram captured before the restart and
    replayed after it is still refused (see `crdtd.core.replay`).
    """

    sender: Origin
    seq: int


@dataclass(frozen=True, slots=True)
class AddNamed:
    """The local add of *delta* to *variable* its client named ``request_id`` became
    op ``nonce`` of this node's ``incarnation``, and the variable read ``value`` right
    after it.

    Written in the transaction of that op, so a client that lost the answer (the daemon
    was killed before it replied) and sends the add again gets the same answer instead of
    a second op, also after a restart. A node keeps the latest `REQUESTS_KEPT`.
    """

    request_id: str
    variable: str
    delta: int
    nonce: int
    value: int
    incarnation: int


REQUESTS_KEPT = 65_536

Record = (
    IncarnationStarted
    | VariableCreated
    | OpRecorded
    | OpsRecorded
    | BaseFolded
    | Buried
    | EpochAdvanced
    | ReplayFloor
    | AddNamed
)
