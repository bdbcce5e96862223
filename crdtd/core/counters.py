"""One variable: a per-origin base plus the op log above it.

Theory of operation. An op is named by ``(origin, nonce)``; per variable and origin the
nonces run 1, 2, 3, ... with no holes at the source, so a hole seen here is a missing
op, never a skipped one. The base keeps, per origin, ``(upto, total)``: the ops with
nonce <= ``upto`` folded into their sum. Two replicas that folded different prefixes of
the same origin still merge exactly, because a longer prefix replaces precisely the ops
it covers: adopt the higher ``upto``, drop the logged ops at or below it.

A deleted variable keeps a *grave*: per origin, the prefix ``(upto, total)`` its delete
removed (`Counter.bury`). Those ops count zero from then on: ``offset`` (the graves'
totals) is subtracted from what the bases and the log hold. The grave's prefixes are
adopted as bases first, so the subtraction is exact also where some of those ops never
arrived; graves of the same variable join per origin by the longer prefix, so they
merge like bases do. A variable with a grave and nothing beyond it is *buried*: not
shown, and not counted against ``variables_max``; an op beyond the grave makes it live
again, starting from zero.

Invariants (checked by the simulator after every step):
- ``value == before + sum(every logged delta)``;
- ``before == sum(total for each base) - offset``, ``offset == sum(grave totals)``;
- no logged nonce is at or below its origin's base;
- ``watermark(origin)`` is the highest n such that every nonce 1..n is in the base or log;
- ``dense_totals[origin]`` is the sum of the ops 1..watermark (base total plus the logged
  ops up to the watermark), kept as ops arrive, so that a barrier's cut and its fold
  cost O(1) per origin, not a walk of a log that may hold a million ops.

The log, per origin, is two parts. ``dense`` holds the deltas of the nonces from the
base up to the watermark, in order, in an ``array('q')``: 8 bytes an op, where a dict of
Python ints took about 100, and every op a node issues or receives in order lands there.
``sparse`` holds the ops above a hole, by nonce, until the hole fills and they move
over. ``holes`` lists the ranges missing between the watermark and ``tops`` (the highest
op in ``sparse``), in order, so what a repair asks for costs the holes, not the ops that
came in after one (a stream goes on past a lost datagram).
"""

from __future__ import annotations

import bisect
import enum
import heapq
import itertools
from array import array
from collections.abc import Iterable, Iterator, Sequence
from operator import itemgetter

from crdtd.core.ids import Origin


class Applied(enum.Enum):
    NEW = "new"
    DUPLICATE = "duplicate"
    CONFLICT = "conflict"  # same (origin, nonce), another delta: a broken or forged peer


