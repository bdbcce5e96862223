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
"""

from __future__ import annotations

import enum
import heapq
from collections.abc import Iterable, Iterator

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
        "dense_totals",
        "grave",
        "log_len",
        "logs",
        "name",
        "offset",
        "value",
        "version",
        "watermarks",
    )

    def __init__(self, name: str) -> None:
        self.name = name
        self.bases: dict[Origin, tuple[int, int]] = {}
        self.logs: dict[Origin, dict[int, int]] = {}
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

    def apply(self, origin: Origin, nonce: int, delta: int) -> Applied:
        """Add one op unless it is already counted (in the log or folded into the base)."""
        if nonce <= self.base_upto(origin):
            return Applied.DUPLICATE
        log = self.logs.get(origin)
        if log is None:
            log = self.logs[origin] = {}
        held = log.get(nonce)
        if held is not None:
            return Applied.DUPLICATE if held == delta else Applied.CONFLICT
        log[nonce] = delta
        self.value += delta
        self.log_len += 1
        self.version += 1
        mark = self.watermarks.get(origin, 0)
        if nonce == mark + 1:
            dense = self.dense_totals.get(origin, 0) + delta
            mark = nonce
            while mark + 1 in log:
                mark += 1
                dense += log[mark]
            self.dense_totals[origin] = dense
        self.watermarks[origin] = mark
        return Applied.NEW

    def adopt_base(self, origin: Origin, upto: int, total: int) -> bool:
        """Raise the base of *origin* to ``(upto, total)``; False if ours already covers it."""
        old_upto, old_total = self.bases.get(origin, (0, 0))
        if upto <= old_upto:
            return False
        log = self.logs.get(origin, {})
        old_mark = self.watermarks.get(origin, 0)
        dense = self.dense_totals.get(origin, 0)
        if upto <= old_mark:
            # Every nonce old_upto+1..old_mark is logged (below the watermark), so no
            # scan: a fold (a barrier's cut) keeps the few ops that came since instead
            # of popping the many it folds, and their sum follows from `dense_totals`.
            dropped = upto - old_upto
            if old_mark - upto < dropped:
                kept = {nonce: log[nonce] for nonce in range(upto + 1, old_mark + 1)}
                dropped_sum = dense - old_total - sum(kept.values())
                if len(log) > old_mark - old_upto:  # ops above a hole stay too (rare)
                    kept.update((nonce, d) for nonce, d in log.items() if nonce > old_mark)
                log.clear()  # the same dict: the node may hold it
                log.update(kept)
            else:
                dropped_sum = sum(map(log.pop, range(old_upto + 1, upto + 1)))
            dense += total - old_total - dropped_sum
            mark = old_mark
        else:  # beyond our watermark: ops above a hole may go too
            folded = [nonce for nonce in log if nonce <= upto]
            dropped = len(folded)
            dropped_sum = sum(map(log.pop, folded))
            mark, dense = upto, total
            while mark + 1 in log:
                mark += 1
                dense += log[mark]
        self.log_len -= dropped
        self.bases[origin] = (upto, total)
        self.version += 1
        self.before += total - old_total
        self.value += total - old_total - dropped_sum
        self.watermarks[origin] = mark
        self.dense_totals[origin] = dense
        return True

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
        At the watermark (what a cut takes) it is kept, O(1); below, it walks the log."""
        base_upto, total = self.bases.get(origin, (0, 0))
        assert base_upto <= upto <= self.watermark(origin), (origin, upto)
        if upto == self.watermark(origin):
            return self.dense_totals.get(origin, 0)
        log = self.logs.get(origin, {})
        return total + sum(map(log.__getitem__, range(base_upto + 1, upto + 1)))

    def missing(self, origin: Origin, high: int, ranges_max: int) -> list[tuple[int, int]]:
        """The nonce ranges in (watermark, high] not held, at most *ranges_max* of them."""
        log = self.logs.get(origin, {})
        start = self.watermark(origin) + 1
        above = sorted(n for n in log if start <= n <= high)
        ranges: list[tuple[int, int]] = []
        for held in [*above, high + 1]:
            if held > start:
                ranges.append((start, held - 1))
                if len(ranges) == ranges_max:
                    break
            start = held + 1
        return ranges

    def ops_in(self, origin: Origin, first: int, last: int) -> Iterator[tuple[int, int]]:
        """The logged ops of *origin* with first <= nonce <= last, ascending."""
        log = self.logs.get(origin, {})
        if last - first < len(log):
            return ((n, log[n]) for n in range(first, last + 1) if n in log)
        return ((n, log[n]) for n in sorted(log) if first <= n <= last)

    def origins(self) -> list[Origin]:
        return sorted(self.watermarks)

    def page(self, after: tuple[Origin, int] | None, limit: int) -> list[tuple[Origin, int, int]]:
        """Up to *limit* logged ops that follow *after* ``(origin, nonce)`` in `history`
        order. Every nonce between an origin's base and its watermark is logged, so that
        part is read by index: a page costs its own size, not the log's; only ops above a
        hole (waiting for a repair) take a scan of the origin's log."""
        ops: list[tuple[Origin, int, int]] = []
        for origin in sorted(self.logs):
            if after is not None and origin < after[0]:
                continue
            log = self.logs[origin]
            first = after[1] + 1 if after is not None and origin == after[0] else 1
            first = max(first, self.base_upto(origin) + 1)
            dense_last = min(self.watermark(origin), first + limit - len(ops) - 1)
            ops.extend((origin, nonce, log[nonce]) for nonce in range(first, dense_last + 1))
            if len(ops) < limit:
                floor = max(first - 1, self.watermark(origin))
                above = heapq.nsmallest(limit - len(ops), (n for n in log if n > floor))
                ops.extend((origin, nonce, log[nonce]) for nonce in above)
            if len(ops) >= limit:
                break
        return ops

    def history(self) -> list[tuple[Origin, int, int]]:
        """The op log, ordered by origin then nonce."""
        return [
            (origin, nonce, self.logs[origin][nonce])
            for origin in sorted(self.logs)
            for nonce in sorted(self.logs[origin])
        ]
