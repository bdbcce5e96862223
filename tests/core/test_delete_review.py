"""Delete (graves): reproductions of the bugs a review found.

The fixed ones are plain tests. The open ones are ``xfail(strict=True)``: each states
what the documented rule promises and fails on the current code; a fix turns it into
an unexpected pass, to be unmarked (docs/protocol.md, "Delete", lists them).
"""

from __future__ import annotations

import contextlib

import pytest

from crdtd.core.events import SyncFinished, ValueChanged, VariableAdded
from crdtd.core.ids import InvalidInput
from crdtd.core.messages import Message
from crdtd.core.modes import Mode
from crdtd.core.settings import Settings
from tests.core.test_node import address_of, lan_of


def test_create_delete_churn_under_variables_max_does_not_split_the_cluster() -> None:
    lan = lan_of("a", "b", settings=Settings(variables_max=2))
    for i in range(4):  # never more than one variable shown at a time
        lan["a"].add(f"v{i}", 1, lan.now)
        lan.settle()
        assert lan["a"].delete(f"v{i}", lan.now) is True
        lan.settle()
    with contextlib.suppress(InvalidInput):  # refusing it is consistent too
        lan["a"].add("w", 7, lan.now)  # one shown name: under variables_max
    lan.run_for(3.0)
    assert lan.values("w")["a"] == lan.values("w")["b"]
    lan["a"].start_sync(lan.now)
    lan.run_for(30.0)
    assert [e.result for e in lan.of_type("a", SyncFinished)] == ["completed"]


def test_a_node_that_joins_after_a_delete_never_shows_the_deleted_value() -> None:
    lan = lan_of("a", "b")
    lan["a"].add("x", 5, lan.now)
    lan["a"].add("x", 6, lan.now)
    lan.settle()
    assert lan["a"].delete("x", lan.now) is True
    lan.settle()
    lan.join("c")
    shown: list[int | None] = []

    def watch_c(sender: str, receiver: str, message: Message) -> bool:
        shown.append(lan["c"].value("x"))
        return False  # lose nothing: only look at c after each delivery

    lan.drop = watch_c
    lan.run_for(2.0)
    assert lan["c"].value("x") is None
    assert 11 not in shown  # c showed the deleted ops' sum for most of a second
    assert lan.of_type("c", VariableAdded) == []
    assert ValueChanged("x", 11) not in lan.of_type("c", ValueChanged)


def test_a_held_buried_name_that_a_peer_revives_during_the_barrier_counts_once() -> None:
    lan = lan_of("a", "b", settings=Settings(variables_max=3))
    lan["a"].add("x", 1, lan.now)
    lan["a"].add("y", 1, lan.now)
    lan.settle()
    lan["a"].delete("x", lan.now)
    lan.settle()
    lan.cut.add(("b", "a"))  # keep a in its barrier, and b's add away from a for now
    lan["b"].add("x", 5, lan.now)  # shows x again
    lan.disk["b"].extend(lan["b"].records_to_persist())
    from_b = [datagram.payload for datagram in lan["b"].datagrams_to_send()]
    lan["a"].start_sync(lan.now)
    assert lan["a"].mode is Mode.SYNC
    lan["a"].add("x", 1, lan.now)  # held; x is buried here, so it counts as new
    for payload in from_b:
        lan["a"].receive_datagram(payload, address_of("b"), lan.now)
    lan.flush("a")
    assert lan["a"].variables() == ["x", "y"]
    lan["a"].add("z", 1, lan.now)  # x, y, z: at most 3 -- refused today


def test_a_held_name_that_a_peer_buries_during_the_barrier_still_counts() -> None:
    lan = lan_of("a", "b", settings=Settings(variables_max=2))
    lan["a"].add("x", 1, lan.now)
    lan["a"].add("y", 1, lan.now)
    lan.settle()
    lan.cut.add(("b", "a"))
    lan["b"].delete("x", lan.now)
    lan.disk["b"].extend(lan["b"].records_to_persist())
    from_b = [datagram.payload for datagram in lan["b"].datagrams_to_send()]
    lan["a"].start_sync(lan.now)
    assert lan["a"].mode is Mode.SYNC
    lan["a"].add("x", 1, lan.now)  # held; x is shown here
    for payload in from_b:
        lan["a"].receive_datagram(payload, address_of("b"), lan.now)
    lan.flush("a")
    assert lan["a"].variables() == ["y"]
    with pytest.raises(InvalidInput, match="variables_max"):
        lan["a"].add("z", 1, lan.now)  # the held add shows x again: y, x are 2
    lan.heal()
    lan.run_for(1.0)
    assert len(lan["a"].variables()) <= 2


@pytest.mark.xfail(
    strict=True,
    reason="a create of a name new here makes a counter but no op (writes.create), so "
    "a grave made elsewhere that this node had not seen buries it when it arrives: "
    "the acknowledged create (True) is undone, though the rule says a create after a "
    "delete is an add of zero and survives",
)
def test_a_create_the_deleting_node_never_saw_survives_the_delete() -> None:
    lan = lan_of("a", "b")
    lan.isolate("b")
    lan["a"].add("x", 3, lan.now)
    assert lan["a"].delete("x", lan.now) is True
    lan.settle()
    assert lan["b"].create("x", lan.now) is True  # b never heard of x: a new name here
    lan.heal()
    lan.run_for(3.0)
    assert lan.values("x") == {"a": 0, "b": 0}


def test_create_of_a_deleted_name_during_a_barrier_is_a_create_like_any_other() -> None:
    lan = lan_of("a", "b")
    lan["a"].add("x", 3, lan.now)
    lan.settle()
    lan["a"].delete("x", lan.now)
    lan.settle()
    lan.cut.add(("b", "a"))  # keep a in its barrier for a moment
    lan["a"].start_sync(lan.now)
    assert lan["a"].mode is Mode.SYNC
    assert lan["a"].create("x", lan.now) is True
    assert lan["a"].create("x", lan.now) is False  # it exists now: a no-op
    assert lan["a"].delete("x", lan.now) is True
    lan.heal()
    lan.run_for(2.0)
    assert lan.values("x") == {"a": None, "b": None}
