"""What one replica holds: its counters and its epoch, and how records rebuild them.

Every sub-machine of the node reads ``counters`` (the same dict, shared); only three
things change which counters exist or their bases, all through here: a counter made
for a name first seen (`Replica.ensure`), the restore of the records a store kept
(`Replica.restore`), and the fold of a barrier's cut (`Replica.fold`). The ops a
counter takes go through the counter itself (`crdtd.core.counters.Counter.apply`).
"""

from __future__ import annotations

from crdtd.core.barrier import Cut
from crdtd.core.counters import Counter
from crdtd.core.ids import Origin
from crdtd.core.records import (
    BaseFolded,
    EpochAdvanced,
    OpRecorded,
    Record,
    VariableCreated,
)


class Replica:
    __slots__ = ("counters", "epoch")

    def __init__(self) -> None:
        self.counters: dict[str, Counter] = {}
        self.epoch = 0

    def ensure(self, variable: str) -> tuple[Counter, bool]:
        """*variable*'s counter, and whether it was made just now."""
        counter = self.counters.get(variable)
        if counter is not None:
            return counter, False
        counter = self.counters[variable] = Counter(variable)
        return counter, True

    def restore(
        self, record: VariableCreated | OpRecorded | BaseFolded | EpochAdvanced
    ) -> str | None:
        """Take one record of the counters back from the store; the name of the counter
        it made, if it made one."""
        if isinstance(record, EpochAdvanced):
            self.epoch = max(self.epoch, record.epoch)
            return None
        counter, made = self.ensure(record.variable)
        if isinstance(record, OpRecorded):
            counter.apply(record.origin, record.nonce, record.delta)
        elif isinstance(record, BaseFolded):
            counter.adopt_base(record.origin, record.upto, record.total)
        return record.variable if made else None

    def fold(self, cut: Cut, epoch: int) -> list[Record]:
        """Fold *cut* into the bases and move to *epoch* if it is later; the records that
        say so. Safe at any time, since a cut is a held prefix."""
        records: list[Record] = []
        for (variable, origin), (upto, total) in cut.items():
            if self.counters[variable].adopt_base(origin, upto, total):
                records.append(BaseFolded(variable, origin, upto, total))
        if epoch > self.epoch:
            self.epoch = epoch
            records.append(EpochAdvanced(epoch))
        return records

    # --- queries ------------------------------------------------------------------

    def variables(self) -> list[str]:
        return sorted(self.counters)

    def value(self, variable: str) -> int | None:
        counter = self.counters.get(variable)
        return None if counter is None else counter.value

    def before(self, variable: str) -> int | None:
        counter = self.counters.get(variable)
        return None if counter is None else counter.before

    def history(self, variable: str) -> list[tuple[Origin, int, int]] | None:
        counter = self.counters.get(variable)
        return None if counter is None else counter.history()

    def ops_in_log(self) -> int:
        return sum(counter.log_len for counter in self.counters.values())
