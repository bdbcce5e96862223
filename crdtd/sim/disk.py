"""A node's simulated disk: records written, records synced, and what a crash leaves.

Rules:
- ``write`` appends to the unsynced tail; ``sync`` makes the whole tail durable; a crash
  drops the unsynced tail (the records a real disk might not have kept), never a synced
  record;
- synced records are never rewritten or reordered, so restart replays exactly what was
  durable, in the order it was written (the ``Node(records=...)`` contract);
- ``wipe`` is a lost disk: nothing survives; ``rewind`` keeps only a prefix of the
  synced records (a VM snapshot reverted, a lost WAL); ``copy`` is another machine's
  disk holding the same records (a cloned VM image). The node on such a disk must
  never reuse a nonce it or its copy already used (`crdtd.core.identity`);
- the disk keeps an index of the synced ops and bases it holds, so the invariants can ask
  "is this op durable here?" without scanning the records.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from crdtd.core.ids import Origin
from crdtd.core.records import BaseFolded, Buried, OpRecorded, OpsRecorded, Record

OpKey = tuple[str, Origin, int]
"""``(variable, origin, nonce)``: the name of one op."""


@dataclass(slots=True)
class Disk:
    """One node's durable storage."""

    synced: list[Record] = field(default_factory=list)
    unsynced: list[Record] = field(default_factory=list)
    ops: dict[OpKey, int] = field(default_factory=dict)
    """Every synced op: its key and delta."""
    bases: dict[tuple[str, Origin], BaseFolded] = field(default_factory=dict)
    """For each ``(variable, origin)``, the synced base with the highest ``upto``."""
    base_sum: dict[str, int] = field(default_factory=dict)
    """For each variable, the sum of the totals of its bases in ``bases``."""
    graves: dict[str, Buried] = field(default_factory=dict)
    """For each deleted variable, its synced grave (each `Buried` is the whole grave)."""
    syncs: int = 0
    records_lost: int = 0

    def write(self, records: list[Record]) -> None:
        self.unsynced.extend(records)

    def sync(self) -> list[Record]:
        """Make the unsynced tail durable; return the records that just became durable."""
        tail = self.unsynced
        if not tail:
            return tail
        self.unsynced = []
        self.synced.extend(tail)
        self.syncs += 1
        for record in tail:
            if isinstance(record, OpRecorded | OpsRecorded):
                for op in record.each() if isinstance(record, OpsRecorded) else (record,):
                    self.ops[(op.variable, op.origin, op.nonce)] = op.delta
            elif isinstance(record, BaseFolded):
                key = (record.variable, record.origin)
                held = self.bases.get(key)
                if held is None or record.upto > held.upto:
                    self.bases[key] = record
                    old = 0 if held is None else held.total
                    variable = record.variable
                    self.base_sum[variable] = self.base_sum.get(variable, 0) + record.total - old
            elif isinstance(record, Buried):
                self.graves[record.variable] = record
        return tail

    def grave_sum(self, variable: str) -> int:
        """What *variable*'s synced grave takes out of its bases (`Counter.offset`)."""
        grave = self.graves.get(variable)
        return 0 if grave is None else sum(total for _, _, total in grave.marks)

    def crash(self) -> int:
        """Lose the unsynced tail; return how many records were lost."""
        lost = len(self.unsynced)
        self.records_lost += lost
        self.unsynced = []
        return lost

    def wipe(self) -> None:
        """Lose everything (a replaced disk)."""
        self.rewind(0)

    def rewind(self, keep: int) -> None:
        """Go back to when only the first *keep* synced records were written."""
        kept = self.synced[:keep]
        self.synced = []
        self.unsynced = []
        self.ops = {}
        self.bases = {}
        self.base_sum = {}
        self.graves = {}
        self.unsynced = kept
        self.sync()

    def copy(self) -> Disk:
        """Another disk holding exactly what this one has synced."""
        clone = Disk()
        clone.unsynced = list(self.synced)
        clone.sync()
        return clone

    def holds(self, key: OpKey) -> bool:
        """True when op *key* is durable here, as an op or folded into a base."""
        if key in self.ops:
            return True
        base = self.bases.get((key[0], key[1]))
        return base is not None and base.upto >= key[2]
