"""Our announce: when it goes, what it names, and the summary exchange with peers.

Theory of operation. Every ``announce_interval_s`` times the pace (which grows with the
cluster beyond `crdtd.core.settings.PACE_NODES` nodes; jittered; faster in a barrier) a
node multicasts, in this order: the graves it keeps (a node that missed a delete buries
those ops before it could show them), an `Announce` naming only the shown variables
whose marks changed since the last one, and a `Summary`: the count of shown variables
and a hash over all their marks (`crdtd.core.summary`, kept up to date from every
effect that moves a mark, `Announcer.touch`). A peer whose own hash differs (twice in
a row, right after its own write) asks for our full announce (`SummaryRequest`), at
most once per peer every 2 intervals and of one peer per interval; we answer only
live peers that announced themselves, at most `SUMMARY_REPLIES_PER_INTERVAL` times per
interval in all. The announce carries every shown variable in a barrier (participants
judge from each other's full marks whether they hold everything) and while a live peer
never sent a summary (a node of 0.1, which reads none). After a burst of our own ops,
`crdtd.core.repair.Tail` times a few small digests naming only that burst, so a peer
that lost its last op sees the hole soon.

Like the node's other sub-machines it reads the node through a view (`Standing`) and
returns effects: datagrams to queue (`Multicast`, `Unicast`) and counters (`Count`).
"""

from __future__ import annotations

import random
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass

from crdtd.core import wire
from crdtd.core.counters import Counter
from crdtd.core.effects import Count
from crdtd.core.ids import Address, Origin
from crdtd.core.messages import BarrierId, Summary, VariableDigest
from crdtd.core.modes import Mode
from crdtd.core.peers import Peer
from crdtd.core.repair import Tail
from crdtd.core.replica import Replica
from crdtd.core.settings import Settings
from crdtd.core.summary import Summary as Hashes

SUMMARY_REPLIES_PER_INTERVAL = 4
"""Full announces a node sends on request (`SummaryRequest`) per announce interval."""
IN_FLIGHT_S = 0.1
"""How long after a fresh op of ours a peer's differing summary may be one that left
before the op reached it (`Announcer.on_summary`): a datagram's trip on a LAN and the
peer's step, with room to spare; the tail digests' whole train fits in it."""


@dataclass(frozen=True, slots=True)
class Multicast:
    payloads: list[bytes]


@dataclass(frozen=True, slots=True)
class Unicast:
    payloads: list[bytes]
    address: Address


Effect = Multicast | Unicast | Count


@dataclass(frozen=True, slots=True)
class Standing:
    """What an announce says of the node besides its marks, read as the node is now."""

    origin: Origin
    mode: Mode
    epoch: int
    barrier: BarrierId | None
    live_peers: list[Peer]
    pace: float
    """Announce intervals between two announces in Work (`Membership.pace`)."""


