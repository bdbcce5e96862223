"""What one node knows of each peer: where it is, what it holds, how we hear it.

A module of its own because two parts of the core read it: the node (liveness, repair,
fan-out to peers without multicast) and its `crdtd.core.sync.Syncer` (which peers to
invite into a barrier, and whether we hold everything the other participants hold).
Holding it here keeps that dependency one way: both import this, neither imports the
other's module for it.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from crdtd.core.ids import Address, Origin
from crdtd.core.messages import BarrierId
from crdtd.core.modes import Mode


@dataclass(slots=True)
class Peer:
    node_id: str
    incarnation: int
    address: Address
    last_seen: float
    mode: Mode = Mode.WORK
    epoch: int = 0
    barrier: BarrierId | None = None
    suspected: bool = False
    marks: dict[tuple[str, Origin], int] = field(default_factory=dict)
    first_seen: float = 0.0
    multicast_at: float | None = None
    deaf_at: float | None = None  # when it last told us it does not hear our multicast
    unicast_copies: int = 0  # announces and peer lists it sent us by unicast: it does
    unicast_copy_at: float | None = None  # that while it does not hear our multicast
    announced_at: float | None = None  # its last Announce: only then may it start a barrier
    summarized: bool = False  # it sent us a Summary: it reads ours (0.2 and later)
    summary_at: float | None = None  # its last Summary: one an announce round
    summary_differed_at: float | None = None  # since when its summaries are not ours
    pace_seen: float = 0.0  # intervals between its last two summaries in Work: its pace
    summary_asked_at: float | None = None  # when we last asked it for its full announce
    summary_served_at: float | None = None  # when we last sent it our full announce

    @property
    def origin(self) -> Origin:
        return Origin(self.node_id, self.incarnation)
