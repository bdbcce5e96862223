"""The initiator side of a barrier: invite, collect digests, commit or abort.

A node that starts a barrier coordinates it (`Phase.COORDINATING`): it invites every
live peer and itself, waits until every member that joined reported a cut, and, when
all the digests agree, tells each member to commit that cut; else, or when
``sync_freeze_max_s`` passes, to abort. It repeats the closing message until each
member acknowledges. `INITIATOR` is the only authority on the phase; `Syncer` (which
inherits this side and the participant's, `crdtd.core.participant`) applies it.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

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
from crdtd.core.barrier_io import NOTHING, Effects, Inbound, NodeView, UseSerial
from crdtd.core.ids import Origin
from crdtd.core.messages import BarrierId, SyncAbort, SyncCommit, SyncReady, SyncReadyAck, SyncStart
from crdtd.core.peers import Peer


class Initiator(Effects):
    """The barriers this node coordinates; the participant side is `Syncer`'s."""

    _node: NodeView
    _coord: Coordination | None
    _closing: dict[BarrierId, Closing]
    _part: Participation | None
    phase: Phase

    if TYPE_CHECKING:  # the participant's side, which `Syncer` also inherits

        def _step(
            self, event: Input, barrier: BarrierId, now: float, inbound: Inbound = NOTHING
        ) -> None: ...

    def _coordinate(
        self, event: Call, barrier: BarrierId, now: float, inbound: Inbound = NOTHING
    ) -> None:
        """Apply `INITIATOR`; inputs not in it are counted and ignored."""
        entry = INITIATOR.get((self.phase, event))
        if entry is None:
            self._count(f"coordinator_ignored_{event.value}")
            return
        actions, self.phase = entry
        for action in actions:
            action(self, barrier, now, inbound)

    # --- initiator: inputs --------------------------------------------------------

    def _initiate(self, now: float) -> None:
        # The serial is a datagram sequence number, which grows across restarts, so a
        # restarted initiator never reuses an earlier barrier's id.
        node = self._node
        serial = node.last_seq + 1
        self._effects.append(UseSerial(serial))
        epoch = max([node.epoch, *(peer.epoch for peer in node.peers.values())]) + 1
        self._coordinate(Call.INITIATE, BarrierId(epoch, node.node_id, serial), now)

    def _on_sync_join(self, barrier: BarrierId, peer: Peer, now: float) -> None:
        if self._member(barrier, peer.origin) is None:
            self._turn_away(barrier, peer)
        else:
            self._coordinate(Call.JOIN, barrier, now, Inbound(peer.address, sender=peer.origin))

    def _on_sync_ready(self, message: SyncReady, peer: Peer | None, now: float) -> None:
        """A member's SyncReady; *peer* None: our own participant's."""
        origin = self._node.origin if peer is None else peer.origin
        if self._member(message.barrier, origin) is None:
            if peer is not None:
                self._turn_away(message.barrier, peer)
            return
        inbound = Inbound(None if peer is None else peer.address, message.digest, sender=origin)
        self._coordinate(Call.READY, message.barrier, now, inbound)

    def _member(self, barrier: BarrierId, origin: Origin) -> Member | None:
        """The member *origin* of the barrier we coordinate, if *barrier* is that one."""
        coord = self._coord
        if coord is None or coord.barrier != barrier:
            return None
        return coord.members.get(origin)

    def _on_sync_done(self, barrier: BarrierId, peer: Peer) -> None:
        closing = self._closing.get(barrier)
        if closing is not None:
            closing.pending.pop(peer.origin, None)

    # --- initiator: actions -------------------------------------------------------

    def _open(self, barrier: BarrierId, now: float, inbound: Inbound) -> None:
        """Coordinate *barrier*: we are a member, joined; every live peer is invited."""
        node = self._node
        members = {node.origin: Member(None, Status.JOINED, now)}
        for peer in node.live_peers():
            members[peer.origin] = Member(peer.address, Status.INVITED, now)
        self._coord = Coordination(barrier, now, now + node.settings.sync_freeze_max_s, members)
        self._count("barriers_started")

    def _join_own(self, barrier: BarrierId, now: float, inbound: Inbound) -> None:
        self._step(Input.START, barrier, now)

    def _invite(self, barrier: BarrierId, now: float, inbound: Inbound) -> None:
        """(Re)send SyncStart to members that have not joined; drop the long-silent."""
        coord = self._coord
        assert coord is not None
        join_timeout = self._node.settings.sync_freeze_max_s / 4
        for origin, member in list(coord.members.items()):
            if member.status is not Status.INVITED:
                continue
            if now - member.invited_at >= join_timeout:
                del coord.members[origin]
                self._count("barrier_members_dropped")
            elif member.address is not None:
                self._send(SyncStart(coord.barrier), member.address)
        coord.next_send = now + self._node.settings.sync_retry_s

    def _mark_joined(self, barrier: BarrierId, now: float, inbound: Inbound) -> None:
        coord = self._coord
        assert coord is not None
        assert inbound.sender is not None
        member = coord.members[inbound.sender]
        if member.status is Status.INVITED:
            member.status = Status.JOINED

    def _record_ready(self, barrier: BarrierId, now: float, inbound: Inbound) -> None:
        """Note the member's digest and acknowledge it."""
        coord = self._coord
        assert coord is not None
        assert inbound.sender is not None
        own = inbound.sender == self._node.origin
        member = coord.members[inbound.sender]
        member.status = Status.JOINED
        member.digest = inbound.digest
        if own:
            assert self._part is not None
            self._part.acked = True
        else:
            assert inbound.address is not None
            self._send(SyncReadyAck(barrier, inbound.digest), inbound.address)

    def _check_agreement(self, barrier: BarrierId, now: float, inbound: Inbound) -> None:
        coord = self._coord
        assert coord is not None
        digest = coord.agreed_digest()
        if digest is not None:
            self._coordinate(Call.AGREED, barrier, now, Inbound(digest=digest))

    def _close_commit(self, barrier: BarrierId, now: float, inbound: Inbound) -> None:
        self._close(now, inbound.digest)

    def _close_abort(self, barrier: BarrierId, now: float, inbound: Inbound) -> None:
        self._close(now, None)

    def _commit_own(self, barrier: BarrierId, now: float, inbound: Inbound) -> None:
        self._step(Input.COMMIT, barrier, now, Inbound(None, inbound.digest))

    def _abort_own(self, barrier: BarrierId, now: float, inbound: Inbound) -> None:
        self._step(Input.ABORT, barrier, now, Inbound(reason=inbound.reason))

    # --- initiator: helpers -------------------------------------------------------

    def _close(self, now: float, digest: bytes | None) -> None:
        """Stop coordinating: tell every member to commit *digest* (or abort, if None)
        and keep telling them until each acknowledges. Our own part is the caller's."""
        coord = self._coord
        assert coord is not None
        self._coord = None
        pending = {
            origin: member.address
            for origin, member in coord.members.items()
            if member.address is not None
        }
        give_up_at = now + 2 * self._node.settings.sync_freeze_max_s
        closing = Closing(coord.barrier, digest, pending, give_up_at)
        self._closing[coord.barrier] = closing
        self._repeat_closing(closing, now)

    def _repeat_closing(self, closing: Closing, now: float) -> None:
        for address in closing.pending.values():
            if closing.digest is None:
                self._send(SyncAbort(closing.barrier), address)
            else:
                self._send(SyncCommit(closing.barrier, closing.digest), address)
        closing.next_send = now + self._node.settings.sync_retry_s

    def _turn_away(self, barrier: BarrierId, peer: Peer) -> None:
        """A peer took part in a barrier of ours that no longer counts it (it was dropped,
        or the barrier ended without it, as after a stall): tell it to leave, so it
        does not sit frozen until its own deadline, refusing every later barrier."""
        closing = self._closing.get(barrier)
        if barrier.initiator != self._node.node_id or (closing and peer.origin in closing.pending):
            return  # not ours, or a member the closing message is still on its way to
        self._count("barrier_strays_turned_away")
        self._send(SyncAbort(barrier), peer.address)