class Announcer:
    """The announces of one node; ``encoder`` is the node's current one (it changes
    with the keys), read at each call."""

    def __init__(
        self,
        settings: Settings,
        rng: random.Random,
        replica: Replica,
        encoder: Callable[[], wire.Encoder],
        now: float,
    ) -> None:
        self.settings = settings
        self._rng = rng
        self._replica = replica
        self._encoder = encoder
        self._next = now
        self._tail = Tail(settings)
        self._hashes = Hashes()
        self._asked_at: float | None = None
        self._burst_at = -1e300  # our last fresh op
        self._replies: list[float] = []  # when we sent our full announce by request

    def restored(self) -> None:
        """The counters came back from the store: our first announce carries them all."""
        self._hashes.touch_all(self._replica.counters)

    # --- what moves the summary ---------------------------------------------------

    def touch(self, variable: str) -> None:
        """*variable*'s marks (or its being shown) changed: it is in the next delta."""
        self._hashes.touch(variable)

    def burst(self, variable: str, now: float) -> None:
        """A fresh op of ours (or a new local variable) leaves in this step's batch."""
        self._tail.burst(variable, now)
        self._burst_at = now

    def summary_hash(self) -> bytes:
        """The hash our summary carries, brought up to date (`crdtd.core.summary`)."""
        self._hashes.refresh(self._replica.counters)
        return self._hashes.digest()

    @property
    def summary_count(self) -> int:
        return self._hashes.count

    # --- the timer ----------------------------------------------------------------

    def deadlines(self) -> list[float]:
        return [self._next, *self._tail.deadlines()]

    def due(self, now: float) -> bool:
        return now >= self._next

    def tail(self, standing: Standing, now: float) -> list[Effect]:
        """The tail digest due now, if one is: our own watermark of the burst's
        variables, a partial announce, which only ever adds to what a peer knows."""
        counters = self._replica.counters
        digests = [
            VariableDigest(
                variable, ((standing.origin, counters[variable].watermark(standing.origin)),)
            )
            for variable in self._tail.due(now)
            if variable in counters and not counters[variable].buried
        ]
        if not digests:
            return []
        payloads = self._encoder().announce(
            standing.mode, standing.epoch, standing.barrier, digests
        )
        return [Multicast(payloads), Count("tail_digests_sent")]

    def announce(self, standing: Standing, now: float) -> tuple[list[bytes], list[Effect]]:
        """Our announce now (see the module docstring), and the next one scheduled; its
        datagrams (the graves' aside), which a probed address gets too."""
        changed = self._hashes.take_changed(self._replica.counters)
        effects: list[Effect] = []
        graves = self._replica.graves(self._hashes.graved)
        if graves:
            effects.append(Multicast(self._encoder().graves(graves)))
        encoder = self._encoder()
        mode, epoch, barrier = standing.mode, standing.epoch, standing.barrier
        if self._full_needed(standing):
            payloads = self.full(standing)
        else:
            payloads = self._delta(standing, changed)
        summary = self._hashes
        payloads.append(encoder.summary(mode, epoch, barrier, summary.count, summary.digest()))
        effects += [Multicast(payloads), Count("announces_sent")]
        interval = self.settings.announce_interval_s
        if mode is Mode.WORK:
            interval *= standing.pace
        else:
            interval = min(interval, self.settings.sync_freeze_max_s / 8)
        self._next = now + interval * self._rng.uniform(0.9, 1.1)
        return payloads, effects

    def full(self, standing: Standing) -> list[bytes]:
        """The datagrams of an announce naming every shown variable (one even if it
        names none: the mode, epoch and barrier still go)."""
        digests = _digests(self._replica.counters, sorted(self._replica.counters))
        return self._encoder().announce(standing.mode, standing.epoch, standing.barrier, digests)

    # --- peers' summaries ---------------------------------------------------------

    def on_summary(self, message: Summary, peer: Peer, now: float) -> list[Effect]:
        """A peer's summary: note its mode, epoch and barrier as an announce does; if
        its hash differs from ours, ask it for its full announce, unless we wrote in
        the last `IN_FLIGHT_S`: then only if its next summary differs too (half an
        interval later at least, so not a summary and its unicast copy).

        Right after a write of ours the difference is most often our op in flight: its
        summary left before our op reached it. Asking then cost a full announce for
        nothing, hundreds of datagrams at 10,000 variables, and the lag of whatever the
        receiver did meanwhile (loopback, 10k variables, 200 lag probes: with one such
        request the two slowest took 33 and 82 ms, without one 17 ms at most). Any
        other difference is asked at once: a hole whose op, tail digests and delta were
        all lost (30% loss: waiting a round for it gave a lag of 1.5 s).
        """
        peer.mode, peer.epoch, peer.barrier = message.mode, message.epoch, message.barrier
        peer.announced_at = now
        first, peer.summarized = not peer.summarized, True
        if message.digest == self.summary_hash() and message.count == self._hashes.count:
            peer.summary_differed_at = None
            return []
        effects: list[Effect] = [Count("summaries_differing")]
        interval = self.settings.announce_interval_s
        since = peer.summary_differed_at
        if since is None:
            peer.summary_differed_at = now
        in_flight = now - self._burst_at < IN_FLIGHT_S
        if in_flight and not first and (since is None or now - since < 0.5 * interval):
            return effects
        if peer.summary_asked_at is not None and now - peer.summary_asked_at < 2 * interval:
            return effects
        if self._asked_at is not None and now - self._asked_at < 0.8 * interval:
            return effects
        peer.summary_asked_at = self._asked_at = now
        request = self._encoder().summary_request()
        return [*effects, Unicast([request], peer.address), Count("summary_requests_sent")]

    def on_summary_request(self, standing: Standing, peer: Peer, now: float) -> list[Effect]:
        """Send *peer* our full announce by unicast: a reply is many times the request,
        so only to a live peer that announced itself, at most once per 0.8 interval per
        peer and `SUMMARY_REPLIES_PER_INTERVAL` times per interval in all (a forger of
        many origins gets no more)."""
        interval = self.settings.announce_interval_s
        served = peer.summary_served_at
        if peer.announced_at is None or peer.suspected:
            return [Count("summary_requests_from_strangers")]
        recent = [when for when in self._replies if now - when < interval]
        too_soon = served is not None and now - served < 0.8 * interval
        if too_soon or len(recent) >= SUMMARY_REPLIES_PER_INTERVAL:
            return [Count("summary_requests_refused")]
        self._replies = [*recent, now]
        peer.summary_served_at = now
        return [Unicast(self.full(standing), peer.address), Count("summary_requests_served")]

    # --- helpers ------------------------------------------------------------------

    def _full_needed(self, standing: Standing) -> bool:
        if standing.mode is not Mode.WORK:
            return True
        return any(not peer.summarized for peer in standing.live_peers)

    def _delta(self, standing: Standing, changed: Sequence[str]) -> list[bytes]:
        digests = _digests(self._replica.counters, changed)
        if not digests:
            return []
        return self._encoder().announce(standing.mode, standing.epoch, standing.barrier, digests)


def _digests(counters: Mapping[str, Counter], names: Iterable[str]) -> list[VariableDigest]:
    """The marks per origin of the shown ones of *names*; a buried one is left out: a
    peer that holds its ops learns the grave, one that lacks them needs none of them,
    and a new node does not make it up again."""
    return [
        VariableDigest(
            name, tuple((o, counters[name].watermark(o)) for o in counters[name].origins())
        )
        for name in names
        if name in counters and not counters[name].buried
    ]
