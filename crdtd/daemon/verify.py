"""What ``crdtctl verify`` reports: do the nodes agree, and who is behind by what.

Rules:
- the input is a `VerifyFinished`: every answering node's reports (ours included) and the
  nodes that stayed silent; the output is plain JSON-ready data, nothing else;
- a variable agrees when every answering node holds it, all with one value, and no node
  is behind: for each origin, a node's watermark (the highest nonce it holds with no hole
  below) is compared with the highest watermark any node reports, and the difference is
  the number of that origin's ops the node is missing. A node that lacks the variable is
  listed in ``missing_on`` and disagrees;
- the cluster agrees when every variable agrees and no node was silent: a node that did
  not answer may hold anything.

``ops_hash`` is reported as ``hashes_agree`` for information only: a node that folded a
barrier's base and one that has not yet hash the same ops differently.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from crdtd.core.messages import VariableReport


def summarize(
    reports: Mapping[str, Mapping[str, VariableReport]],
    silent: Sequence[str],
    conflicts: Sequence[str] = (),
) -> dict[str, Any]:
    """The verify answer for *reports* (node -> variable -> report), *silent* nodes and
    node ids that two live daemons hold (*conflicts*): those never "agree", since one
    report per id cannot speak for both holders."""
    nodes = sorted(reports)
    names = sorted({name for per_node in reports.values() for name in per_node})
    variables = {name: _variable(name, reports, nodes) for name in names}
    agree = not silent and not conflicts and all(entry["agree"] for entry in variables.values())
    return {
        "agree": agree,
        "nodes": nodes,
        "silent": sorted(silent),
        "identity_conflicts": sorted(conflicts),
        "variables": variables,
    }


def _variable(
    name: str, reports: Mapping[str, Mapping[str, VariableReport]], nodes: Sequence[str]
) -> dict[str, Any]:
    held = {node: reports[node][name] for node in nodes if name in reports[node]}
    marks = {node: {str(origin): mark for origin, mark in r.marks} for node, r in held.items()}
    highest: dict[str, int] = {}
    for per_origin in marks.values():
        for origin, mark in per_origin.items():
            highest[origin] = max(highest.get(origin, 0), mark)
    behind: dict[str, list[dict[str, Any]]] = {}
    for node in held:
        lagging = [
            {"origin": origin, "missing": top - marks[node].get(origin, 0)}
            for origin, top in sorted(highest.items())
            if marks[node].get(origin, 0) < top
        ]
        if lagging:
            behind[node] = lagging
    missing_on = [node for node in nodes if node not in held]
    values = {node: report.value for node, report in held.items()}
    agree = not missing_on and not behind and len(set(values.values())) <= 1
    return {
        "agree": agree,
        "values": values,
        "behind": behind,
        "missing_on": missing_on,
        "hashes_agree": len({report.ops_hash for report in held.values()}) <= 1,
    }