InitiatorAction = Callable[[Initiator, BarrierId, float, Inbound], None]

_CLOSE_ABORT = (Initiator._close_abort, Initiator._abort_own)

INITIATOR: dict[tuple[Phase, Call], tuple[tuple[InitiatorAction, ...], Phase]] = {
    (Phase.IDLE, Call.INITIATE): (
        (Initiator._open, Initiator._join_own, Initiator._invite, Initiator._check_agreement),
        Phase.COORDINATING,
    ),
    # Our participant left our barrier early (a stray commit or abort): start afresh.
    (Phase.COORDINATING, Call.INITIATE): (
        (
            Initiator._close_abort,
            Initiator._open,
            Initiator._join_own,
            Initiator._invite,
            Initiator._check_agreement,
        ),
        Phase.COORDINATING,
    ),
    (Phase.COORDINATING, Call.JOIN): ((Initiator._mark_joined,), Phase.COORDINATING),
    (Phase.COORDINATING, Call.READY): (
        (Initiator._record_ready, Initiator._check_agreement),
        Phase.COORDINATING,
    ),
    (Phase.COORDINATING, Call.RETRY): (
        (Initiator._invite, Initiator._check_agreement),
        Phase.COORDINATING,
    ),
    (Phase.COORDINATING, Call.AGREED): (
        (Initiator._close_commit, Initiator._commit_own),
        Phase.IDLE,
    ),
    (Phase.COORDINATING, Call.REFUSED): (_CLOSE_ABORT, Phase.IDLE),
    (Phase.COORDINATING, Call.DEADLINE): (_CLOSE_ABORT, Phase.IDLE),
    (Phase.COORDINATING, Call.LOST): ((Initiator._close_abort,), Phase.IDLE),
}
"""The initiator side: (phase, input) -> (actions, next phase); anything else is counted
(``coordinator_ignored_<input>``) and ignored. A SyncJoin or SyncReady about a barrier
we do not coordinate, or from a node that is not (or no longer) a member, never reaches
it: the sender is turned away (`Initiator._turn_away`)."""
