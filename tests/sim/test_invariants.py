"""The checks catch broken nodes: each mutant breaks one rule through the public API.

The mutants subclass the real `Node` and lie only at its boundary (queries, outputs,
constructor), so they keep working as the core changes.
"""

from __future__ import annotations

import random
from collections.abc import Iterable

import pytest

from crdtd.core.events import AddApplied, Event
from crdtd.core.ids import Address, Origin
from crdtd.core.node import Datagram, Node
from crdtd.core.records import IncarnationStarted, OpRecorded, Record
from crdtd.core.settings import Settings
from crdtd.sim.cluster import Cluster, NodeFactory, address_of
from crdtd.sim.failures import InvariantViolation
from crdtd.sim.runner import run
from crdtd.sim.scenarios import SCENARIOS


def cluster_of(factory: NodeFactory, size: int = 3) -> Cluster:
    cluster = Cluster(5, size, node_factory=factory, full_check_every=1)
    for index in range(size):
        cluster.start(index)
    return cluster


class ValueOffByOne(Node):
    def value(self, variable: str) -> int | None:
        value = super().value(variable)
        return None if value is None else value + 1


class AltersHistory(Node):
    def history(self, variable: str) -> list[tuple[Origin, int, int]] | None:
        history = super().history(variable)
        if history:
            origin, nonce, delta = history[0]
            history[0] = (origin, nonce, delta + 1)
        return history


class CountsTwice(Node):
    def history(self, variable: str) -> list[tuple[Origin, int, int]] | None:
        history = super().history(variable)
        return history + history[:1] if history else history


class AcksWithoutPersisting(Node):
    def records_to_persist(self) -> list[Record]:
        return [r for r in super().records_to_persist() if not isinstance(r, OpRecorded)]


class ReusesItsIncarnation(Node):
    """Boots under its last incarnation, from a state that lost its own ops: the old
    rule on a rewound disk."""

    def __init__(
        self,
        origin: Origin,
        settings: Settings,
        rng: random.Random,
        now: float,
        records: Iterable[Record] = (),
        seq_start: int = 0,
    ) -> None:
        records = list(records)
        used = [r.incarnation for r in records if isinstance(r, IncarnationStarted)]
        kept = [
            r
            for r in records
            if not isinstance(r, IncarnationStarted)
            and not (isinstance(r, OpRecorded) and r.origin.node_id == origin.node_id)
        ]
        if used:
            origin = Origin(origin.node_id, max(used))
        super().__init__(origin, settings, rng, now, kept, seq_start)


class DeafToN01(Node):
    def receive_datagram(
        self, data: bytes, address: Address, now: float, via_multicast: bool = False
    ) -> None:
        if address != address_of(1):
            super().receive_datagram(data, address, now, via_multicast)


class Oversized(Node):
    def datagrams_to_send(self) -> list[Datagram]:
        return [*super().datagrams_to_send(), Datagram(bytes(1401), None)]


class StrayAck(Node):
    def events(self) -> list[Event]:
        return [*super().events(), AddApplied(999, "v", self.origin, 1, 0)]


class Spinner(Node):
    def get_timer(self) -> float:
        return min(super().get_timer(), 0.5)


def test_the_real_node_passes_the_checks_every_step() -> None:
    cluster = cluster_of(Node)
    for i in range(20):
        cluster.add(i % 3, "v", i - 10)
        cluster.run_until(cluster.now + 0.05)
    cluster.heal()
    cluster.await_convergence(10.0)


@pytest.mark.parametrize(
    ("mutant", "reason"),
    [
        (ValueOffByOne, "bad value"),
        (AltersHistory, "altered op"),
        (CountsTwice, "double count"),
        (AcksWithoutPersisting, "ack before durable"),
        (Oversized, "datagram bytes"),
        (StrayAck, "stray ack"),
    ],
)
def test_a_broken_node_is_caught_at_its_first_bad_step(mutant: NodeFactory, reason: str) -> None:
    with pytest.raises(InvariantViolation, match=reason):
        cluster = cluster_of(mutant)
        for i in range(5):
            cluster.add(i % 3, "v", 3)
            cluster.run_until(cluster.now + 0.1)


def test_a_nonce_reused_after_restart_is_caught() -> None:
    cluster = cluster_of(ReusesItsIncarnation, size=2)
    cluster.add(0, "v", 3)
    cluster.crash(0)
    cluster.start(0)
    with pytest.raises(InvariantViolation, match="nonce reuse"):
        cluster.add(0, "v", 4)


def test_a_node_that_never_catches_up_fails_the_convergence_bound() -> None:
    cluster = cluster_of(DeafToN01)
    cluster.add(1, "v", 3)
    cluster.heal()
    with pytest.raises(
        InvariantViolation, match="no convergence 5 s after heal: n01 knows variables"
    ):
        cluster.await_convergence(5.0)


def test_a_timer_that_never_moves_is_a_livelock() -> None:
    cluster = cluster_of(Spinner)
    with pytest.raises(InvariantViolation, match="livelock"):
        cluster.run_until(2.0)


def test_a_failed_run_reports_its_reason_and_replay_command() -> None:
    result = run(SCENARIOS["quiet"], 3, nodes=4, node_factory=ValueOffByOne)
    assert not result.ok
    assert "bad value" in result.reason
    assert result.replay == "python -m crdtd.sim --scenario quiet --seed 3 --nodes 4 --trace"
