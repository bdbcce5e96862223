"""The checks a run must pass: safety after every step, liveness after the heal.

Safety, checked after every flush of the node that just took a step (a node's state
changes only when it takes a step, so checking the stepped node is checking every node):
- every op a node holds, in its history or on its disk, is exactly an op its origin
  issued: no invented op, no altered delta, no ``(variable, origin, nonce)`` with two
  deltas (`Ledger.check_held`, `Ledger.issue`);
- every base a node makes durable totals exactly the issued ops it claims to fold, and
  so does every grave (what a delete buries);
- ``value == before + sum(history deltas)``, ``before`` is the sum of the node's durable
  bases less its durable grave, and no op is both in the history and under its origin's
  base or twice in the history: so no value counts an op twice or misses one it claims
  to hold;
- every acknowledged op was synced on its origin's disk when it was acknowledged (and
  synced records are never lost; a wipe is allowed only while every acknowledged op has
  a durable copy on another disk).

To stay cheap, the history scan after a step covers the variables the step touched (a
record persisted, an event reported, or a value that moved); untouched variables are
compared by value. A node changes a history only by applying an op or adopting a base,
and both persist a record, so this sees every change that the node writes down; a change
it would not write down is caught by the full scan of all its variables every
``full_check_every`` (16) steps of that node and at convergence.

Liveness, after the heal (no loss, no cuts, everyone up, no more adds): within a bounded
virtual time every live node is in ``Mode.WORK``, knows the same variables, and holds for
each the sum of its acknowledged ops that no delete buried: nothing deleted comes back.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator

from crdtd.core.ids import Origin
from crdtd.core.modes import Mode
from crdtd.core.node import Node
from crdtd.core.records import BaseFolded, Buried, OpRecorded, OpsRecorded, Record
from crdtd.core.summary import HASH_BYTES, full_hash
from crdtd.sim.disk import Disk, OpKey
from crdtd.sim.failures import InvariantViolation
from crdtd.sim.ledger import Ledger, describe


def _each_op(records: Iterable[Record]) -> Iterator[Record]:
    """*records*, a run (`OpsRecorded`) as the `OpRecorded` of each of its ops."""
    for record in records:
        if isinstance(record, OpsRecorded):
            yield from record.each()
        else:
            yield record


def check_durable(records: Iterable[Record], origin: Origin, ledger: Ledger) -> None:
    """Records the node of *origin* just synced: register its own ops, check the others."""
    node_id = origin.node_id
    for record in _each_op(records):
        if isinstance(record, OpRecorded):
            key: OpKey = (record.variable, record.origin, record.nonce)
            if record.origin == origin:
                ledger.issue(key, record.delta, node_id)
            else:
                ledger.check_held(key, record.delta, node_id, "disk")
        elif isinstance(record, BaseFolded):
            expected = ledger.base_total(record.variable, record.origin, record.upto)
            if record.total != expected:
                raise InvariantViolation(
                    f"bad base: {node_id} synced a base of {record.variable}/{record.origin} "
                    f"up to nonce {record.upto} totalling {record.total}, but the issued ops "
                    f"up to there total {expected}"
                )
        elif isinstance(record, Buried):
            for grave_origin, upto, total in record.marks:
                ledger.check_grave(record.variable, grave_origin, upto, node_id)
                expected = ledger.base_total(record.variable, grave_origin, upto)
                if total != expected:
                    raise InvariantViolation(
                        f"bad grave: {node_id} synced a grave of {record.variable} burying "
                        f"{grave_origin} up to nonce {upto} as {total}, but the issued ops up "
                        f"to there total {expected}"
                    )
            ledger.bury(record.variable, record.marks)


def check_summary(node: Node, node_id: str) -> None:
    """The summary hash a node keeps up to date change by change is the hash of what it
    holds, computed from scratch: no path that moves a mark forgets to say so."""
    if node.summary_hash() != full_hash(node.counters).to_bytes(HASH_BYTES):
        raise InvariantViolation(f"stale summary: {node_id}'s hash misses a change")


def check_variable(node: Node, node_id: str, variable: str, disk: Disk, ledger: Ledger) -> int:
    """Check one variable of a live node; return its value."""
    value = node.value(variable)
    before = node.before(variable)
    history = node.history(variable)
    if value is None or before is None or history is None:
        raise InvariantViolation(
            f"missing variable: {node_id} lists {variable!r} but value/before/history are "
            f"{value}/{before}/{'None' if history is None else 'a list'}"
        )
    base_sum = disk.base_sum.get(variable, 0) - disk.grave_sum(variable)
    if before != base_sum:
        raise InvariantViolation(
            f"bad before: {node_id} reports before({variable}) = {before}, but the bases on "
            f"its disk less its grave total {base_sum}"
        )
    total = before
    seen: set[OpKey] = set()
    bases = disk.bases
    for origin, nonce, delta in history:
        key = (variable, origin, nonce)
        ledger.check_held(key, delta, node_id, "history")
        if key in seen:
            raise InvariantViolation(f"double count: {node_id} holds {describe(key)} twice")
        seen.add(key)
        if bases:
            base = bases.get((variable, origin))
            if base is not None and nonce <= base.upto:
                raise InvariantViolation(
                    f"double count: {node_id} holds {describe(key)} in its history but its "
                    f"base for {origin} already folds nonces up to {base.upto}"
                )
        total += delta
    if total != value:
        raise InvariantViolation(
            f"bad value: {node_id} reports {variable} = {value}, but before ({before}) plus "
            f"its {len(history)} ops in history is {total}"
        )
    return value


def convergence_gap(live: list[tuple[str, Node]], ledger: Ledger) -> str | None:
    """None when every live node agrees on the truth; else what still differs."""
    wants = ledger.expected()
    expected = sorted(wants)
    reference: tuple[str, list[str]] | None = None
    for node_id, node in live:
        if node.mode is not Mode.WORK:
            return f"{node_id} is in mode {node.mode.value}"
        variables = sorted(node.variables())
        if reference is None:
            reference = (node_id, variables)
        elif variables != reference[1]:
            return f"{node_id} knows variables {variables}, {reference[0]} knows {reference[1]}"
    if reference is None:
        return None
    missing = [v for v in expected if v not in reference[1]]
    if missing:
        return f"no live node knows {missing}, which have acknowledged ops no delete buried"
    for variable in reference[1]:
        want = wants.get(variable, 0)
        wrong = [(nid, n.value(variable)) for nid, n in live if n.value(variable) != want]
        if wrong:
            shown = ", ".join(f"{nid}={value}" for nid, value in wrong[:6])
            more = f" (+{len(wrong) - 6} more)" if len(wrong) > 6 else ""
            n_ops = sum(1 for key in ledger.acked if key[0] == variable)
            buried = " less its grave" if variable in ledger.graves else ""
            return (
                f"{variable} should be {want} (sum of {n_ops} acknowledged ops{buried}) but "
                f"{len(wrong)}/{len(live)} nodes differ: {shown}{more}"
            )
    return None
