"""Running barriers for one node: its participant side and, when it starts one, its
initiator side.

`crdtd.core.barrier` holds the vocabulary: modes, phases, inputs, what a cut is, and the
state kept per barrier. `crdtd.core.participant` and `crdtd.core.initiator` are the
two sides, each with its table (`PARTICIPANT`, `INITIATOR`); `Syncer` inherits both and
routes the node's inputs to them and their timers, and `crdtd.core.barrier_io` is what
the Syncer reads and returns. A
`Node` owns one `Syncer` and hands it what concerns barriers: every barrier message, its
timer, peers appearing and expiring, ``start_sync``, and a note each time a watermark or
base moves (which makes any cut taken before stale).

The Syncer never calls back into the node. It reads the node through `NodeView` (the
counters to cut, the peers to ask; read only), and every call returns the *effects* the
node must apply, in order: datagrams to send (`Send`), an announce now
(`AnnounceNow`), a cut to fold (`Fold`), held writes to apply (`Thaw`), an event
(`Report`), a counter to bump (`Count`) and a barrier serial taken from the node's
datagram sequence (`UseSerial`). So what a barrier may do to its node is exactly that
list, and the node's counters and records change only in the node.

Rules (the node's, too): no clock, no IO, ``now`` comes in; peer input never raises
(anything the tables do not expect is counted and ignored); iteration is deterministic.
"""

from __future__ import annotations

from crdtd.core import wire
from crdtd.core.barrier import (
    Call,
    Closing,
    Coordination,
    Input,
    Member,
    Participation,
    Phase,
    Status,
)
from crdtd.core.barrier_io import (
    AnnounceNow,
    Effect,
    Fold,
    Inbound,
    NodeView,
    Send,
    Thaw,
    UseSerial,
)
from crdtd.core.effects import Count, Report
from crdtd.core.ids import Origin
from crdtd.core.initiator import INITIATOR, Initiator
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
from crdtd.core.participant import PARTICIPANT, Participant
from crdtd.core.peers import Peer

__all__ = [
    "INITIATOR",
    "PARTICIPANT",
    "AnnounceNow",
    "Count",
    "Effect",
    "Fold",
    "Inbound",
    "NodeView",
    "Report",
    "Send",
    "Syncer",
    "Thaw",
    "UseSerial",
]


