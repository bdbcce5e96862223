"""The barrier's two tables are its only authority: every (mode, input) and (phase,
input) pair is walked here, from a state reached by real inputs, and the Syncer must
end where the table says (or, for a pair not in the table, stay where it was and count
the input as ignored). After every step, the mode and phase agree with the state the
Syncer keeps: a participation exactly when not in Work, a coordination exactly when
coordinating."""

from __future__ import annotations

import itertools

import pytest

from crdtd.core.barrier import Call, Input, Phase
from crdtd.core.counters import Counter
from crdtd.core.ids import Origin
from crdtd.core.messages import BarrierId, SyncStart
from crdtd.core.modes import Mode
from crdtd.core.peers import Peer
from crdtd.core.settings import Settings
from crdtd.core.sync import INITIATOR, PARTICIPANT, Count, Inbound, Syncer

NOW = 100.0
ME = Origin("m", 1)
PEER = Peer("p", 1, ("10.0.0.2", 7000), last_seen=NOW)
OURS = BarrierId(5, "p", 10)
EARLIER = BarrierId(4, "a", 1)  # wins over OURS
LATER = BarrierId(6, "z", 1)  # loses to OURS


class View:
    """A node with one live peer and no counters, as the Syncer reads it."""

    def __init__(self) -> None:
        self.node_id = ME.node_id
        self.origin = ME
        self.settings = Settings(sync_interval_s=0)
        self.epoch = 0
        self.counters: dict[str, Counter] = {}
        self.peers = {PEER.origin: PEER}
        self.last_seq = 0

    def live_peers(self) -> list[Peer]:
        return [PEER]


def consistent(syncer: Syncer) -> None:
    assert (syncer.mode is Mode.WORK) == (syncer.barrier is None)
    assert (syncer.phase is Phase.COORDINATING) == (syncer._coord is not None)


def participant_in(mode: Mode) -> Syncer:
    """A participant of OURS (initiated by PEER) in *mode*, reached by real inputs."""
    syncer = Syncer(View(), NOW)
    if mode is not Mode.WORK:
        syncer.receive(SyncStart(OURS), PEER, NOW)
    if mode is Mode.READY:
        syncer.progress(NOW)  # no peer reported marks: we hold everything
    assert syncer.mode is mode
    return syncer


PARTICIPANT_INPUTS = {
    Input.START: (EARLIER, Inbound(PEER.address)),
    Input.START_WORSE: (LATER, Inbound(PEER.address)),
    Input.COMPLETE: (OURS, Inbound()),
    Input.CHANGED: (OURS, Inbound()),
    Input.COMMIT: (OURS, Inbound(PEER.address)),  # a digest we never cut: an abort
    Input.ABORT: (OURS, Inbound(PEER.address, reason="aborted by initiator")),
    Input.DEADLINE: (OURS, Inbound(reason="freeze_max_s passed")),
}


@pytest.mark.parametrize(("mode", "event"), list(itertools.product(Mode, Input)))
def test_every_participant_pair_ends_where_the_table_says(mode: Mode, event: Input) -> None:
    syncer = participant_in(mode)
    consistent(syncer)
    barrier, inbound = PARTICIPANT_INPUTS[event]
    syncer._step(event, barrier, NOW + 1, inbound)
    entry = PARTICIPANT.get((mode, event))
    if entry is None:
        assert syncer.mode is mode
        assert syncer._drain() == [Count(f"barrier_ignored_{event.value}")]
    else:
        assert syncer.mode is entry[1]
    consistent(syncer)


def initiator_in(phase: Phase) -> tuple[Syncer, BarrierId]:
    """A node coordinating its own barrier (PEER invited), or idle."""
    syncer = Syncer(View(), NOW)
    if phase is Phase.COORDINATING:
        syncer.start(ticket=1, now=NOW)
    assert syncer.phase is phase
    barrier = syncer._coord.barrier if syncer._coord is not None else BarrierId(1, "m", 1)
    return syncer, barrier


INITIATOR_INPUTS = {
    Call.INITIATE: Inbound(),
    Call.JOIN: Inbound(PEER.address, sender=PEER.origin),
    Call.READY: Inbound(PEER.address, b"d" * 16, sender=PEER.origin),
    Call.RETRY: Inbound(),
    Call.AGREED: Inbound(digest=b"d" * 16),
    Call.REFUSED: Inbound(reason="refused by p"),
    Call.LOST: Inbound(),
    Call.DEADLINE: Inbound(reason="freeze_max_s passed"),
}


@pytest.mark.parametrize(("phase", "event"), list(itertools.product(Phase, Call)))
def test_every_initiator_pair_ends_where_the_table_says(phase: Phase, event: Call) -> None:
    syncer, barrier = initiator_in(phase)
    consistent(syncer)
    syncer._coordinate(event, barrier, NOW + 1, INITIATOR_INPUTS[event])
    entry = INITIATOR.get((phase, event))
    if entry is None:
        assert syncer.phase is phase
        assert syncer._drain() == [Count(f"coordinator_ignored_{event.value}")]
    else:
        assert syncer.phase is entry[1]
    consistent(syncer)


def test_every_input_of_both_sides_is_walked() -> None:
    assert set(PARTICIPANT_INPUTS) == set(Input)
    assert set(INITIATOR_INPUTS) == set(Call)
    assert {event for _, event in PARTICIPANT} == set(Input)
    assert {event for _, event in INITIATOR} == set(Call)
