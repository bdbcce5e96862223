"""The participant side of a barrier: freeze, report a cut, fold what is committed.

A node in a barrier (`Mode.SYNC`, then `Mode.READY`) holds its writes, reports a cut of
what it holds once it holds everything any other member holds, reports again whenever
that changes, and folds the cut the initiator's commit names, or leaves unfolded on an
abort or when ``sync_freeze_max_s`` passes. `PARTICIPANT` (below the class) is the only
authority on the mode; `crdtd.core.sync.Syncer` inherits this side and the initiator's
(`crdtd.core.initiator`) and feeds both.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from crdtd.core.barrier import (
    Call,
    Closing,
    Coordination,
    Cut,
    Input,
    Participation,
    take_cut,
)
from crdtd.core.barrier_io import NOTHING, AnnounceNow, Effects, Fold, Inbound, NodeView, Thaw
from crdtd.core.events import SyncFinished, SyncStarted
from crdtd.core.messages import BarrierId, SyncAbort, SyncDone, SyncJoin, SyncReady
from crdtd.core.modes import Mode
from crdtd.core.peers import Peer


class Participant(Effects):
    """The barrier this node takes part in; the initiator side is `Initiator`'s."""

    _node: NodeView
    _part: Participation | None
    _coord: Coordination | None
    _closing: dict[BarrierId, Closing]
    _late_cuts: dict[BarrierId, Participation]
    _tickets: list[int]
    _last_barrier_at: float
    mode: Mode

    @property
    def barrier(self) -> BarrierId | None:
        """The barrier we take part in, announced with our digest; None in Work."""
        return self._part.barrier if self._part is not None else None

    if TYPE_CHECKING:  # the initiator's side, which `Syncer` also inherits

        def _coordinate(
            self, event: Call, barrier: BarrierId, now: float, inbound: Inbound = NOTHING
        ) -> None: ...

        def _on_sync_ready(self, message: SyncReady, peer: Peer | None, now: float) -> None: ...

    def _step(
        self, event: Input, barrier: BarrierId, now: float, inbound: Inbound = NOTHING
    ) -> None:
        """Apply `PARTICIPANT`; inputs not in it are counted and ignored."""
        entry = PARTICIPANT.get((self.mode, event))
        if entry is None:
            self._count(f"barrier_ignored_{event.value}")
            return
        actions, self.mode = entry
        for action in actions:
            action(self, barrier, now, inbound)

    # --- participant: inputs ------------------------------------------------------

    def _on_sync_start(self, barrier: BarrierId, peer: Peer, now: float) -> None:
        current = self.barrier
        if current == barrier:
            self._send(SyncJoin(barrier), peer.address)  # a retransmit: ack again
            return
        if barrier in self._late_cuts or barrier in self._closing:
            return  # a retransmit of a barrier we already left
        event = Input.START_WORSE if current is not None and current < barrier else Input.START
        self._step(event, barrier, now, Inbound(peer.address))

    def _on_sync_commit(self, barrier: BarrierId, digest: bytes, peer: Peer, now: float) -> None:
        if self._part is not None and self._part.barrier == barrier:
            self._step(Input.COMMIT, barrier, now, Inbound(peer.address, digest))
            return
        self._send(SyncDone(barrier), peer.address)
        late = self._late_cuts.pop(barrier, None)
        if late is not None and self._fold(barrier, late.cuts.get(digest)):
            self._count("late_folds")

    # --- participant: actions -----------------------------------------------------

    def _abandon(self, barrier: BarrierId, now: float, inbound: Inbound) -> None:
        """Before entering *barrier*: stop coordinating another one, and leave the one
        we are in (its held writes are applied; the new barrier freezes them again)."""
        if self._coord is not None and self._coord.barrier != barrier:
            self._coordinate(Call.LOST, self._coord.barrier, now)
        if self._part is not None:
            self._leave(now, "aborted", "lost to an earlier barrier")

    def _enter(self, barrier: BarrierId, now: float, inbound: Inbound) -> None:
        """Freeze, join, and announce at once so that every participant learns what we
        hold."""
        freeze_max_s = self._node.settings.sync_freeze_max_s
        self._part = Participation(barrier, inbound.address, now, now + freeze_max_s)
        if inbound.address is not None:
            self._send(SyncJoin(barrier), inbound.address)
        self._report_event(SyncStarted(barrier.epoch, barrier.initiator))
        self._effects.append(AnnounceNow())

    def _refuse(self, barrier: BarrierId, now: float, inbound: Inbound) -> None:
        assert inbound.address is not None
        self._send(SyncAbort(barrier), inbound.address)

    def _report(self, barrier: BarrierId, now: float, inbound: Inbound) -> None:
        """Take a cut of what we hold and send SyncReady with its digest."""
        part = self._part
        assert part is not None
        digest, cut = take_cut(self._node.counters)
        part.cuts[digest] = cut
        part.reported = digest
        part.acked = False
        part.next_send = now
        self._send_ready(now)

    def _acknowledge(self, barrier: BarrierId, now: float, inbound: Inbound) -> None:
        if inbound.address is not None:
            self._send(SyncDone(barrier), inbound.address)

    def _fold_named_cut(self, barrier: BarrierId, now: float, inbound: Inbound) -> None:
        part = self._part
        assert part is not None
        if self._fold(barrier, part.cuts.get(inbound.digest)):
            self._leave(now, "completed", "")
        else:
            self._leave(now, "aborted", "commit names a cut we never took")

    def _leave_unfolded(self, barrier: BarrierId, now: float, inbound: Inbound) -> None:
        self._leave(now, "aborted", inbound.reason)

    # --- participant: helpers -----------------------------------------------------

    def _fold(self, barrier: BarrierId, cut: Cut | None) -> bool:
        """Fold *cut*; safe at any time, since a cut is a held prefix."""
        if cut is None:
            self._count("commits_without_cut")
            return False
        self._effects.append(Fold(cut, barrier.epoch))
        return True

    def _leave(self, now: float, result: str, reason: str) -> None:
        """Out of our barrier: report the outcome, then apply the writes held meanwhile.
        The table has already set the next mode."""
        part = self._part
        assert part is not None
        if result == "aborted" and part.cuts:
            self._late_cuts = {part.barrier: part}  # a commit may still come; folding then is safe
        self._part = None
        self._last_barrier_at = now
        self._report_event(self._finished(part, result, now, reason))
        self._effects.append(Thaw())

    def _finished(self, part: Participation, result: str, now: float, reason: str) -> SyncFinished:
        tickets = tuple(self._tickets)
        self._tickets.clear()
        self._count(f"barriers_{result}")
        # A completed barrier's Fold is applied after this call returns: the epoch the
        # node will be in is the higher of its own and the barrier's.
        epoch = self._node.epoch
        if result == "completed":
            epoch = max(epoch, part.barrier.epoch)
        return SyncFinished(
            result,
            epoch,
            part.barrier.initiator,
            part.barrier.serial,
            now - part.entered_at,
            reason,
            tickets,
        )

    def _send_ready(self, now: float) -> None:
        part = self._part
        assert part is not None and part.reported is not None
        message = SyncReady(part.barrier, part.reported)
        if part.initiator_address is None:
            self._on_sync_ready(message, None, now)
        else:
            self._send(message, part.initiator_address)
        part.next_send = now + self._node.settings.sync_retry_s

    def _holds_everything(self) -> bool:
        """True when we hold every op that any participant we heard from holds."""
        part = self._part
        assert part is not None
        counters = self._node.counters
        for peer in self._node.peers.values():
            if peer.barrier != part.barrier:
                continue
            for (variable, origin), mark in peer.marks.items():
                counter = counters.get(variable)
                if counter is None or counter.watermark(origin) < mark:
                    return False
        return True


