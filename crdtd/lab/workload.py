"""Adds flowing on every node, and the ledger that says what each counter must read.

The ledger's rule. Each add a `Writer` sends ends one of three ways:

- **acked**: the daemon answered ok, so the op is on that node's disk: it counts;
- **not applied**: the request provably never reached a daemon (the socket was missing
  or refused the connection, the write failed with EPIPE because the daemon was already
  gone, or the daemon answered ``busy`` / ``bad_request``): it does not count;
- **maybe**: anything else. The request went out and no answer came back (the node was
  killed with the add in flight, the answer timed out, the daemon answered ``timeout``
  or ``internal``). The op may exist or not, and a killed node's request id dies with
  it, so nothing can settle it later.

So once faults stop and writers stop, every node must read the same value ``v`` of each
counter, with ``acked + (sum of the negative maybe deltas) <= v <= acked + (sum of the
positive maybe deltas)``: exactly the acked sum when there was no maybe. Writers add
positive deltas by default, which makes the lower bound the acked sum itself and the
window exactly as wide as the maybes.

Rules:
- one `Writer` thread per node, one persistent control connection each (reopened after
  a failure), requests one at a time, paced at ``rate_per_s`` (0 = as fast as answers
  come), a fresh ``request_id`` per attempt and no client-side retry (see above);
- `Workload.pause` returns only when no add is in flight, so the ledger is final for
  as long as the writers stay paused.
"""

from __future__ import annotations

import enum
import os
import random
import threading
import time
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass
from typing import Any

from crdtd.control.client import Client, DaemonUnreachable
from crdtd.control.protocol import ControlError
from crdtd.lab.lab import Lab, Node

ADD_TIMEOUT_S = 15.0  # above the daemon's own add timeout (freeze_max_s + 5 s)
UNREACHABLE_PAUSE_S = 0.05
VARIABLES = ("a", "b", "c")
NOT_APPLIED_CODES = ("busy", "bad_request", "unsupported_version")


class Outcome(enum.Enum):
    ACKED = "acked"
    MAYBE = "maybe"
    NOT_APPLIED = "not_applied"


def classify(error: Exception) -> Outcome:
    """What a failed add means for the ledger (see the module docstring)."""
    if isinstance(error, DaemonUnreachable):
        reason = error.reason
        if reason.startswith("connection lost") and "Broken pipe" not in reason:
            return Outcome.MAYBE
        if reason.startswith("connection closed"):
            return Outcome.MAYBE
        return Outcome.NOT_APPLIED  # it never connected, or the daemon was gone first
    if isinstance(error, ControlError) and error.code in NOT_APPLIED_CODES:
        return Outcome.NOT_APPLIED
    return Outcome.MAYBE


@dataclass(slots=True)
class Tally:
    """What one counter must read: see `Tally.bounds`."""

    acked: int = 0
    acked_sum: int = 0
    maybe: int = 0
    maybe_low: int = 0  # sum of the negative maybe deltas
    maybe_high: int = 0  # sum of the positive maybe deltas
    not_applied: int = 0

    def bounds(self) -> tuple[int, int]:
        return self.acked_sum + self.maybe_low, self.acked_sum + self.maybe_high

    def describe(self) -> str:
        low, high = self.bounds()
        value = str(low) if low == high else f"in [{low}, {high}]"
        return f"{value} ({self.acked} acked, {self.maybe} maybe, {self.not_applied} not applied)"


class Ledger:
    """Every add's outcome, per counter; thread-safe."""

    def __init__(self, variables: Iterable[str] = ()) -> None:
        self._lock = threading.Lock()
        self._tallies: dict[str, Tally] = {variable: Tally() for variable in variables}
        self.by_node: dict[str, dict[str, int]] = {}

    def record(self, node: str, variable: str, delta: int, outcome: Outcome) -> None:
        with self._lock:
            tally = self._tallies.setdefault(variable, Tally())
            if outcome is Outcome.ACKED:
                tally.acked += 1
                tally.acked_sum += delta
            elif outcome is Outcome.MAYBE:
                tally.maybe += 1
                if delta < 0:
                    tally.maybe_low += delta
                else:
                    tally.maybe_high += delta
            else:
                tally.not_applied += 1
            counts = self.by_node.setdefault(node, {outcome.value: 0 for outcome in Outcome})
            counts[outcome.value] += 1

    @property
    def variables(self) -> list[str]:
        with self._lock:
            return sorted(self._tallies)

    def tally(self, variable: str) -> Tally:
        with self._lock:
            return Tally(**asdict(self._tallies.get(variable, Tally())))

    def bounds(self, variable: str) -> tuple[int, int]:
        return self.tally(variable).bounds()

    def total(self, outcome: Outcome) -> int:
        with self._lock:
            return sum(counts[outcome.value] for counts in self.by_node.values())

    def summary(self) -> dict[str, Any]:
        with self._lock:
            return {
                "variables": {name: asdict(tally) for name, tally in sorted(self._tallies.items())},
                "by_node": {name: dict(counts) for name, counts in sorted(self.by_node.items())},
            }