class Counter:
    """The state of one variable on one node."""

    __slots__ = (
        "bases",
        "before",
        "dense",
        "dense_totals",
        "grave",
        "holes",
        "log_len",
        "name",
        "offset",
        "sparse",
        "tops",
        "value",
        "version",
        "watermarks",
    )

    def __init__(self, name: str) -> None:
        self.name = name
        self.bases: dict[Origin, tuple[int, int]] = {}
        self.dense: dict[Origin, array[int]] = {}  # deltas of nonces base+1..watermark
        self.sparse: dict[Origin, dict[int, int]] = {}  # ops above a hole, by nonce
        self.holes: dict[Origin, list[tuple[int, int]]] = {}  # (first, last) below tops
        self.tops: dict[Origin, int] = {}  # the highest nonce in sparse
        self.watermarks: dict[Origin, int] = {}
        self.dense_totals: dict[Origin, int] = {}  # sum of ops 1..watermark, per origin
        self.value = 0
        self.before = 0
        self.log_len = 0
        self.version = 0  # grows with every change of the log, the bases or the grave
        self.grave: dict[Origin, tuple[int, int]] | None = None  # None: never deleted
        self.offset = 0  # the grave's totals: what `value` and `before` leave out

    def watermark(self, origin: Origin) -> int:
        return self.watermarks.get(origin, 0)

    def base_upto(self, origin: Origin) -> int:
        base = self.bases.get(origin)
        return base[0] if base else 0

    def delta(self, origin: Origin, nonce: int) -> int | None:
        """The delta of op *nonce* of *origin* if it is in the log, else None."""
        upto = self.base_upto(origin)
        if upto < nonce <= self.watermarks.get(origin, 0):
            return self.dense[origin][nonce - upto - 1]
        sparse = self.sparse.get(origin)
        return None if sparse is None else sparse.get(nonce)

    def apply(self, origin: Origin, nonce: int, delta: int) -> Applied:
        """Add one op unless it is already counted (in the log or folded into the base)."""
        upto = self.base_upto(origin)
        if nonce <= upto:
            return Applied.DUPLICATE
        if nonce <= self.watermarks.get(origin, 0):
            dense_delta = self.dense[origin][nonce - upto - 1]
            return Applied.DUPLICATE if dense_delta == delta else Applied.CONFLICT
        held = self.sparse.get(origin, {}).get(nonce)
        if held is not None:
            return Applied.DUPLICATE if held == delta else Applied.CONFLICT
        self._place(origin, nonce, (delta,))
        return Applied.NEW

    def extend(self, origin: Origin, first: int, deltas: Sequence[int]) -> bool:
        """Add the run of ops ``first, first + 1, ...`` of *origin* in one go if none of
        it is held yet and it lies above the watermark: True. Else nothing changes and
        the caller applies it op by op (`apply`), which sorts the new from the held. A
        batch add and replication take this path, also above a hole (a lost datagram):
        it costs a copy of the deltas, in C, and a search of the holes."""
        if first <= self.watermarks.get(origin, 0) or not deltas:
            return False
        return self._place(origin, first, deltas)

    def _place(self, origin: Origin, first: int, deltas: Sequence[int]) -> bool:
        """Put the run at ``first`` (above the watermark) in the log, unless some of its
        nonces are held: then False, and nothing changed. A run right above the
        watermark joins the dense part, with the ops above that it now reaches; one
        above a hole goes to the sparse part and splits the hole it falls in."""
        mark = self.watermarks.get(origin, 0)
        last = first + len(deltas) - 1
        sparse = self.sparse.get(origin)
        if sparse:
            holes, top = self.holes[origin], self.tops[origin]
            if first > top:
                if first > top + 1:
                    holes.append((top + 1, first - 1))
                self.tops[origin] = last
            else:  # within a hole, or it overlaps held ops; holes[0] starts at mark + 1
                at = bisect.bisect_right(holes, first, key=itemgetter(0)) - 1
                low, high = holes[at]
                if last > high:
                    return False
                holes[at : at + 1] = [
                    hole for hole in ((low, first - 1), (last + 1, high)) if hole[0] <= hole[1]
                ]
        elif first > mark + 1:
            sparse = self.sparse[origin] = {}
            self.holes[origin] = [(mark + 1, first - 1)]
            self.tops[origin] = last
        total = sum(deltas)
        self.value += total
        self.log_len += len(deltas)
        self.version += 1
        if first > mark + 1:
            sparse.update(zip(itertools.count(first), deltas))  # type: ignore[union-attr]
            self.watermarks.setdefault(origin, mark)
            return True
        dense = self.dense.get(origin)
        if dense is None:
            dense = self.dense[origin] = array("q")
        dense.extend(deltas)
        if sparse:
            holes = self.holes[origin]
            if not holes or holes[0][0] > last + 1:  # the first hole closed: pull the ops
                stop = holes[0][0] - 1 if holes else self.tops[origin]
                pulled = len(dense)
                dense.extend(map(sparse.pop, range(last + 1, stop + 1)))
                total += sum(dense[pulled:])
                last = stop
            if not sparse:
                del self.sparse[origin], self.holes[origin], self.tops[origin]
        self.watermarks[origin] = last
        self.dense_totals[origin] = self.dense_totals.get(origin, 0) + total
        return True

    def adopt_base(self, origin: Origin, upto: int, total: int) -> bool:
        """Raise the base of *origin* to ``(upto, total)``; False if ours already covers it."""
        old_upto, old_total = self.bases.get(origin, (0, 0))
        if upto <= old_upto:
            return False
        dense = self.dense.get(origin)
        if dense is None:
            dense = self.dense[origin] = array("q")
        mark = self.watermarks.get(origin, 0)
        dense_total = self.dense_totals.get(origin, 0)  # == old_total + sum(dense)
        if upto <= mark:
            # The ops old_upto+1..upto are the front of the dense part: a fold (a
            # barrier's cut) drops them and sums whichever side is shorter.
            dropped = upto - old_upto
            if dropped <= len(dense) - dropped:
                dropped_sum = sum(dense[:dropped])
            else:
                dropped_sum = dense_total - old_total - sum(dense[dropped:])
            del dense[:dropped]
            self.dense_totals[origin] = dense_total + total - old_total - dropped_sum
        else:  # beyond our watermark: the whole dense part goes, and ops above a hole may
            sparse = self.sparse.get(origin, {})
            folded = [nonce for nonce in sparse if nonce <= upto]
            dropped = len(dense) + len(folded)
            dropped_sum = sum(dense) + sum(map(sparse.pop, folded))
            del dense[:]
            self.watermarks[origin] = upto
            self.dense_totals[origin] = total
            self._restack(origin)
        self.log_len -= dropped
        self.bases[origin] = (upto, total)
        self.version += 1
        self.before += total - old_total
        self.value += total - old_total - dropped_sum
        return True

    def _restack(self, origin: Origin) -> None:
        """After a base beyond the watermark: move the ops of the sparse part that now
        follow the watermark into the dense part, and find the holes again (rare: a
        join or a missed barrier; it sorts what is left)."""
        sparse = self.sparse.pop(origin, {})
        self.holes.pop(origin, None)
        self.tops.pop(origin, None)
        mark = self.watermarks[origin]
        total = self.dense_totals[origin]
        dense = self.dense[origin]
        while (delta := sparse.pop(mark + 1, None)) is not None:
            dense.append(delta)
            total += delta
            mark += 1
        self.watermarks[origin] = mark
        self.dense_totals[origin] = total
        if not sparse:
            return
        holes, previous = [], mark
        for nonce in sorted(sparse):
            if nonce > previous + 1:
                holes.append((previous + 1, nonce - 1))
            previous = nonce
        self.sparse[origin], self.holes[origin], self.tops[origin] = sparse, holes, previous

    def cut(self) -> list[tuple[Origin, int, int]]:
        """Per origin, the prefix held in sequence and its total: what a delete buries."""
        return [
            (origin, mark, self.dense_totals.get(origin, 0))
            for origin in self.origins()
            if (mark := self.watermark(origin)) > 0
        ]

    def bury(self, marks: Iterable[tuple[Origin, int, int]]) -> list[tuple[Origin, int, int]]:
        """Join *marks* (a grave: per origin, a prefix and its total) into ours; the
        marks that grew it, whose prefixes were adopted as bases. Empty marks still make
        the variable deleted (a grave with nothing in it)."""
        grave = self.grave
        if grave is None:
            grave = self.grave = {}
            self.version += 1
        grown = []
        for origin, upto, total in marks:
            held_upto, held_total = grave.get(origin, (0, 0))
            if upto <= held_upto:
                continue
            self.adopt_base(origin, upto, total)  # nothing if our base covers it
            grave[origin] = (upto, total)
            change = total - held_total
            self.offset += change
            self.value -= change
            self.before -= change
            self.version += 1
            grown.append((origin, upto, total))
        return grown

    @property
    def buried(self) -> bool:
        """Deleted, and no op beyond the grave since."""
        grave = self.grave
        if grave is None or self.log_len:
            return False
        return all(upto <= grave.get(origin, (0, 0))[0] for origin, (upto, _) in self.bases.items())

    def prefix_total(self, origin: Origin, upto: int) -> int:
        """Sum of the ops 1..upto of *origin*; the caller guarantees they are all held.
        At the watermark (what a cut takes) it is kept, O(1); below, it sums the log."""
        base_upto, total = self.bases.get(origin, (0, 0))
        assert base_upto <= upto <= self.watermark(origin), (origin, upto)
        if upto == self.watermark(origin):
            return self.dense_totals.get(origin, 0)
        return total + sum(self.dense[origin][: upto - base_upto])

    def missing(self, origin: Origin, high: int, ranges_max: int) -> list[tuple[int, int]]:
        """The nonce ranges in (watermark, high] not held, at most *ranges_max* of them:
        the holes below the highest op held, then what lies above it. It costs the
        ranges it returns, however many ops are held above a hole."""
        start = self.watermark(origin) + 1
        if not self.sparse.get(origin):
            return [(start, high)] if start <= high and ranges_max > 0 else []
        ranges: list[tuple[int, int]] = []
        for low, last in self.holes[origin]:
            if low > high or len(ranges) == ranges_max:
                return ranges
            ranges.append((low, min(last, high)))
        top = self.tops[origin]
        if high > top and len(ranges) < ranges_max:
            ranges.append((top + 1, high))
        return ranges

    def ops_in(self, origin: Origin, first: int, last: int) -> Iterator[tuple[int, int]]:
        """The logged ops of *origin* with first <= nonce <= last, ascending."""
        upto = self.base_upto(origin)
        low, high = max(first, upto + 1), min(last, self.watermark(origin))
        if low <= high:
            deltas = self.dense[origin][low - upto - 1 : high - upto]
            yield from zip(range(low, high + 1), deltas, strict=True)
        sparse = self.sparse.get(origin)
        if sparse:
            yield from sorted((n, d) for n, d in sparse.items() if first <= n <= last)

    def origins(self) -> list[Origin]:
        return sorted(self.watermarks)

    def page(self, after: tuple[Origin, int] | None, limit: int) -> list[tuple[Origin, int, int]]:
        """Up to *limit* logged ops that follow *after* ``(origin, nonce)`` in `history`
        order. The dense part is read by index, so a page costs its own size, not the
        log's; only ops above a hole (waiting for a repair) take a scan of those."""
        ops: list[tuple[Origin, int, int]] = []
        for origin in self.origins():
            if after is not None and origin < after[0]:
                continue
            first = after[1] + 1 if after is not None and origin == after[0] else 1
            upto = self.base_upto(origin)
            first = max(first, upto + 1)
            dense_last = min(self.watermark(origin), first + limit - len(ops) - 1)
            if first <= dense_last:
                deltas = self.dense[origin][first - upto - 1 : dense_last - upto]
                ops.extend(zip(itertools.repeat(origin), itertools.count(first), deltas))
            sparse = self.sparse.get(origin)
            if sparse and len(ops) < limit:
                floor = max(first - 1, self.watermark(origin))
                above = heapq.nsmallest(limit - len(ops), (n for n in sparse if n > floor))
                ops.extend((origin, nonce, sparse[nonce]) for nonce in above)
            if len(ops) >= limit:
                break
        return ops

    def history(self) -> list[tuple[Origin, int, int]]:
        """The op log, ordered by origin then nonce."""
        ops: list[tuple[Origin, int, int]] = []
        for origin in self.origins():
            upto = self.base_upto(origin)
            dense = self.dense.get(origin, ())
            ops.extend(zip(itertools.repeat(origin), itertools.count(upto + 1), dense))
            ops.extend((origin, n, d) for n, d in sorted(self.sparse.get(origin, {}).items()))
        return ops