Action = Callable[[Participant, BarrierId, float, Inbound], None]

_LEAVE = (Participant._acknowledge, Participant._leave_unfolded)
_FOLD = (Participant._acknowledge, Participant._fold_named_cut)
_ENTER = (Participant._abandon, Participant._enter)

PARTICIPANT: dict[tuple[Mode, Input], tuple[tuple[Action, ...], Mode]] = {
    (Mode.WORK, Input.START): (_ENTER, Mode.SYNC),
    (Mode.SYNC, Input.START): (_ENTER, Mode.SYNC),
    (Mode.SYNC, Input.START_WORSE): ((Participant._refuse,), Mode.SYNC),
    (Mode.SYNC, Input.COMPLETE): ((Participant._report,), Mode.READY),
    (Mode.SYNC, Input.COMMIT): (_FOLD, Mode.WORK),
    (Mode.SYNC, Input.ABORT): (_LEAVE, Mode.WORK),
    (Mode.SYNC, Input.DEADLINE): (_LEAVE, Mode.WORK),
    (Mode.READY, Input.START): (_ENTER, Mode.SYNC),
    (Mode.READY, Input.START_WORSE): ((Participant._refuse,), Mode.READY),
    (Mode.READY, Input.CHANGED): ((Participant._report,), Mode.READY),
    (Mode.READY, Input.COMMIT): (_FOLD, Mode.WORK),
    (Mode.READY, Input.ABORT): (_LEAVE, Mode.WORK),
    (Mode.READY, Input.DEADLINE): (_LEAVE, Mode.WORK),
}
"""A participant: (mode, input) -> (actions, next mode). Anything else is counted
(``barrier_ignored_<input>``) and ignored. Messages about *another* barrier never reach
it: a commit for one we already left is acknowledged, and folded if we still hold the
cut it names; an abort for one is only acknowledged."""
