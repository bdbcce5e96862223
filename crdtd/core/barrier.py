"""The full sync (barrier): Work -> Sync -> Ready -> Work, then fold the log into the base.

This module holds the vocabulary and the state of one barrier: the modes and inputs of
a participant, the phases and inputs of an initiator, what a cut is. `crdtd.core.sync`
holds the two transition tables, whose actions are its methods, and runs them for a
node.

Theory of operation. One node, the *initiator*, coordinates a barrier ``BarrierId(epoch,
initiator, serial)``; every node it knows is a *participant*, itself included.

1. The initiator sends ``SyncStart`` by unicast to each participant and retries until it
   gets ``SyncJoin``. A participant that never answers within ``join_timeout_s`` is left
   out; a peer that appears during the barrier is pulled in. Joining freezes local writes
   (they are held, not refused) and makes the participant announce at once, so every
   participant quickly learns what every other one holds.
2. A participant fills its holes from the digests that the other participants announce
   while frozen (plain gap repair). When it holds every op any of them holds, it takes a
   *cut* (per variable and origin: the highest contiguous nonce, and the prefix total up
   to it) and sends ``SyncReady`` with a digest of that cut, retrying until
   ``SyncReadyAck``. If more ops arrive, its cut changes and it sends ``SyncReady`` again.
3. When every participant reported the same digest, the initiator sends ``SyncCommit``
   (retried until ``SyncDone``); each participant folds exactly the cut it named by that
   digest and returns to Work. So Sync -> Work happens only after every participant
   acknowledged the initiator's messages and the initiator acknowledged theirs.
4. Otherwise the barrier aborts: the initiator after ``freeze_max_s`` sends
   ``SyncAbort``; any participant leaves on its own after ``freeze_max_s`` too. Either
   way everyone is back in Work within the freeze bound, and no fold happened unless the
   digests agreed.

Why folding is always safe (docs/protocol.md says it at length): a cut names, per origin,
a prefix 1..n of that origin's ops, all held; folding replaces exactly those ops by their
sum, and any other replica's base for the same origin is a prefix of the same sequence.
Merging two bases keeps the longer prefix. So a late commit, a missed commit, an old op
arriving after the fold, or two partitions that both folded, all merge exactly.

Two barriers at once: the smaller ``BarrierId`` wins. A participant of the larger one
switches; a node that is in the smaller one refuses the larger one's ``SyncStart`` with
``SyncAbort``, and an initiator that is refused aborts and lets the winner pull it in.
"""

from __future__ import annotations

import enum
import hashlib
from dataclasses import dataclass, field

from crdtd.core.counters import Counter
from crdtd.core.ids import Address, Origin
from crdtd.core.messages import BarrierId


class Input(enum.Enum):
    """What moves a participant; `crdtd.core.participant.PARTICIPANT` says where to."""

    START = "start"  # SyncStart for a barrier better than ours (or any, in Work)
    START_WORSE = "start_worse"  # SyncStart for a barrier that loses to ours
    COMPLETE = "complete"  # we hold everything every participant holds
    CHANGED = "changed"  # our cut changed after we reported Ready
    COMMIT = "commit"
    ABORT = "abort"
    DEADLINE = "deadline"  # freeze_max_s passed


class Phase(enum.Enum):
    """The initiator side of a node: coordinating a barrier of its own, or not."""

    IDLE = "idle"
    COORDINATING = "coordinating"


class Call(enum.Enum):
    """What moves the initiator side; `crdtd.core.initiator.INITIATOR` says where to."""

    INITIATE = "initiate"  # start_sync, or our turn in the schedule
    JOIN = "join"  # a member's SyncJoin
    READY = "ready"  # a member's SyncReady (our own participant's too)
    RETRY = "retry"  # sync_retry_s passed: invite again, drop the long-silent
    AGREED = "agreed"  # every member reported the same digest
    REFUSED = "refused"  # a member answered SyncAbort: it is in an earlier barrier
    LOST = "lost"  # our own participant switched to an earlier barrier
    DEADLINE = "deadline"  # freeze_max_s passed


Cut = dict[tuple[str, Origin], tuple[int, int]]
"""Per (variable, origin): (upto, prefix total). What a barrier folds."""


def take_cut(counters: dict[str, Counter]) -> tuple[bytes, Cut]:
    """The cut of everything held contiguously, and a 16-byte digest naming it exactly."""
    cut: Cut = {}
    digest = hashlib.sha256()
    for name in sorted(counters):
        counter = counters[name]
        for origin in counter.origins():
            upto = counter.watermark(origin)
            if upto == 0:
                continue
            total = counter.prefix_total(origin, upto)
            cut[(name, origin)] = (upto, total)
            digest.update(
                f"{name}\0{origin.node_id}\0{origin.incarnation}\0{upto}\0{total}\n".encode()
            )
    return digest.digest()[:16], cut


@dataclass(slots=True)
class Participation:
    """This node's part in one barrier (initiator or not)."""

    barrier: BarrierId
    initiator_address: Address | None  # None when we are the initiator
    entered_at: float
    deadline: float
    reported: bytes | None = None  # digest of the cut we last sent in SyncReady
    acked: bool = False
    next_send: float = 0.0
    cuts: dict[bytes, Cut] = field(default_factory=dict)


class Status(enum.Enum):
    INVITED = "invited"
    JOINED = "joined"


@dataclass(slots=True)
class Member:
    address: Address | None  # None: the initiator itself
    status: Status
    invited_at: float
    digest: bytes | None = None


@dataclass(slots=True)
class Coordination:
    """The initiator's view of its barrier: who takes part and what each reported."""

    barrier: BarrierId
    started_at: float
    deadline: float
    members: dict[Origin, Member]
    next_send: float = 0.0

    def agreed_digest(self) -> bytes | None:
        """The one digest every member reported, or None while they differ or wait."""
        digests = {member.digest for member in self.members.values()}
        if len(digests) != 1:
            return None
        (digest,) = digests
        return digest


@dataclass(slots=True)
class Closing:
    """A message the initiator repeats after it finished, until each member acks."""

    barrier: BarrierId
    digest: bytes | None  # None: an abort
    pending: dict[Origin, Address]
    give_up_at: float
    next_send: float = 0.0
