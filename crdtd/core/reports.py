"""Verify reports, made a bounded number of ops at a time.

A report (`VariableReport`) names one variable's op set by an 8-byte blake2b hash over
text lines, in this order (the bytes are compared across nodes and versions, so they
are fixed):

    g {origin} {upto} {total}\\n     per mark of its grave, origins sorted (deleted only)
    b {origin} {upto} {total}\\n     per base, origins sorted
    o {origin} {nonce} {delta}\\n    per logged op, origins sorted, then nonces sorted

A variable never deleted has no ``g`` line, so its bytes are what they were before
deletes existed; a deleted one's value leaves its grave out, as the node shows it.

Hashing a million-op log takes a quarter of a second, longer than one step may hold the
owner task (habit 18 of STYLE.md). So a `Reporter` makes the reports as a job that
hashes at most `REPORT_STEP_OPS` ops per call of `Reporter.advance`; the node calls it
again from ``handle_timer`` (its ``get_timer`` is due while a job remains).

Why a report made over several steps is still right:
- the ops of an origin between its base and its watermark are immutable (an
  ``(origin, nonce)`` has one delta forever) and only leave the log by a fold, which
  changes the bases: any change of a variable's bases (or grave) restarts its report;
- so per origin the job hashes its dense part up to the watermark as it finds it (ops
  that arrive meanwhile extend it, and are hashed), then the ops above a hole, sorted;
- the value and the watermarks in the report are those of the ops hashed, not read at
  the end, so a report always describes one set of ops that the node held: the same
  bytes, value and marks as a report made in one go, whenever nothing changed meanwhile.
A report made while ops kept arriving may lag behind the node by those ops; verify
compares nodes, and asks again (``crdtctl verify --wait``) while they differ.

A variable's report is kept by `Counter.version` and made again only when its counter
changed, so a verify loop does not hash an unchanged log each time.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field

from crdtd.core.counters import Counter
from crdtd.core.ids import Origin
from crdtd.core.messages import VariableReport

REPORT_STEP_OPS = 32_768
"""Ops hashed per `Reporter.advance`: about 10 ms of work; a variable counts as one op."""
_HASH_SLICE_OPS = 4096
"""Ops joined into one ``update``: one update per op cost 4x as much."""


@dataclass(slots=True)
class _Variable:
    """One variable's report in progress."""

    counter: Counter
    version: int  # the counter's version when this report began
    bases: dict[Origin, tuple[int, int]]  # as hashed: any change restarts the report
    grave: dict[Origin, tuple[int, int]] | None  # likewise
    origins: list[Origin]  # still to hash, the next first
    digest: hashlib.blake2b
    value: int
    marks: list[tuple[Origin, int]] = field(default_factory=list)
    next_nonce: int = 0  # of origins[0]: the next dense nonce to hash (0: not begun)


class Reporter:
    """Makes every variable's report, `REPORT_STEP_OPS` ops per `advance`."""

    def __init__(self) -> None:
        self._made: dict[str, tuple[int, VariableReport]] = {}  # by Counter.version
        self._names: list[str] = []  # variables still to report in this job, next first
        self._current: _Variable | None = None
        self._reports: list[VariableReport] = []
        self.busy = False

    def start(self, counters: dict[str, Counter]) -> None:
        """Begin a job over every variable there is now; no-op while one runs."""
        if self.busy:
            return
        self.busy = True
        self._names = sorted(counters)
        self._reports = []
        self._current = None

    def advance(self, counters: dict[str, Counter]) -> list[VariableReport] | None:
        """Work on the job; the reports, in name order, once it is done (else None)."""
        budget = REPORT_STEP_OPS
        while self.busy and budget > 0:
            if self._current is None:
                if not self._names:
                    self.busy = False
                    return self._reports
                name = self._names.pop(0)
                counter = counters[name]
                made = self._made.get(name)
                if made is not None and made[0] == counter.version:
                    self._reports.append(made[1])
                    budget -= 1
                    continue
                self._current = _begin(counter)
                budget -= 1 + len(counter.bases)
            budget = self._hash(self._current, budget)
        return None

    def _hash(self, job: _Variable, budget: int) -> int:
        """Hash up to *budget* ops of *job*; finish it if it is done. Returns the budget left."""
        counter = job.counter
        if counter.bases != job.bases or counter.grave != job.grave:
            self._current = _begin(counter)  # a fold took ops we meant to hash: again
            return budget - 1
        while job.origins and budget > 0:
            origin = job.origins[0]
            mark = counter.watermark(origin)
            if job.next_nonce == 0:
                job.next_nonce = counter.base_upto(origin) + 1
            last = min(mark, job.next_nonce + budget - 1)
            if job.next_nonce <= last:
                _update(job, origin, list(counter.ops_in(origin, job.next_nonce, last)))
                budget -= last + 1 - job.next_nonce
                job.next_nonce = last + 1
                continue
            # The dense part is hashed: then the ops above a hole (only if any).
            above = counter.sparse.get(origin)
            if above:
                _update(job, origin, sorted(above.items()))
                budget -= len(above)
            job.marks.append((origin, mark))
            job.origins.pop(0)
            job.next_nonce = 0
        if job.origins:
            return budget
        report = VariableReport(counter.name, job.value, job.digest.digest(), tuple(job.marks))
        if counter.version == job.version:  # nothing changed meanwhile: exact, keep it
            self._made[counter.name] = (job.version, report)
        self._reports.append(report)
        self._current = None
        return budget


def _begin(counter: Counter) -> _Variable:
    """A report of *counter* with its base lines hashed; its ops come next."""
    digest = hashlib.blake2b(digest_size=8)
    grave = None if counter.grave is None else dict(counter.grave)
    for origin, (upto, total) in sorted((grave or {}).items()):
        digest.update(f"g {origin} {upto} {total}\n".encode())
    bases = dict(counter.bases)
    for origin in sorted(bases):
        upto, total = bases[origin]
        digest.update(f"b {origin} {upto} {total}\n".encode())
    value = sum(total for _, total in bases.values()) - counter.offset
    return _Variable(counter, counter.version, bases, grave, counter.origins(), digest, value)


def _update(job: _Variable, origin: Origin, ops: list[tuple[int, int]]) -> None:
    """Hash the op lines of *ops* (nonce and delta, ascending) and count their deltas."""
    prefix = f"o {origin} ".encode()
    for start in range(0, len(ops), _HASH_SLICE_OPS):
        chunk = ops[start : start + _HASH_SLICE_OPS]
        job.value += sum(delta for _, delta in chunk)
        job.digest.update(b"".join([b"%b%d %d\n" % (prefix, n, d) for n, d in chunk]))
