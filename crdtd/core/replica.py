"""What one replica holds: its counters and its epoch, and how records rebuild them.

Every sub-machine of the node works on ``counters`` (the same dict, shared): writes
and replication add counters and ops to it. Here are the two changes that are the
node's own: the restore of the records a store kept (`Replica.restore`) and the fold
of a barrier's cut (`Replica.fold`), and the queries the node answers.
"""

from __future__ import annotations

from collections.abc import Iterable

from crdtd.core.barrier import Cut
from crdtd.core.counters import Counter
from crdtd.core.ids import Origin
from crdtd.core.messages import Grave
from crdtd.core.records import (
    BaseFolded,
    Buried,
    EpochAdvanced,
    OpRecorded,
    OpsRecorded,
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
        self,
        record: VariableCreated | OpRecorded | OpsRecorded | BaseFolded | Buried | EpochAdvanced,
    ) -> str | None:
        """Take one record of the counters back from the store; the name of the counter
        it made, if it made one."""
        if isinstance(record, EpochAdvanced):
            self.epoch = max(self.epoch, record.epoch)
            return None
        counter, made = self.ensure(record.variable)
        if isinstance(record, OpRecorded):
            counter.apply(record.origin, record.nonce, record.delta)
        elif isinstance(record, OpsRecorded):
            if not counter.extend(record.origin, record.first, record.deltas):
                for op in record.each():
                    counter.apply(op.origin, op.nonce, op.delta)
        elif isinstance(record, BaseFolded):
            counter.adopt_base(record.origin, record.upto, record.total)
        elif isinstance(record, Buried):
            counter.bury(record.marks)
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

    def shown(self, variable: str) -> Counter | None:
        """*variable*'s counter, unless it has none or is buried (deleted)."""
        counter = self.counters.get(variable)
        return None if counter is None or counter.buried else counter

    def variables(self) -> list[str]:
        return sorted(name for name, counter in self.counters.items() if not counter.buried)

    def value(self, variable: str) -> int | None:
        counter = self.shown(variable)
        return None if counter is None else counter.value

    def before(self, variable: str) -> int | None:
        counter = self.shown(variable)
        return None if counter is None else counter.before

    def history(self, variable: str) -> list[tuple[Origin, int, int]] | None:
        counter = self.shown(variable)
        return None if counter is None else counter.history()

    def graves(self, names: Iterable[str] | None = None) -> list[Grave]:
        """Every grave kept, buried or alive again: what a node that missed a delete
        needs to bury the same ops. *names*: the variables that may have one (a superset;
        without it every counter is looked at)."""
        counters = self.counters
        return [
            Grave(name, tuple((o, upto, total) for o, (upto, total) in grave.items()))
            for name in sorted(counters if names is None else names)
            if (grave := counters[name].grave) is not None
        ]

    def ops_in_log(self) -> int:
        return sum(counter.log_len for counter in self.counters.values())
