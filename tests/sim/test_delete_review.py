"""The delete scenario's oracle, tried against a known-bad grave rule (review)."""

from __future__ import annotations

import pytest

from crdtd.core import replication
from crdtd.core.messages import Graves
from crdtd.core.peers import Peer
from crdtd.sim.runner import run
from crdtd.sim.scenarios import SCENARIOS


def _bury_all_held(
    self: replication.Replication, message: Graves, peer: Peer, now: float
) -> list[replication.Effect]:
    """The mutant: a node that learns a grave buries everything it holds of the variable
    (its own cut) too -- ops the deleting node never saw are lost, as the rule forbids
    (tests/core/test_delete.py's observed-remove tests fail on it)."""
    effects: list[replication.Effect] = []
    for grave in message.graves:
        counter = self._remote_variable(grave.variable, effects)
        if counter is not None:
            effects += replication.bury(counter, [*grave.marks, *counter.cut()])
    return effects


def test_the_delete_scenario_catches_a_grave_that_buries_ops_its_deleter_never_saw(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(replication.Replication, "on_graves", _bury_all_held)
    results = [run(SCENARIOS["delete"], seed) for seed in range(3)]
    assert not all(result.ok for result in results)
