"""What a barrier reads of its node, and what it hands back: the Syncer's edges.

`crdtd.core.sync.Syncer` reads its node through `NodeView` (read only) and returns
effects for the node to carry out, in order; `Inbound` is what came with an input.
`Effects` is the list both of its sides (participant and initiator) append to.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from crdtd.core.barrier import Cut
from crdtd.core.counters import Counter
from crdtd.core.effects import Count, Report
from crdtd.core.events import Event
from crdtd.core.ids import Address, Origin
from crdtd.core.layout import SyncMessage
from crdtd.core.peers import Peer
from crdtd.core.settings import Settings


class NodeView(Protocol):
    """What a `Syncer` reads of the node that owns it; it writes nothing there."""

    @property
    def node_id(self) -> str: ...

    @property
    def origin(self) -> Origin: ...

    @property
    def settings(self) -> Settings: ...

    @property
    def epoch(self) -> int: ...

    @property
    def counters(self) -> dict[str, Counter]: ...

    @property
    def peers(self) -> dict[Origin, Peer]: ...

    @property
    def last_seq(self) -> int:
        """The latest datagram sequence number used; it grows across restarts."""

    def live_peers(self) -> list[Peer]:
        """The peers not suspected, by origin: the ones a barrier invites."""


@dataclass(frozen=True, slots=True)
class Send:
    message: SyncMessage
    address: Address


@dataclass(frozen=True, slots=True)
class AnnounceNow:
    """Multicast our digest now, so every participant learns what we hold."""


@dataclass(frozen=True, slots=True)
class Fold:
    """Replace the ops *cut* names by their sums, and advance to *epoch*."""

    cut: Cut
    epoch: int


@dataclass(frozen=True, slots=True)
class Thaw:
    """Apply the local writes held while this node was frozen."""


@dataclass(frozen=True, slots=True)
class UseSerial:
    """A barrier took *serial* (``last_seq + 1``): the node's next datagram must use a
    higher sequence number."""

    serial: int


Effect = Send | AnnounceNow | Fold | Thaw | Report | Count | UseSerial


@dataclass(frozen=True, slots=True)
class Inbound:
    """What came with an input: whom to answer, the digest it names, why a barrier is
    left, and which member sent it (None: nobody, or our own participant)."""

    address: Address | None = None
    digest: bytes = b""
    reason: str = ""
    sender: Origin | None = None


NOTHING = Inbound()


class Effects:
    """The effects a barrier call produced, drained by the call's end."""

    def __init__(self) -> None:
        self._effects: list[Effect] = []

    def _send(self, message: SyncMessage, address: Address) -> None:
        self._effects.append(Send(message, address))

    def _report_event(self, event: Event) -> None:
        self._effects.append(Report(event))

    def _count(self, name: str) -> None:
        self._effects.append(Count(name))

    def _drain(self) -> list[Effect]:
        effects, self._effects = self._effects, []
        return effects
