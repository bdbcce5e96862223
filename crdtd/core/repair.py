"""Gap repair: noticing holes in an origin's nonces, asking one holder for exactly what is
missing, and answering other nodes' asks within a byte budget.

A hole seen (from a later op, a base, or a peer's announced watermark) becomes a *want*.
After a random delay, so that many nodes missing the same datagram do not ask at once,
the node asks one holder by unicast ``Nack``: the origin if it is alive, then whoever
revealed the hole, then a random live peer whose digest covers it; retries come flat and
short at first (`retry_after`), then back off exponentially, with jitter, and may change
holder, until the hole is filled. A want that no live peer can fill is dropped (a live
peer's announce reveals it again).

`Tail` is the other half of the lossy tail: after a burst of our fresh ops, a short train
of small digests naming only what changed, so that a lost *last* op is noticed in tens
of ms rather than at our next announce.

A holder answers with the ops it has and, for nonces it has folded, its base, never more
than ``repair_bytes_max`` per Nack nor ``repair_bytes_per_s`` per address: a Nack never
amplifies much.

Like `crdtd.core.sync`, `Repairs` never calls into the node: the counters and peers come
in as arguments and each call returns effects (`SendNack`, `SendOps`, `SendBases`,
`Report`, `Count`) for the node to carry out in order. The random stream is the node's,
drawn in the same order as ever, so a run stays a function of its seed.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from crdtd.core import wire
from crdtd.core.counters import Counter
from crdtd.core.effects import Count, Report
from crdtd.core.events import GapRepaired
from crdtd.core.ids import Address, Origin
from crdtd.core.messages import BaseEntry, Grave, Nack, NackRange, OpGroup
from crdtd.core.peers import Peer
from crdtd.core.settings import Settings

__all__ = [
    "Count",
    "Effect",
    "Repairs",
    "Report",
    "SendBases",
    "SendNack",
    "SendOps",
    "Tail",
    "Want",
    "retry_after",
]


def retry_after(settings: Settings, attempt: int) -> float:
    """The pause (before jitter) after the *attempt*-th Nack of a want: flat and short
    for ``nack_retries_flat`` attempts (a lossy link repairs in tens of ms), then
    doubling up to ``nack_retry_max_s`` (a holder that never answers is not flooded)."""
    doublings = max(0, attempt - settings.nack_retries_flat)
    return min(settings.nack_retry_s * (1 << min(doublings, 32)), settings.nack_retry_max_s)


@dataclass(slots=True)
class Want:
    """A hole to fill: every nonce up to ``high`` of (variable, origin) exists somewhere."""

    high: int
    due: float
    attempt: int = 0
    hint: Origin | None = None  # the peer that revealed the hole
    first: int = 0  # the first nonce missing when the hole was noticed


@dataclass(frozen=True, slots=True)
class SendNack:
    ranges: list[NackRange]
    address: Address


@dataclass(frozen=True, slots=True)
class SendOps:
    groups: list[OpGroup]
    address: Address


@dataclass(frozen=True, slots=True)
class SendBases:
    entries: list[BaseEntry]
    address: Address


@dataclass(frozen=True, slots=True)
class SendGraves:
    """The graves of the variables a repair answers for, sent before its bases and
    ops: a node that missed a delete buries those ops before it could show them."""

    graves: list[Grave]
    address: Address


Effect = SendNack | SendOps | SendBases | SendGraves | Report | Count


class Repairs:
    """The wants of one node, and the repair budgets of the addresses that ask it."""

    def __init__(self, settings: Settings, rng: random.Random) -> None:
        self._settings = settings
        self._rng = rng
        self.wants: dict[tuple[str, Origin], Want] = {}
        self._budgets: dict[Address, tuple[float, float]] = {}  # -> (tokens, when)
        self._effects: list[Effect] = []

    # --- holes --------------------------------------------------------------------

    def changed(
        self, counter: Counter, origin: Origin, seen: int, hint: Origin | None, now: float
    ) -> list[Effect]:
        """*counter* moved for *origin*, which holds nonces up to *seen*: note a hole
        below it, or close the want that this change filled."""
        key = (counter.name, origin)
        mark = counter.watermark(origin)
        want = self.wants.get(key)
        if want is None:
            if mark < seen:
                self._want(counter, origin, seen, hint, now)
        elif mark >= want.high:
            del self.wants[key]
            self._effects.append(Count("gaps_repaired"))
            self._effects.append(Report(GapRepaired(counter.name, origin, want.first, want.high)))
        elif mark >= want.first:
            # Progress: a repair is streaming in; ask for the rest soon, from the start.
            want.first = mark + 1
            want.attempt = 0
            want.due = min(want.due, now + self._settings.nack_retry_s)
        return self._drain()

    def want(
        self, counter: Counter, origin: Origin, high: int, hint: Origin | None, now: float
    ) -> list[Effect]:
        """Every nonce of *origin* up to *high* exists: *hint* holds them."""
        self._want(counter, origin, high, hint, now)
        return self._drain()

    def ask(
        self, counters: dict[str, Counter], peers: dict[Origin, Peer], now: float
    ) -> list[Effect]:
        """Ask for every due hole, one Nack per chosen holder."""
        settings = self._settings
        by_holder: dict[Origin, list[NackRange]] = {}
        for (variable, origin), want in list(self.wants.items()):
            if want.due > now:
                continue
            counter = counters[variable]
            if counter.watermark(origin) >= want.high:
                del self.wants[(variable, origin)]
                continue
            holder = self._holder(variable, origin, counter.watermark(origin) + 1, want, peers)
            want.attempt += 1
            want.due = now + retry_after(settings, want.attempt) * self._rng.uniform(1.0, 1.5)
            if holder is None:
                # Nobody live can fill it (an invented origin, or its holders went
                # quiet): forget it; a live peer's announce will reveal it again.
                del self.wants[(variable, origin)]
                self._effects.append(Count("wants_unanswerable"))
                continue
            missing = counter.missing(origin, want.high, settings.nack_ranges_max)
            by_holder.setdefault(holder, []).extend(
                NackRange(variable, origin, first, last) for first, last in missing
            )
        for holder, ranges in by_holder.items():
            self._effects.append(Count("nacks_sent"))
            self._effects.append(SendNack(ranges, peers[holder].address))
        return self._drain()

    def deadlines(self) -> list[float]:
        return [want.due for want in self.wants.values()]

    # --- answering ----------------------------------------------------------------

    def serve(
        self, message: Nack, address: Address, counters: dict[str, Counter], now: float
    ) -> list[Effect]:
        """Answer with what we hold of the ranges, within ``repair_bytes_max`` per
        request and ``repair_bytes_per_s`` per address."""
        allowance = self._allowance(address, now)
        budget = min(self._settings.repair_bytes_max, allowance)
        if budget < wire.OP_BYTES:
            self._effects.append(Count("repairs_rate_limited"))
            return self._drain()
        groups: list[OpGroup] = []
        bases: list[BaseEntry] = []
        graves: dict[str, Grave] = {}
        for wanted in message.ranges:
            counter = counters.get(wanted.variable)
            if counter is None or budget <= 0:
                continue
            if counter.grave is not None and wanted.variable not in graves:
                marks = tuple((o, upto, total) for o, (upto, total) in counter.grave.items())
                graves[wanted.variable] = Grave(wanted.variable, marks)
                budget -= wire.BASE_BYTES * max(1, len(marks))
            first = wanted.first
            base = counter.bases.get(wanted.origin)
            if base is not None and first <= base[0]:
                bases.append(BaseEntry(wanted.variable, wanted.origin, base[0], base[1]))
                budget -= wire.BASE_BYTES
                first = base[0] + 1
            ops: list[tuple[int, int]] = []
            for op in counter.ops_in(wanted.origin, first, wanted.last):
                if budget < wire.OP_BYTES:
                    self._effects.append(Count("repair_truncated"))
                    break
                ops.append(op)
                budget -= wire.OP_BYTES
            if ops:
                groups.append(OpGroup(wanted.variable, wanted.origin, tuple(ops)))
        self._effects.append(Count("nacks_received"))
        spent = min(self._settings.repair_bytes_max, allowance) - budget
        self._budgets[address] = (float(allowance - spent), now)
        if graves:
            self._effects.append(SendGraves(list(graves.values()), address))
        if bases:
            self._effects.append(SendBases(bases, address))
        if groups:
            self._effects.append(SendOps(groups, address))
            self._effects.append(Count("repairs_served"))
        return self._drain()

    def forget(self, address: Address) -> None:
        """No peer is at *address* any more: its budget starts full again."""
        self._budgets.pop(address, None)

    # --- helpers ------------------------------------------------------------------

    def _want(
        self, counter: Counter, origin: Origin, high: int, hint: Origin | None, now: float
    ) -> None:
        key = (counter.name, origin)
        want = self.wants.get(key)
        if want is None:
            if len(self.wants) >= self._settings.wants_max:
                self._effects.append(Count("wants_max_reached"))  # announces reveal it again
                return
            delay = self._rng.uniform(
                self._settings.nack_delay_min_s, self._settings.nack_delay_max_s
            )
            self.wants[key] = Want(
                high, now + delay, hint=hint, first=counter.watermark(origin) + 1
            )
            self._effects.append(Count("gaps_detected"))
        elif high > want.high:
            want.high = high

    def _holder(
        self, variable: str, origin: Origin, first: int, want: Want, peers: dict[Origin, Peer]
    ) -> Origin | None:
        """The origin first, then whoever revealed the hole, then any peer that covers it."""
        key = (variable, origin)
        live = [peer for _, peer in sorted(peers.items()) if not peer.suspected]
        covering = [p.origin for p in live if p.marks.get(key, 0) >= first]
        preferred = [
            candidate
            for candidate in dict.fromkeys((origin, want.hint))
            if candidate is not None and candidate in peers and not peers[candidate].suspected
        ]
        if want.attempt < len(preferred):
            return preferred[want.attempt]
        candidates = covering or preferred
        return self._rng.choice(candidates) if candidates else None

    def _allowance(self, address: Address, now: float) -> int:
        """Bytes we may still send *address* now: a bucket of ``repair_bytes_per_s``."""
        rate = self._settings.repair_bytes_per_s
        tokens, then = self._budgets.get(address, (float(rate), now))
        return int(min(float(rate), tokens + (now - then) * rate))

    def _drain(self) -> list[Effect]:
        effects, self._effects = self._effects, []
        return effects


class Tail:
    """The variables of our latest burst of fresh ops, and when to name them again.

    A lost op is noticed when a later one arrives; the *last* op of a burst has no later
    one, and without a tail it would wait for our next announce. So after each burst the
    node multicasts a short train of small digests (one at each gap of
    ``tail_digests_s``) naming only the variables it wrote, with our own watermark: a
    peer that lost the burst sees the hole in tens of ms. A new burst restarts the train,
    so a node that writes steadily sends none: its next ops reveal holes anyway. Each
    variable is named in at most one train's worth of digests after its last write, so
    a digest names only what was written lately, never everything written since the
    writes began (writes spaced about one gap apart restart the train forever).
    """

    def __init__(self, settings: Settings) -> None:
        self._gaps = settings.tail_digests_s
        self._variables: dict[str, int] = {}  # -> digests that named it since its write
        self._sent = 0
        self._due: float | None = None

    def burst(self, variable: str, now: float) -> None:
        """A fresh op (or a new variable) of ours leaves in this step's batch."""
        if not self._gaps:
            return
        self._variables[variable] = 0
        self._sent = 0
        self._due = now + self._gaps[0]

    def due(self, now: float) -> list[str]:
        """The variables to name in a tail digest now (none if it is not due)."""
        if self._due is None or self._due > now:
            return []
        variables = list(self._variables)
        train = len(self._gaps)
        named = {variable: count + 1 for variable, count in self._variables.items()}
        self._variables = {variable: count for variable, count in named.items() if count < train}
        self._sent += 1
        if self._sent < train and self._variables:
            self._due = now + self._gaps[self._sent]
        else:
            self._variables, self._due = {}, None
        return variables

    def deadlines(self) -> list[float]:
        return [] if self._due is None else [self._due]
