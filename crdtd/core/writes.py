"""Local writes: ``create``, ``add``, ``add_many`` and ``delete``, named adds, and holding.

Theory of operation. A local add takes the next nonce of this node's origin for its
variable and becomes an op: a record to persist, an op to multicast with the step's
others (`Fresh`), and an `AddApplied` carrying the caller's ticket. While the node is
in a barrier (not `Mode.WORK`) an add is *held*, in order, and applied when the
barrier ends (`Writes.thaw`): never refused, never dropped.

An add its client named with a request id is applied once: sent again, before or
after a restart (the `AddNamed` records come back with the state), it is answered
with the op it became; the same id with another variable or delta is refused. That
check lives here alone: the control side passes the id through.

A delete buries what this node holds of the variable in sequence (`Counter.cut`) and
multicasts the grave (`Spread`); it is not held in a barrier, since a grave moves
bases only up to the watermarks, which leaves every cut as it was. An add not yet
seen here when it ran, and any add after it, survives it: the variable lives again
from zero. A ``create`` of a deleted name is such an add, of zero, so that every node
shows the name again.

``variables_max`` bounds the names made here, held adds' new names included (buried
names do not count); a name a peer made is `crdtd.core.replication`'s to admit.

Every call returns effects for the node to carry out, in order: `Persist`,
`Created`, `NoteChange` (from `crdtd.core.replication`), `Fresh`, `Spread`, `Count`
and `Report`; misuse by the local caller (a bad name or delta, a full node, a reused
request id) raises `InvalidInput`.
"""

from __future__ import annotations

import collections
import itertools
from collections.abc import Sequence
from dataclasses import dataclass

from crdtd.core.counters import Counter
from crdtd.core.effects import Count, Report
from crdtd.core.events import AddApplied, ValueChanged
from crdtd.core.ids import InvalidInput, Origin, check_delta, check_deltas, check_name
from crdtd.core.messages import Grave
from crdtd.core.modes import Mode
from crdtd.core.records import REQUESTS_KEPT, AddNamed, OpRecorded, OpsRecorded
from crdtd.core.replication import VARIABLES_HARD_FACTOR, Created, NoteChange, Persist, bury
from crdtd.core.settings import Settings


@dataclass(frozen=True, slots=True)
class Fresh:
    """Local ops, nonces ``first, first + 1, ...``, to multicast with the step's others."""

    variable: str
    first: int
    deltas: tuple[int, ...]


UNANSWERED = 0
"""The ticket of an add made by the node itself (no `AddApplied`): tickets start at 1."""


@dataclass(frozen=True, slots=True)
class Spread:
    """Multicast *grave*, a delete made here, with the step's datagrams."""

    grave: Grave


Effect = Persist | Created | NoteChange | Fresh | Spread | Count | Report


