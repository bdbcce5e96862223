"""Turning command results into text: aligned tables for people, one JSON envelope for
scripts.

Rules:
- rendering never talks to the daemon and never picks an exit code;
- ``--json`` output is one object on one line: ``{"v": 1, "ok": true, "command": C,
  "data": {...}}`` or ``{"v": 1, "ok": false, "command": C, "error": MESSAGE}``; ``data``
  is the daemon's answer unchanged, so the field contract is the control protocol's;
- tables: one header row in capitals, columns two spaces apart, numbers right-aligned;
- a text renderer reads only the fields of the contract; a missing one raises
  ``KeyError``, which the caller reports as an unexpected answer.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from typing import Any

ENVELOPE_VERSION = 1

Data = dict[str, Any]


def envelope(command: str, data: Data) -> str:
    return json.dumps({"v": ENVELOPE_VERSION, "ok": True, "command": command, "data": data})


def error_envelope(command: str | None, message: str) -> str:
    return json.dumps({"v": ENVELOPE_VERSION, "ok": False, "command": command, "error": message})


def text(command: str, data: Data) -> str:
    """The result of *command* for a person."""
    return _TEXT[command](data)


def table(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    """Columns two spaces apart; a column of integers is right-aligned."""
    cells = [[str(cell) for cell in row] for row in rows]
    widths = [
        max([len(header)] + [len(row[i]) for row in cells]) for i, header in enumerate(headers)
    ]
    numeric = [
        bool(rows) and all(isinstance(row[i], int) and not isinstance(row[i], bool) for row in rows)
        for i in range(len(headers))
    ]

    def line(row: Sequence[str]) -> str:
        padded = (
            cell.rjust(width) if right else cell.ljust(width)
            for cell, width, right in zip(row, widths, numeric, strict=True)
        )
        return "  ".join(padded).rstrip()

    return "\n".join([line(headers), *(line(row) for row in cells)])


def pairs(items: Sequence[tuple[str, object]]) -> str:
    """``key  value`` lines with the values aligned."""
    width = max(len(key) for key, _ in items)
    return "\n".join(f"{key.ljust(width)}  {value}" for key, value in items)


def address(value: object) -> str:
    """``host:port`` for a ``[host, port]`` pair (``[host]:port`` for IPv6)."""
    if isinstance(value, list | tuple) and len(value) == 2:
        host, port = value
        return f"[{host}]:{port}" if ":" in str(host) else f"{host}:{port}"
    return str(value)


def age(milliseconds: int) -> str:
    if milliseconds < 1000:
        return f"{milliseconds} ms ago"
    return f"{milliseconds / 1000:.1f} s ago"


def peers_table(peers: Sequence[Data]) -> str:
    if not peers:
        return "(no peers)"
    # A suspected row is often a restarted node's old incarnation, listed until it
    # expires beside the new one: say so, or it reads as the same node twice.
    rows = [
        (
            peer["node_id"],
            address(peer["address"]),
            peer["mode"],
            age(peer["last_seen_ms"]) + (", suspected" if peer.get("suspected") else ""),
        )
        for peer in peers
    ]
    return table(["NODE", "ADDRESS", "MODE", "LAST SEEN"], rows)


def _create(data: Data) -> str:
    variable = data["variable"]
    return f"created {variable}" if data["created"] else f"{variable} already exists"


def _delete(data: Data) -> str:
    variable = data["variable"]
    return (
        f"deleted {variable}"
        if data["deleted"]
        else f"{variable}: no such variable (nothing deleted)"
    )


def _variables(data: Data) -> str:
    return "\n".join(data["variables"]) or "(no variables)"


def _get(data: Data) -> str:
    return pairs(
        [
            ("variable", data["variable"]),
            ("value", data["value"]),
            ("before", data["before"]),
            ("mode", data["mode"]),
        ]
    )


def _history(data: Data) -> str:
    ops = data["ops"]
    heading = (
        f"{data['variable']}: before {data['before']}, "
        f"{len(ops)} op{'' if len(ops) == 1 else 's'} since the last full sync"
    )
    if not ops:
        return heading
    rows = [(op["node_id"], op["incarnation"], op["nonce"], f"{op['delta']:+d}") for op in ops]
    return heading + "\n\n" + table(["NODE", "INCARNATION", "NONCE", "DELTA"], rows)


def _before(data: Data) -> str:
    return pairs([("variable", data["variable"]), ("before", data["before"])])


def _add(data: Data) -> str:
    return f"{data['variable']} = {data['value']}  (node {data['node_id']}, nonce {data['nonce']})"


def _populate(data: Data) -> str:
    return f"{data['variable']} = {data['value']}  ({data['count']} random ops added)"


def _sync(data: Data) -> str:
    return f"sync {data['result']} after {data['duration_ms']} ms; epoch {data['epoch']}"


def _peers(data: Data) -> str:
    return peers_table(data["peers"])


def _status(data: Data) -> str:
    summary = pairs(
        [
            ("node", data["node_id"]),
            ("mode", data["mode"]),
            ("epoch", data["epoch"]),
            ("ops in log", data["ops_in_log"]),
            ("peers", len(data["peers"])),
        ]
    )
    if not data["peers"]:
        return summary
    return summary + "\n\n" + peers_table(data["peers"])


def _keys(data: Data) -> str:
    signing, accepted = data["signing"], data["accepted"]
    if accepted:
        uses = [(key, "signs, accepts" if key == signing else "accepts") for key in accepted]
        keys = table(["KEY", "USE"], uses)
    else:
        keys = "(no keys: datagrams are neither signed nor checked)"
    rejected = data["rejected"]
    if not rejected:
        return keys + "\n\nno datagrams rejected"
    rows = [(reason, count) for reason, count in sorted(rejected.items())]
    return keys + "\n\n" + table(["REJECTED", "DATAGRAMS"], rows)


def _verify(data: Data) -> str:
    variables = data["variables"]
    nodes = data["nodes"]
    lines = []
    if variables:
        rows = []
        for name, entry in variables.items():
            values = entry["values"]
            cells = [values.get(node, "-") for node in nodes]
            rows.append([name, *cells, "yes" if entry["agree"] else "NO"])
        lines.append(table(["VARIABLE", *(node.upper() for node in nodes), "AGREE"], rows))
    else:
        lines.append(f"(no variables on {', '.join(nodes)})")
    for name, entry in variables.items():
        for node in entry["missing_on"]:
            lines.append(f"{name}: {node} does not hold it")
        for node, lagging in entry["behind"].items():
            missing = ", ".join(f"{item['missing']} of {item['origin']}" for item in lagging)
            lines.append(f"{name}: {node} is behind: missing {missing}")
    if data["silent"]:
        lines.append(f"no answer from: {', '.join(data['silent'])}")
    for node in data.get("identity_conflicts", ()):
        lines.append(
            f"{node}: two live daemons share this node id (a cloned state directory?); "
            "give one a new node.id and an empty node.state_dir"
        )
    verdict = "all nodes agree" if data["agree"] else "the nodes do NOT agree"
    lines.append(f"{verdict} ({len(nodes)} answered)")
    return "\n".join(lines)


def _stats(data: Data) -> str:
    ops, grams, repairs, barriers = (
        data["ops"],
        data["datagrams"],
        data["repairs"],
        data["barriers"],
    )
    durations = barriers["duration_ms"]
    dropped = ", ".join(f"{reason} {count}" for reason, count in grams["dropped"].items())

    def ms(value: object) -> str:
        return "-" if value is None else f"{value} ms"

    items: list[tuple[str, object]] = [
        ("node", data["node_id"]),
        ("ops applied from peers", ops["applied"]),
        ("ops added here", ops["local"]),
        ("op batches sent", ops["batches_sent"]),
        ("datagrams in", grams["received"]),
        ("datagrams out", grams["sent"]),
        ("datagrams dropped", dropped or "none"),
        ("gaps detected", repairs["gaps_detected"]),
        ("gaps repaired", repairs["gaps_repaired"]),
        ("repairs asked", repairs["nacks_sent"]),
        ("repairs served", repairs["repairs_served"]),
        ("barriers completed", barriers["completed"]),
        ("barriers aborted", barriers["aborted"]),
        (
            "barrier duration",
            f"last {ms(durations['last'])}, avg {ms(durations['avg'])}, max {ms(durations['max'])}",
        ),
        ("log length", data["log_length"]),
        ("variables", data["variables"]),
        ("peers", f"{data['peers']['live']} live, {data['peers']['suspected']} suspected"),
    ]
    return pairs(items)


def _net_test(data: Data) -> str:
    lines = [
        f"interface {data['interface']} {data['address']}, group {data['group']}, "
        f"unicast port {data['unicast_port']}, ttl {data['ttl']}"
    ]
    width = max((len(check["check"]) for check in data["checks"]), default=0)
    # As wide as the widest status shown: OK, WARN and FAIL fit in 4; UNKNOWN widens it.
    status_width = max((len(check["status"]) for check in data["checks"]), default=0)
    status_width = max(status_width, 4)
    for check in data["checks"]:
        lines.append(
            f"{check['status']:<{status_width}}  {check['check'].ljust(width)}  {check['detail']}"
        )
        if check["hint"] and check["status"] != "OK":
            lines.append(f"{'':<{status_width}}  {'':<{width}}  hint: {check['hint']}")
    lines.append("all checks OK" if data["ok"] else "some checks are not OK")
    return "\n".join(lines)


def _wait_ready(data: Data) -> str:
    return f"crdtd is ready: node {data['node_id']}, mode {data['mode']}"


def _watch(data: Data) -> str:
    if data.get("deleted"):
        return f"{data['variable']} deleted"
    return f"{data['variable']} = {data['value']}"


_TEXT: dict[str, Callable[[Data], str]] = {
    "create": _create,
    "delete": _delete,
    "variables": _variables,
    "get": _get,
    "history": _history,
    "before": _before,
    "add": _add,
    "populate": _populate,
    "sync": _sync,
    "peers": _peers,
    "status": _status,
    "keys": _keys,
    "verify": _verify,
    "stats": _stats,
    "net-test": _net_test,
    "wait-ready": _wait_ready,
    "watch": _watch,
}
