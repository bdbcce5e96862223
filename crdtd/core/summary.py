"""Our announce's summary: one fixed-size hash of every watermark we hold, kept up to date
in O(changes), and which variables changed since our last announce.

Theory of operation. The set summarised is every variable we show (not buried: an
announce leaves those out, their graves say all) and, per variable, every origin whose
watermark is above zero: the elements ``(variable,)`` and ``(variable, origin, mark)``.
Its hash is the XOR of a 128-bit BLAKE2b of each element, so that two nodes that hold
the same set have the same hash whatever the order they learned it in,
and a change of one variable costs a rehash of that variable only: the node `touch`-es
every variable whose marks may have moved (an op, a base, a grave, a new counter), and
`refresh` folds those into the hash. The variables whose hash part really changed are
kept until `take_changed`: the next announce carries full detail for them only (a delta
announce), and the summary stands for the rest.

A peer whose summary differs from ours (twice in a row right after a write of ours) is
asked for its full announce (`crdtd.core.announcer.Announcer.on_summary`): the summary
is the safety net that finds what the deltas, the tail digests and repair missed, at
the cost of one small datagram per announce while nothing differs.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping

from crdtd.core.counters import Counter
from crdtd.core.layout import _U64, _name, _origin

HASH_BYTES = 16


def variable_part(counter: Counter) -> int:
    """The XOR of the element hashes of one variable: its name, and each mark above 0;
    0 for a buried variable, which announces leave out too (its grave says all)."""
    if counter.buried:
        return 0
    head = _name(counter.name)
    part = int.from_bytes(hashlib.blake2b(head, digest_size=HASH_BYTES).digest())
    for origin, mark in counter.watermarks.items():
        if mark > 0:
            data = head + _origin(origin) + _U64.pack(mark)
            part ^= int.from_bytes(hashlib.blake2b(data, digest_size=HASH_BYTES).digest())
    return part


def full_hash(counters: Mapping[str, Counter]) -> int:
    """The summary hash computed from scratch (tests and the simulator's check)."""
    value = 0
    for counter in counters.values():
        value ^= variable_part(counter)
    return value


class Summary:
    """The incremental hash of one node's counters and its delta since the last announce."""

    __slots__ = ("_changed", "_dirty", "_parts", "graved", "value")

    def __init__(self) -> None:
        self.value = 0
        self.graved: set[str] = set()  # the variables with a grave (a delete is a change)
        self._parts: dict[str, int] = {}
        self._dirty: dict[str, None] = {}
        self._changed: dict[str, None] = {}

    def touch(self, variable: str) -> None:
        """*variable*'s marks may have moved (or it is new)."""
        self._dirty[variable] = None

    def touch_all(self, counters: Mapping[str, Counter]) -> None:
        self._dirty.update(dict.fromkeys(counters))

    def refresh(self, counters: Mapping[str, Counter]) -> int:
        """Fold every touched variable into the hash (and note the ones with a grave:
        graves are never removed); return the hash."""
        if self._dirty:
            parts = self._parts
            for variable in self._dirty:
                counter = counters.get(variable)
                if counter is not None and counter.grave is not None:
                    self.graved.add(variable)
                old = parts.get(variable, 0)
                new = 0 if counter is None else variable_part(counter)
                if new == old:
                    continue
                self.value ^= old ^ new
                if not new:
                    parts.pop(variable, None)
                else:
                    parts[variable] = new
                self._changed[variable] = None
            self._dirty = {}
        return self.value

    def take_changed(self, counters: Mapping[str, Counter]) -> list[str]:
        """The variables whose marks changed since the last call, sorted; the hash is
        refreshed first."""
        self.refresh(counters)
        changed = sorted(self._changed)
        self._changed = {}
        return changed

    @property
    def count(self) -> int:
        """How many variables the hash covers: those shown (not buried)."""
        return len(self._parts)

    def digest(self) -> bytes:
        return self.value.to_bytes(HASH_BYTES)