class Writer(threading.Thread):
    """Adds to random counters on one node until stopped; every outcome goes to the ledger."""

    def __init__(
        self,
        node: Node,
        ledger: Ledger,
        *,
        variables: Sequence[str] = VARIABLES,
        rate_per_s: float = 20.0,
        deltas: tuple[int, int] = (1, 9),
        seed: object = 0,
    ) -> None:
        super().__init__(name=f"crdtlab-writer-{node.name}", daemon=True)
        self.node = node
        self.ledger = ledger
        self.variables = list(variables)
        self.rate_per_s = rate_per_s
        self.deltas = deltas
        self.last_error: str | None = None
        self.seed = f"{seed}/writer/{node.name}"
        self._gate = threading.Event()  # set: may send
        self._gate.set()
        self._busy = threading.Lock()  # held while an add is in flight
        self._stopping = threading.Event()

    def pause(self) -> None:
        """Return once no add is in flight and none will start until `resume`."""
        self._gate.clear()
        with self._busy:
            pass

    def resume(self) -> None:
        self._gate.set()

    def stop(self) -> None:
        self._stopping.set()
        self._gate.set()
        self.join()

    def run(self) -> None:
        rng = random.Random(self.seed)
        client = Client(self.node.socket, timeout_s=ADD_TIMEOUT_S)
        period = 1.0 / self.rate_per_s if self.rate_per_s > 0 else 0.0
        next_at = time.monotonic()
        try:
            while not self._stopping.is_set():
                if not self._gate.is_set():
                    self._gate.wait()
                    # After a pause the daemon may have closed the idle connection, and
                    # a request racing that close would count as a maybe: start afresh.
                    client.close()
                with self._busy:
                    if self._stopping.is_set() or not self._gate.is_set():
                        continue
                    reached = self._add_one(client, rng)
                if not reached:
                    self._stopping.wait(UNREACHABLE_PAUSE_S)
                if period:
                    next_at = max(next_at + period, time.monotonic() - 1.0)
                    self._stopping.wait(max(next_at - time.monotonic(), 0.0))
        finally:
            client.close()

    def _add_one(self, client: Client, rng: random.Random) -> bool:
        """One add; False when the daemon could not be reached (back off a little)."""
        variable = rng.choice(self.variables)
        delta = rng.randint(*self.deltas) or 1
        args = {"variable": variable, "delta": delta, "request_id": os.urandom(8).hex()}
        try:
            client.call("add", args)
        except (DaemonUnreachable, ControlError) as error:
            outcome = classify(error)
            self.last_error = str(error)
            self.ledger.record(self.node.name, variable, delta, outcome)
            return outcome is not Outcome.NOT_APPLIED
        self.ledger.record(self.node.name, variable, delta, Outcome.ACKED)
        return True


class Workload:
    """One `Writer` per node, sharing one `Ledger`. Use as ``with Workload(lab) as work``
    (it starts writers on the running nodes and stops them all on exit)."""

    def __init__(
        self,
        lab: Lab,
        *,
        variables: Sequence[str] = VARIABLES,
        rate_per_s: float = 20.0,
        deltas: tuple[int, int] = (1, 9),
        seed: object = 0,
    ) -> None:
        self.lab = lab
        self.variables = list(variables)
        self.rate_per_s = rate_per_s
        self.deltas = deltas
        self.seed = seed
        self.ledger = Ledger(variables)
        self.writers: dict[str, Writer] = {}

    def __enter__(self) -> Workload:
        self.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def start(self, nodes: Iterable[Node] | None = None) -> None:
        for node in self.lab.running() if nodes is None else nodes:
            self.add(node)

    def add(self, node: Node) -> Writer:
        """Start writing on *node* too (a late joiner)."""
        if node.name in self.writers:
            return self.writers[node.name]
        writer = Writer(
            node,
            self.ledger,
            variables=self.variables,
            rate_per_s=self.rate_per_s,
            deltas=self.deltas,
            seed=self.seed,
        )
        self.writers[node.name] = writer
        writer.start()
        return writer

    def remove(self, node: Node) -> None:
        writer = self.writers.pop(node.name, None)
        if writer is not None:
            writer.stop()

    def pause(self) -> None:
        """Stop sending; returns once no add is in flight anywhere."""
        for writer in self.writers.values():
            writer._gate.clear()
        for writer in self.writers.values():
            writer.pause()

    def resume(self) -> None:
        for writer in self.writers.values():
            writer.resume()

    def stop(self) -> None:
        for writer in list(self.writers.values()):
            writer.stop()
        self.writers.clear()
