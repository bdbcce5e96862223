"""Delete: a grave per variable, joined like bases; nothing deleted comes back."""

from __future__ import annotations

import random

import pytest

from crdtd.core import wire
from crdtd.core.events import VariableDeleted
from crdtd.core.ids import InvalidInput, Origin
from crdtd.core.messages import Grave
from crdtd.core.node import Node
from crdtd.core.records import Buried
from crdtd.core.settings import Settings
from crdtd.core.view import UnknownVariable, variable_view
from tests.core.test_node import START, address_of, lan_of


def test_a_delete_removes_the_variable_from_every_node() -> None:
    lan = lan_of("a", "b", "c")
    lan["a"].add("x", 3, lan.now)
    lan["b"].add("x", 4, lan.now)
    lan["a"].add("y", 1, lan.now)
    lan.settle()
    assert lan["c"].delete("x", lan.now) is True
    lan.settle()
    assert lan.values("x") == {"a": None, "b": None, "c": None}
    assert all(node.variables() == ["y"] for node in lan.nodes.values())
    assert all(lan.of_type(n, VariableDeleted) == [VariableDeleted("x")] for n in "abc")
    with pytest.raises(UnknownVariable):
        variable_view(lan["a"], "x")
    assert lan["a"].delete("x", lan.now) is False  # gone: a no-op, not an error


def test_an_add_after_a_delete_starts_from_zero_and_create_shows_zero() -> None:
    lan = lan_of("a", "b")
    lan["a"].add("x", 10, lan.now)
    lan["a"].add("z", 10, lan.now)
    lan.settle()
    lan["a"].delete("x", lan.now)
    lan["a"].delete("z", lan.now)
    lan.settle()
    lan["b"].add("x", 2, lan.now)
    assert lan["a"].create("z", lan.now) is True
    lan.run_for(2.0)
    assert lan.values("x") == {"a": 2, "b": 2}
    assert lan.values("z") == {"a": 0, "b": 0}


def test_an_add_the_deleting_node_had_not_seen_survives_it() -> None:
    """The documented rule: a delete removes the ops its node held, no others."""
    lan = lan_of("a", "b")
    lan["a"].add("x", 3, lan.now)
    lan.settle()
    lan.isolate("b")
    lan["b"].add("x", 5, lan.now)  # unseen by a
    lan["a"].delete("x", lan.now)
    lan.settle()
    lan.heal()
    lan.run_for(3.0)
    assert lan.values("x") == {"a": 5, "b": 5}


def test_a_node_that_missed_the_delete_buries_the_same_ops_and_revives_none() -> None:
    lan = lan_of("a", "b", "c")
    for node_id in "abc":
        lan[node_id].add("x", 7, lan.now)
    lan.settle()
    lan.isolate("c")
    lan["a"].delete("x", lan.now)
    lan.settle()
    lan["b"].add("x", 1, lan.now)  # after the delete: counts
    lan["c"].add("x", 100, lan.now)  # on the far side: unseen by a, counts too
    lan.run_for(2.0)
    assert lan.values("x") == {"a": 1, "b": 1, "c": 121}  # c holds the deleted ops still
    lan.heal()
    lan.run_for(3.0)
    assert lan.values("x") == {"a": 101, "b": 101, "c": 101}
    assert {n: node.ops_in_log() for n, node in lan.nodes.items()} == {"a": 2, "b": 2, "c": 2}


def test_a_deleted_variable_stays_deleted_across_a_restart_and_a_sync() -> None:
    lan = lan_of("a", "b")
    lan["a"].add("x", 3, lan.now)
    lan["b"].add("x", 4, lan.now)
    lan.settle()
    lan["b"].delete("x", lan.now)
    lan.settle()
    assert any(isinstance(r, Buried) for r in lan.disk["a"])
    lan.restart("a")
    lan.run_for(2.0)
    assert lan.values("x") == {"a": None, "b": None}
    lan["a"].start_sync(lan.now)
    lan.run_for(2.0)
    assert (lan["a"].epoch, lan["b"].epoch) == (1, 1)
    lan["a"].add("x", 1, lan.now)
    lan.run_for(2.0)
    assert lan.values("x") == {"a": 1, "b": 1}


def test_deleted_names_do_not_count_against_variables_max() -> None:
    lan = lan_of("a", "b", settings=Settings(variables_max=2))
    lan["a"].add("x", 1, lan.now)
    lan["a"].add("y", 1, lan.now)
    with pytest.raises(InvalidInput, match="variables_max"):
        lan["a"].add("z", 1, lan.now)
    lan["a"].delete("x", lan.now)
    lan["a"].add("z", 1, lan.now)
    with pytest.raises(InvalidInput, match="variables_max"):
        lan["a"].add("x", 1, lan.now)  # shown again would be a third


def test_a_grave_claiming_more_of_our_own_ops_than_we_made_is_refused() -> None:
    node = Node(Origin("a", 1), Settings(), random.Random("t/a"), START)
    node.add("x", 5, START)
    node.records_to_persist()
    peer = wire.Encoder(Origin("b", 1))
    forged = Grave("x", ((node.origin, 9, 45),))
    node.receive_datagram(peer.announce(node.mode, 0, None, [])[0], address_of("b"), START)
    node.receive_datagram(peer.graves([forged])[0], address_of("b"), START)
    assert node.value("x") == 5
    assert node.stats["claims_refused"] == 1
    wrong_total = Grave("x", ((node.origin, 1, 6),))
    node.receive_datagram(peer.graves([wrong_total])[0], address_of("b"), START)
    assert node.value("x") == 5
    assert node.stats["claims_refused"] == 2