class Syncer(Participant, Initiator):
    """The barriers of one node. Only `mode` and `phase` are for reading from outside.

    Both sides are driven by a table (`PARTICIPANT`, `INITIATOR`, each in its module):
    ``_step`` and ``_coordinate`` set the next mode or phase, then run the actions in
    order. Nothing else sets either. An action may feed the other side an input (our
    participant reports to our own initiator, which may commit at once), so the new
    mode or phase is set before the actions run.
    """

    def __init__(self, node: NodeView, now: float) -> None:
        super().__init__()
        self._node = node
        self.mode = Mode.WORK
        self.phase = Phase.IDLE
        self._part: Participation | None = None
        self._coord: Coordination | None = None
        self._closing: dict[BarrierId, Closing] = {}
        self._late_cuts: dict[BarrierId, Participation] = {}
        self._tickets: list[int] = []  # start_sync tickets the next SyncFinished lists
        self._last_barrier_at = now
        self._changed = 0  # bumped whenever a watermark or base moves (cuts go stale)
        self._reported_at = 0

    # --- inputs from the node -----------------------------------------------------

    def start(self, ticket: int, now: float) -> list[Effect]:
        """``start_sync``: initiate a barrier now, unless one is running already."""
        self._tickets.append(ticket)
        if self.mode is Mode.WORK:
            self._initiate(now)
        return self._drain()

    def receive(self, message: wire.SyncMessage, peer: Peer, now: float) -> list[Effect]:
        if isinstance(message, SyncStart):
            self._on_sync_start(message.barrier, peer, now)
        elif isinstance(message, SyncJoin):
            self._on_sync_join(message.barrier, peer, now)
        elif isinstance(message, SyncReady):
            self._on_sync_ready(message, peer, now)
        elif isinstance(message, SyncReadyAck):
            part = self._part
            if part is not None and part.barrier == message.barrier:
                part.acked = part.reported == message.digest
        elif isinstance(message, SyncCommit):
            self._on_sync_commit(message.barrier, message.digest, peer, now)
        elif isinstance(message, SyncAbort):
            self._on_sync_abort(message.barrier, peer, now)
        else:
            self._on_sync_done(message.barrier, peer)
        return self._drain()

    def note_change(self) -> None:
        """A watermark or base moved: a cut taken before no longer names what we hold."""
        self._changed += 1

    def pull_in(self, peer: Peer, now: float) -> list[Effect]:
        """A peer appeared: if we coordinate a barrier, it takes part too."""
        coord = self._coord
        if coord is not None and peer.origin not in coord.members:
            coord.members[peer.origin] = Member(peer.address, Status.INVITED, now)
            self._send(SyncStart(coord.barrier), peer.address)
        return self._drain()

    def drop_member(self, origin: Origin) -> None:
        """A peer expired: the barrier we coordinate no longer waits for it."""
        if self._coord is not None:
            self._coord.members.pop(origin, None)

    def progress(self, now: float) -> list[Effect]:
        """Report a cut once we hold everything, and again whenever it changes."""
        self._progress(now)
        return self._drain()

    def handle_timer(self, now: float) -> list[Effect]:
        """Retries and deadlines, then progress, then perhaps a scheduled barrier."""
        self._timers(now)
        self._progress(now)
        self._maybe_schedule(now)
        return self._drain()

    def deadlines(self) -> list[float]:
        """Every time at which ``handle_timer`` has barrier work to do."""
        deadlines = []
        if self._part is not None:
            deadlines.append(self._part.deadline)
            if self._part.reported is not None and not self._part.acked:
                deadlines.append(self._part.next_send)
        if self._coord is not None:
            deadlines.extend((self._coord.deadline, self._coord.next_send))
        deadlines.extend(closing.next_send for closing in self._closing.values())
        if self._node.settings.sync_interval_s > 0 and self.mode is Mode.WORK:
            deadlines.append(self._last_barrier_at + self._sync_gap())
        return deadlines

    def _progress(self, now: float) -> None:
        part = self._part
        if part is None:
            return
        if self.mode is Mode.SYNC and self._holds_everything():
            self._step(Input.COMPLETE, part.barrier, now)
            self._reported_at = self._changed
        elif self.mode is Mode.READY and self._changed != self._reported_at:
            self._reported_at = self._changed
            self._step(Input.CHANGED, part.barrier, now)

    def _on_sync_abort(self, barrier: BarrierId, peer: Peer, now: float) -> None:
        coord = self._coord
        if coord is not None and coord.barrier == barrier and peer.origin in coord.members:
            # A member refused our barrier: it is in an earlier one, which will pull us in.
            self._coordinate(
                Call.REFUSED, barrier, now, Inbound(reason=f"refused by {peer.node_id}")
            )
            return
        if self._part is None or self._part.barrier != barrier:
            self._send(SyncDone(barrier), peer.address)
            return
        self._step(Input.ABORT, barrier, now, Inbound(peer.address, reason="aborted by initiator"))

    def _timers(self, now: float) -> None:
        coord = self._coord
        if coord is not None:
            if now >= coord.deadline:
                self._coordinate(
                    Call.DEADLINE, coord.barrier, now, Inbound(reason="freeze_max_s passed")
                )
            elif now >= coord.next_send:
                self._coordinate(Call.RETRY, coord.barrier, now)
        part = self._part
        if part is not None:
            if now >= part.deadline:
                self._step(Input.DEADLINE, part.barrier, now, Inbound(reason="freeze_max_s passed"))
            elif part.reported is not None and not part.acked and now >= part.next_send:
                self._send_ready(now)
        for barrier, closing in list(self._closing.items()):
            if not closing.pending or now >= closing.give_up_at:
                del self._closing[barrier]
            elif now >= closing.next_send:
                self._repeat_closing(closing, now)

    # --- scheduling ---------------------------------------------------------------

    def _sync_gap(self) -> float:
        settings = self._node.settings
        return max(settings.sync_interval_s, settings.sync_min_gap_s)

    def _maybe_schedule(self, now: float) -> None:
        """Every interval, the lowest live origin starts a barrier; nobody else does."""
        if self._node.settings.sync_interval_s <= 0 or self.mode is not Mode.WORK:
            return
        if now < self._last_barrier_at + self._sync_gap():
            return
        live = [peer.origin for peer in self._node.live_peers()]
        if live and min(live) < self._node.origin:
            self._last_barrier_at = now  # someone else's turn; check again an interval later
            return
        self._initiate(now)
