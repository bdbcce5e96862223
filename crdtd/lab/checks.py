"""What a healed lab must show, polled until a deadline, with a report when it does not.

`await_convergence`: every node that should be up (`Lab.wanted`: a crashed daemon is a
failure) is in mode ``work`` and reads, for every
counter in the ledger, one and the same value, inside the ledger's bounds (see
`crdtd.lab.workload`). `await_folded`: after a sync with no writes, every node's value
at the last full sync (``before``) equals its value, on the same epoch.

A failure raises `NotConverged` (an AssertionError) naming the expected values, a table
of what each node reads, and the log tail of the nodes that disagree.
"""

from __future__ import annotations

import collections
import contextlib
import time
from collections.abc import Sequence
from typing import Any

from crdtd.control.client import DaemonUnreachable
from crdtd.control.protocol import ControlError
from crdtd.lab.lab import Lab, Node
from crdtd.lab.workload import Ledger

POLL_S = 0.25
TAIL_LINES = 30
TAILS_MAX = 3


class NotConverged(AssertionError):
    """The lab did not reach the expected state in time; the message says how."""


def read_node(node: Node, variables: Sequence[str]) -> dict[str, Any]:
    """``{"mode", "epoch", "values": {variable: value or None}, "before": {...}}``, or
    ``{"error": ...}`` when the node does not answer."""
    if node.crashed:
        code = None if node.proc is None else node.proc.returncode
        return {"error": f"crdtd crashed (exit {code}): see its log"}
    try:
        status = node.call("status")
        values: dict[str, int | None] = {}
        before: dict[str, int | None] = {}
        for variable in variables:
            try:
                answer = node.call("get", {"variable": variable})
            except ControlError as error:
                if error.code != "not_found":
                    raise
                values[variable] = before[variable] = None
            else:
                values[variable] = answer["value"]
                before[variable] = answer["before"]
    except (DaemonUnreachable, ControlError) as error:
        return {"error": str(error)}
    return {"mode": status["mode"], "epoch": status["epoch"], "values": values, "before": before}


def _problems(
    reads: dict[str, dict[str, Any]], ledger: Ledger, variables: Sequence[str]
) -> dict[str, list[str]]:
    """Node name -> what is wrong with it (empty: all agree, in bounds, in work)."""
    problems: dict[str, list[str]] = collections.defaultdict(list)
    for name, read in reads.items():
        if "error" in read:
            problems[name].append(read["error"])
        elif read["mode"] != "work":
            problems[name].append(f"mode {read['mode']}")
    answered = {name: read for name, read in reads.items() if "error" not in read}
    for variable in variables:
        tally = ledger.tally(variable)
        low, high = tally.bounds()
        # A counter nobody ever acked an add to need not exist; where it does, it
        # must read the same as everywhere else (a maybe may have created it).
        default = 0 if tally.acked == 0 else None
        values = {
            name: default if read["values"][variable] is None else read["values"][variable]
            for name, read in answered.items()
        }
        seen = collections.Counter(values.values())
        majority = seen.most_common(1)[0][0] if seen else None
        for name, value in values.items():
            if value is None:
                problems[name].append(f"{variable} unknown")
            elif not low <= value <= high:
                problems[name].append(f"{variable}={value} outside [{low}, {high}]")
            elif value != majority:
                problems[name].append(f"{variable}={value} but most read {majority}")
    return dict(problems)


def await_convergence(
    lab: Lab,
    ledger: Ledger,
    *,
    timeout_s: float = 30.0,
    nodes: Sequence[Node] | None = None,
) -> dict[str, int]:
    """Wait until the running nodes (or *nodes*) agree with each other and the ledger;
    return the agreed values. Raise `NotConverged` at the deadline."""
    variables = ledger.variables
    deadline = time.monotonic() + timeout_s
    while True:
        members = list(nodes) if nodes is not None else lab.wanted()
        reads = {node.name: read_node(node, variables) for node in members}
        problems = _problems(reads, ledger, variables)
        if not problems and reads:
            first = next(iter(reads.values()))
            return dict(first["values"])
        if time.monotonic() >= deadline:
            raise NotConverged(_report(lab, ledger, reads, problems, f"{timeout_s:g} s"))
        time.sleep(POLL_S)


def await_folded(lab: Lab, ledger: Ledger, *, timeout_s: float = 30.0) -> dict[str, Any]:
    """With writers paused and the lab converged: run syncs from the first running node
    until one completes, then require every node to read ``before == value`` on one
    epoch. Returns the completed sync's answer."""
    members = lab.wanted()
    deadline = time.monotonic() + timeout_s
    answers = []
    while True:
        try:
            answer = members[0].call("sync", timeout_s=max(deadline - time.monotonic(), 1.0))
        except (DaemonUnreachable, ControlError) as error:
            answer = {"result": "error", "reason": str(error)}
        answers.append(answer)
        if answer.get("result") == "completed":
            break
        if time.monotonic() >= deadline:
            raise NotConverged(f"no sync completed in {timeout_s:g} s: {answers[-5:]}")
        time.sleep(0.2)
    variables = ledger.variables
    while True:
        reads = {node.name: read_node(node, variables) for node in members}
        problems = _problems(reads, ledger, variables)
        epochs = {read.get("epoch") for read in reads.values()}
        for name, read in reads.items():
            if "error" in read:
                continue
            unfolded = [v for v in variables if read["before"][v] != read["values"][v]]
            if unfolded:
                problems.setdefault(name, []).append(f"not folded: {', '.join(unfolded)}")
            if len(epochs) > 1:
                problems.setdefault(name, []).append(f"epoch {read['epoch']}")
        if not problems:
            return answer
        if time.monotonic() >= deadline:
            raise NotConverged(_report(lab, ledger, reads, problems, f"{timeout_s:g} s (fold)"))
        time.sleep(POLL_S)


def _report(
    lab: Lab,
    ledger: Ledger,
    reads: dict[str, dict[str, Any]],
    problems: dict[str, list[str]],
    waited: str,
) -> str:
    variables = ledger.variables
    lines = [f"not converged after {waited}: {len(problems)} of {len(reads)} nodes disagree"]
    lines += [
        f"  expected {variable} = {ledger.tally(variable).describe()}" for variable in variables
    ]
    lines.append("  node  mode   epoch  " + "  ".join(f"{v:>10}" for v in variables) + "  problems")
    for name, read in reads.items():
        if "error" in read:
            lines.append(f"  {name}  (no answer)  {read['error']}")
            continue
        values = "  ".join(f"{read['values'][v]!s:>10}" for v in variables)
        lines.append(
            f"  {name}  {read['mode']:<5}  {read['epoch']:>5}  {values}  "
            f"{'; '.join(problems.get(name, []))}"
        )
    for name in list(problems)[:TAILS_MAX]:
        with contextlib.suppress(KeyError):  # removed from the lab meanwhile
            lines.append(lab.node(name).tail(TAIL_LINES))
    return "\n".join(lines)
