"""Replication: what peers' ops, bases and digests do to our counters.

Theory of operation. An `OpBatch` is applied op by op (idempotently: a duplicate or an
op at or below a base changes nothing); a `Bases` entry is adopted when it covers more
than ours; a `Graves` entry joins the variable's grave (`bury`); an `Announce` digest
tells which watermarks a peer holds, and every mark above ours becomes a *want* for
`crdtd.core.repair.Repairs`, which this module owns and asks inline, so a repair is
planned against exactly the state it was asked about.
A variable a peer names is created if there is room: up to ``variables_max`` as usual
and, past it, up to `VARIABLES_HARD_FACTOR` times it (so two halves of a cluster that
each stayed under the limit still merge), with one `VariablesOverLimit` report.

Claims about our own current origin are never believed: we hold every op we issued,
so an op, base or watermark of ours that we do not hold is refused (`Refused`), and a
peer holding more of an *earlier* incarnation of ours means our state went back in
time (`Rewound`).

Every call returns effects for the node to carry out, in order: `Persist` (a record),
`Created` (a new variable), `NoteChange` (for the barrier's cuts), `Refused`,
`Rewound`, and those of `Repairs` (`SendNack`, `SendOps`, `SendBases`, `Report`,
`Count`).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from operator import itemgetter

from crdtd.core.counters import Applied, Counter
from crdtd.core.effects import Count, Report
from crdtd.core.events import ValueChanged, VariableDeleted, VariablesOverLimit
from crdtd.core.ids import Origin
from crdtd.core.messages import Announce, Bases, Graves, OpBatch, OpGroup
from crdtd.core.peers import Peer
from crdtd.core.records import BaseFolded, Buried, OpRecorded, OpsRecorded, Record
from crdtd.core.repair import Effect as RepairEffect
from crdtd.core.repair import Repairs
from crdtd.core.settings import Settings

VARIABLES_HARD_FACTOR = 2
"""Peers may bring a node to this many times ``variables_max`` (see `Node.create`)."""


@dataclass(frozen=True, slots=True)
class Persist:
    record: Record


@dataclass(frozen=True, slots=True)
class Created:
    """*variable* is new here: its counter exists now (*local*: made by a local write,
    so it is announced with this step's ops even if it has none)."""

    variable: str
    local: bool = False


@dataclass(frozen=True, slots=True)
class NoteChange:
    """A watermark or base of *variable* moved (a barrier's cut taken before is stale,
    and our summary must rehash *variable*)."""

    variable: str = ""


@dataclass(frozen=True, slots=True)
class Refused:
    """*peer* claimed a *kind* (op, base, mark) of our current origin we never made."""

    kind: str
    variable: str
    nonce: int
    peer: Peer


@dataclass(frozen=True, slots=True)
class Rewound:
    """*peer* holds up to *seen* of our earlier *origin*, which we hold up to *held*."""

    origin: Origin
    variable: str
    held: int
    seen: int
    peer: Peer


Effect = Persist | Created | NoteChange | Refused | Rewound | RepairEffect


class Replication:
    """Peers' replication messages, applied to the node's counters."""

    def __init__(
        self,
        settings: Settings,
        counters: dict[str, Counter],
        peers: Mapping[Origin, Peer],
        repairs: Repairs,
    ) -> None:
        self.origin = Origin("", 0)  # set by the node once it chose its incarnation
        self.settings = settings
        self.repairs = repairs
        self._counters = counters
        self._peers = peers
        self._over_limit = False

    def on_ops(self, batch: OpBatch, peer: Peer, now: float) -> list[Effect]:
        effects: list[Effect] = []
        for group in batch.groups:
            if group.origin == self.origin:
                self._check_own_ops(group, peer, effects)
                continue
            counter = self._remote_variable(group.variable, effects)
            if counter is None:
                continue
            origin = group.origin
            before = counter.value
            ops = group.ops
            if ops and ops[-1][0] - ops[0][0] == len(ops) - 1:  # ascending: a run
                deltas = tuple(map(itemgetter(1), ops))
                if counter.extend(origin, ops[0][0], deltas):
                    effects.append(Persist(OpsRecorded(group.variable, origin, ops[0][0], deltas)))
                    effects.append(Count("ops_applied", len(ops)))
                    ops = ()
            for nonce, delta in ops:
                result = counter.apply(origin, nonce, delta)
                if result is Applied.NEW:
                    effects.append(Persist(OpRecorded(group.variable, origin, nonce, delta)))
                    effects.append(Count("ops_applied"))
                elif result is Applied.DUPLICATE:
                    effects.append(Count("ops_duplicate"))
                else:
                    effects.append(Count("ops_conflicting"))
            if group.ops:
                effects.append(NoteChange(group.variable))
                seen = group.ops[-1][0]
                effects += self.repairs.changed(counter, origin, seen, peer.origin, now)
            if counter.value != before:
                effects.append(Report(ValueChanged(group.variable, counter.value)))
        return effects

    def on_bases(self, message: Bases, peer: Peer, now: float) -> list[Effect]:
        effects: list[Effect] = []
        for entry in message.entries:
            if entry.origin == self.origin:
                # Only a barrier we took part in folds our own ops (`Replica.fold`); a base
                # for them from a peer is at best an echo and at worst a forgery.
                counter = self._counters.get(entry.variable)
                if counter is None or entry.upto > counter.watermark(self.origin):
                    effects.append(Refused("base", entry.variable, entry.upto, peer))
                else:
                    effects.append(Count("bases_duplicate"))
                continue
            counter = self._remote_variable(entry.variable, effects)
            if counter is None:
                continue
            before = counter.value
            if counter.adopt_base(entry.origin, entry.upto, entry.total):
                effects.append(NoteChange(entry.variable))
                base = BaseFolded(entry.variable, entry.origin, entry.upto, entry.total)
                effects += [Persist(base), Count("bases_adopted")]
                effects += self.repairs.changed(counter, entry.origin, entry.upto, None, now)
            if counter.value != before:
                effects.append(Report(ValueChanged(entry.variable, counter.value)))
        return effects

    def on_graves(self, message: Graves, peer: Peer, now: float) -> list[Effect]:
        """Bury what a peer deleted. A mark of our own origin beyond what we issued is
        a claim we refuse; below it, we hold those ops, so the total must be theirs."""
        effects: list[Effect] = []
        for grave in message.graves:
            counter = self._remote_variable(grave.variable, effects)
            if counter is None:
                continue
            marks = []
            for origin, upto, total in grave.marks:
                if origin == self.origin and not self._own_prefix(counter, upto, total):
                    effects.append(Refused("grave", grave.variable, upto, peer))
                    continue
                marks.append((origin, upto, total))
            effects += bury(counter, marks)
        return effects

    def _own_prefix(self, counter: Counter, upto: int, total: int) -> bool:
        """Is (upto, total) a prefix of our own ops on *counter*? Below our base the ops
        are folded: the upto is ours, the total can no longer be checked."""
        origin = self.origin
        if upto > counter.watermark(origin):
            return False
        return upto < counter.base_upto(origin) or counter.prefix_total(origin, upto) == total

    def on_announce(self, message: Announce, peer: Peer, now: float) -> list[Effect]:
        """Note the peer's mode, epoch, barrier and marks; want what it holds beyond us."""
        effects: list[Effect] = []
        peer.mode, peer.epoch, peer.barrier = message.mode, message.epoch, message.barrier
        peer.announced_at = now
        node_id = self.origin.node_id
        for digest in message.digests:
            counter = self._remote_variable(digest.variable, effects)
            if counter is None:
                continue
            for origin, mark in digest.marks:
                held = counter.watermark(origin)
                if origin.node_id == node_id and mark > held:
                    if origin == self.origin:
                        effects.append(Refused("mark", digest.variable, mark, peer))
                        continue  # never wanted: nobody can hold more of us than we do
                    if origin not in self._peers:
                        effects.append(Rewound(origin, digest.variable, held, mark, peer))
                key = (digest.variable, origin)
                if mark > peer.marks.get(key, 0):
                    peer.marks[key] = mark
                if mark > held:
                    effects += self.repairs.want(counter, origin, mark, peer.origin, now)
        return effects

    def _check_own_ops(self, group: OpGroup, peer: Peer, effects: list[Effect]) -> None:
        """Ops of our current origin come back to us (repairs, copies); we hold each one
        we issued, so any other is a claim we refuse, never an op we store."""
        counter = self._counters.get(group.variable)
        origin = self.origin
        for nonce, delta in group.ops:
            if counter and (
                counter.delta(origin, nonce) == delta or nonce <= counter.base_upto(origin)
            ):
                effects.append(Count("ops_duplicate"))
            else:
                effects.append(Refused("op", group.variable, nonce, peer))

    def _remote_variable(self, variable: str, effects: list[Effect]) -> Counter | None:
        """The counter a peer's message names, created if there is room for it."""
        counter = self._counters.get(variable)
        if counter is not None:
            return counter
        counters = self._counters
        limit = self.settings.variables_max
        hard = VARIABLES_HARD_FACTOR * limit
        if len(counters) >= hard:
            effects.append(Count("variables_hard_max_reached"))
            return None
        if len(counters) >= limit:
            effects.append(Count("variables_over_limit"))
            if not self._over_limit:
                self._over_limit = True
                effects.append(Report(VariablesOverLimit(len(counters) + 1, limit, hard)))
        counter = counters[variable] = Counter(variable)
        effects.append(Created(variable))
        return counter


def bury(
    counter: Counter, marks: list[tuple[Origin, int, int]]
) -> list[Persist | NoteChange | Count | Report]:
    """Join *marks* into *counter*'s grave (a delete, here or a peer's); the effects
    that say so: the bases it adopted, the grave as it is now, and the variable gone
    (or its value changed, when ops beyond the grave keep it alive)."""
    fresh = counter.grave is None
    shown, value = not counter.buried, counter.value
    grown = counter.bury(marks)
    effects: list[Persist | NoteChange | Count | Report] = []
    if not grown and not fresh:
        return effects
    name = counter.name
    for origin, upto, total in grown:
        if counter.bases.get(origin) == (upto, total):
            effects.append(Persist(BaseFolded(name, origin, upto, total)))
    assert counter.grave is not None
    grave = tuple((origin, upto, total) for origin, (upto, total) in sorted(counter.grave.items()))
    effects += [Persist(Buried(name, grave)), NoteChange(name), Count("graves_grown")]
    if shown and counter.buried:
        effects.append(Report(VariableDeleted(name)))
    elif counter.value != value:
        effects.append(Report(ValueChanged(name, counter.value)))
    return effects
