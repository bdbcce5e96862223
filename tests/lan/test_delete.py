"""A delete across a partition, on real daemons in network namespaces: the node cut
off while the others delete keeps what it adds meanwhile, and after healing holds the
same value as the others; nothing the delete removed comes back."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence

import pytest

from crdtd.lab import Lab, Node

pytestmark = pytest.mark.lan

MakeLab = Callable[..., Lab]
CONVERGE_S = 30.0


def test_a_node_partitioned_during_a_delete_agrees_after_healing(make_lab: MakeLab) -> None:
    lab = make_lab(3, config={"sync": {"interval_s": 0}})
    deleter, other, cut_off = lab.nodes
    for index, node in enumerate(lab.nodes):
        node.call("add", {"variable": "x", "delta": 10 * (index + 1)})
    _await_values(lab, 60)

    lab.partition([deleter, other], [cut_off])
    assert deleter.call("delete", {"variable": "x"})["deleted"] is True
    _await_values(lab, None, [deleter, other])
    cut_off.call("add", {"variable": "x", "delta": 4})  # not seen by the delete: it stays
    other.call("add", {"variable": "x", "delta": 1})  # after the delete: it counts from 0
    assert cut_off.get("x") == 64, "the cut-off node cannot have heard of the delete"

    lab.heal()
    _await_values(lab, 5)
    assert lab.nodes[0].call("sync", timeout_s=30)["result"] == "completed"
    _await_values(lab, 5)


def _await_values(lab: Lab, expected: int | None, nodes: Sequence[Node] | None = None) -> None:
    """Every node (of *nodes*) reads *expected* for x (None: does not show it)."""
    deadline = time.monotonic() + CONVERGE_S
    while True:
        values = {node.name: node.get("x") for node in nodes or lab.nodes}
        if all(value == expected for value in values.values()):
            return
        assert time.monotonic() < deadline, f"x: expected {expected} everywhere, got {values}"
        time.sleep(0.2)