class Writes:
    """The local writes of one node: applied, held during a barrier, or named."""

    def __init__(self, settings: Settings, counters: dict[str, Counter]) -> None:
        self.origin = Origin("", 0)  # set by the node once it chose its incarnation
        self.settings = settings
        self._counters = counters
        self._held: list[tuple[int, str, int, str | None]] = []  # (ticket, var, delta, id)
        # Indexes of the held adds, so that each add stays O(1) however many are held:
        self._held_new: dict[str, None] = {}  # held adds' names that have no counter yet
        self._held_names: dict[str, None] = {}  # every held add's name
        self._held_creates: dict[str, None] = {}  # deleted names created again, held
        self._held_requests: dict[str, tuple[str, int]] = {}  # request id -> (var, delta)
        self._named: collections.OrderedDict[str, AddNamed] = collections.OrderedDict()

    def create(self, variable: str, mode: Mode) -> tuple[bool, list[Effect]]:
        """Create *variable*; False (and no effect) if it exists. A deleted name is
        created again by an add of zero that nobody waits for: an op beyond its grave,
        which shows it again on every node."""
        check_name(variable)
        counter = self._counters.get(variable)
        if counter is not None:
            if not counter.buried or variable in self._held_creates:
                return False, []
            again = self.add(UNANSWERED, variable, 0, None, mode)
            if mode is not Mode.WORK:  # held: the name shows at the thaw, made once
                self._held_creates[variable] = None
            return True, again
        self._check_room()
        effects: list[Effect] = []
        self._ensure(variable, effects)
        return True, effects

    def delete(self, variable: str) -> tuple[bool, list[Effect]]:
        """Bury what this node holds of *variable*; False (and no effect) if it is not
        shown here."""
        check_name(variable)
        undone = self._undo_held_create(variable)
        counter = self._counters.get(variable)
        if counter is None or counter.buried:
            return undone, [Count("variables_deleted")] if undone else []
        effects: list[Effect] = []
        effects += bury(counter, counter.cut())
        assert counter.grave is not None
        marks = tuple((origin, upto, total) for origin, (upto, total) in counter.grave.items())
        effects += [Spread(Grave(variable, marks)), Count("variables_deleted")]
        return True, effects

    def add(
        self, ticket: int, variable: str, delta: int, request_id: str | None, mode: Mode
    ) -> list[Effect]:
        """Add *delta* to *variable* (created if new): now in Work, else held."""
        check_name(variable)
        check_delta(delta)
        effects: list[Effect] = []
        if request_id is not None:
            self._check_same_add(request_id, variable, delta)
            named = self._named.get(request_id)
            if named is not None:
                effects += [self._answer_named(ticket, named), Count("adds_repeated")]
                return effects
        if self._is_new(variable) and variable not in self._held_names:
            self._check_room()
        if mode is Mode.WORK:
            self._apply(ticket, variable, delta, request_id, effects)
            return effects
        if variable not in self._counters:
            self._held_new[variable] = None
        self._held_names[variable] = None
        self._held.append((ticket, variable, delta, request_id))
        if request_id is not None:
            self._held_requests[request_id] = (variable, delta)
        return effects

    def add_many(
        self, tickets: Sequence[int], variable: str, deltas: Sequence[int], mode: Mode
    ) -> list[Effect]:
        """Each of *deltas* as an op of its own, in order, in one run. In Work, with one
        ticket, one `AddApplied` (the last op) stands for them all; with a ticket per
        delta, each op is answered as an add of its own, with the value after it. One
        `ValueChanged` ends the run. Held, each is an add of its own (``tickets[i]``).
        Raises `InvalidInput` before it changes anything."""
        if not deltas:
            raise InvalidInput("add_many: expected at least one delta")
        check_name(variable)
        check_deltas(deltas)
        if mode is not Mode.WORK:
            effects: list[Effect] = []
            for ticket, delta in zip(tickets, deltas, strict=True):
                effects += self.add(ticket, variable, delta, None, mode)
            return effects
        if self._is_new(variable):
            self._check_room()
        effects = []
        counter = self._ensure(variable, effects)
        origin = self.origin
        first = counter.watermark(origin) + 1
        run = tuple(deltas)
        before = counter.value
        # Our own ops above our watermark are never held (a peer's claim of one is
        # refused, `Replication._check_own_ops`), so the run goes in whole; op by op
        # is only the fallback that keeps this true if that ever changed.
        if not counter.extend(origin, first, run):
            for k, delta in enumerate(run):
                counter.apply(origin, first + k, delta)
        effects.append(Persist(OpsRecorded(variable, origin, first, run)))
        effects.append(Fresh(variable, first, run))
        effects.append(NoteChange(variable))
        effects.append(Count("ops_local", len(deltas)))
        value = counter.value
        if len(tickets) == 1:
            nonce = first + len(run) - 1
            effects.append(Report(AddApplied(tickets[0], variable, origin, nonce, value)))
        else:
            values = itertools.accumulate(run, initial=before)
            next(values)  # *before* itself
            for nonce, (ticket, after) in enumerate(zip(tickets, values, strict=True), first):
                effects.append(Report(AddApplied(ticket, variable, origin, nonce, after)))
        effects.append(Report(ValueChanged(variable, value)))
        return effects

    def thaw(self) -> list[Effect]:
        """Apply the writes held during a barrier, in the order they were made."""
        held, self._held = self._held, []
        self._held_new.clear()
        self._held_names.clear()
        self._held_creates.clear()
        self._held_requests.clear()
        effects: list[Effect] = []
        for ticket, variable, delta, request_id in held:
            named = None if request_id is None else self._named.get(request_id)
            if named is not None:  # sent twice while held: the first one is applied
                effects.append(self._answer_named(ticket, named))
            else:
                self._apply(ticket, variable, delta, request_id, effects)
        return effects

    def remember(self, named: AddNamed) -> None:
        """A named add, applied (restored from disk, or just now)."""
        self._named[named.request_id] = named
        while len(self._named) > REQUESTS_KEPT:
            self._named.popitem(last=False)

    def counted(self, variable: str) -> None:
        """*variable* has a counter now: a held add's name no longer counts as new."""
        self._held_new.pop(variable, None)

    def _apply(
        self,
        ticket: int,
        variable: str,
        delta: int,
        request_id: str | None,
        effects: list[Effect],
    ) -> None:
        counter = self._ensure(variable, effects)
        origin = self.origin
        nonce = counter.watermark(origin) + 1
        counter.apply(origin, nonce, delta)
        effects += [NoteChange(variable), Persist(OpRecorded(variable, origin, nonce, delta))]
        if request_id is not None:
            named = AddNamed(request_id, variable, delta, nonce, counter.value, origin.incarnation)
            effects.append(Persist(named))
            self.remember(named)
        effects += [Fresh(variable, nonce, (delta,)), Count("ops_local")]
        if ticket != UNANSWERED:
            effects.append(Report(AddApplied(ticket, variable, origin, nonce, counter.value)))
        effects.append(Report(ValueChanged(variable, counter.value)))

    def _ensure(self, variable: str, effects: list[Effect]) -> Counter:
        counter = self._counters.get(variable)
        if counter is None:
            counter = self._counters[variable] = Counter(variable)
            effects.append(Created(variable, local=True))
        return counter

    def _check_same_add(self, request_id: str, variable: str, delta: int) -> None:
        """A request id names one add: reused for another, it is an error, not a retry."""
        named = self._named.get(request_id)
        earlier = [] if named is None else [(named.variable, named.delta)]
        held = self._held_requests.get(request_id)  # every held add of an id is the same
        earlier += [] if held is None else [held]
        if any(add != (variable, delta) for add in earlier):
            raise InvalidInput(f"request_id {request_id!r} was already used for another add")

    def _answer_named(self, ticket: int, named: AddNamed) -> Report:
        """Answer a repeat exactly as the first add was answered (also by an earlier
        incarnation of ours)."""
        origin = Origin(self.origin.node_id, named.incarnation)
        return Report(AddApplied(ticket, named.variable, origin, named.nonce, named.value))

    def _undo_held_create(self, variable: str) -> bool:
        """A delete in the barrier that held a create of *variable* (a deleted name made
        again) undoes that create: its add of zero is dropped, as if never made."""
        if variable not in self._held_creates:
            return False
        del self._held_creates[variable]
        self._held = [h for h in self._held if (h[0], h[1]) != (UNANSWERED, variable)]
        if all(h[1] != variable for h in self._held):
            self._held_names.pop(variable, None)
            self._held_new.pop(variable, None)
        return True

    def _shown(self, variable: str) -> bool:
        counter = self._counters.get(variable)
        return counter is not None and not counter.buried

    def _is_new(self, variable: str) -> bool:
        """Would a write to *variable* make a name shown (a new one, or a buried one)?"""
        return not self._shown(variable)

    def _check_room(self) -> None:
        """Refuse a new local name at ``variables_max`` (held adds' new names count,
        buried names do not), and any new name once the names kept, buried ones
        included, reach the hard limit every peer keeps too
        (`crdtd.core.replication.VARIABLES_HARD_FACTOR`): past it a peer would drop
        the name, and no cut of the two could ever agree again.

        O(1) below the limit: a barrier may hold many adds, and scanning them on each
        add was O(n^2); only at the limit are the buried ones counted out."""
        limit = self.settings.variables_max
        kept = len(self._counters) + len(self._held_new)
        if kept < limit:
            return
        if kept >= VARIABLES_HARD_FACTOR * limit:
            raise InvalidInput(
                f"variables_max ({limit}) reached: {kept} names are kept, deleted ones "
                f"included, the most any node keeps ({VARIABLES_HARD_FACTOR * limit})"
            )
        # A held name counts once, shown or not: a peer's op or grave may change which
        # while the barrier lasts, and it is shown after the thaw either way.
        shown = sum(1 for counter in self._counters.values() if not counter.buried)
        held = sum(1 for name in self._held_names if not self._shown(name))
        if shown + held >= limit:
            raise InvalidInput(f"variables_max ({limit}) reached")
