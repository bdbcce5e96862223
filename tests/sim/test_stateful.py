"""Hypothesis drives a small cluster through adds and faults, then demands convergence.

Rules: add, cut (one-way or both ways), lossy links, heal the network, crash (between
steps or inside an add's flush), restart (keeping or wiping the disk), advance time.
Every step is followed by a full invariant scan of every live node; at teardown the
cluster heals (everyone up, no loss, no cuts) and must converge within 60 s of virtual
time. Hypothesis shrinks a failure to a short list of these steps.
"""

from __future__ import annotations

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
)

from crdtd.sim.cluster import Cluster
from crdtd.sim.network import LinkFaults

DELTAS = st.one_of(
    st.integers(min_value=-20, max_value=20),
    st.sampled_from([2**62, -(2**62)]),
)


class ClusterMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.cluster = Cluster(0, 1)

    @initialize(size=st.integers(min_value=2, max_value=5), seed=st.integers(0, 2**16))
    def boot(self, size: int, seed: int) -> None:
        self.cluster = Cluster(seed, size, faults=LinkFaults(delay_max_s=0.01))
        for index in range(size):
            self.cluster.start(index)

    def live(self) -> list[int]:
        return [slot.index for slot in self.cluster.live()]

    def down(self) -> list[int]:
        return [slot.index for slot in self.cluster.down()]

    @precondition(lambda self: bool(self.live()))
    @rule(data=st.data(), variable=st.sampled_from(["a", "b"]), delta=DELTAS)
    def add(self, data: st.DataObject, variable: str, delta: int) -> None:
        total = self.cluster.ledger.acked_total.get(variable, 0)
        if abs(total + delta) >= 2**63 - 2**40:
            delta = -delta  # keep the true total within int64
        index = data.draw(st.sampled_from(self.live()))
        self.cluster.add(index, variable, delta)

    @rule(data=st.data(), one_way=st.booleans())
    def cut(self, data: st.DataObject, one_way: bool) -> None:
        slots = self.cluster.slots
        a, b = data.draw(st.lists(st.sampled_from(slots), min_size=2, max_size=2, unique=True))
        if one_way:
            self.cluster.network.cut_one_way(a.address, b.address)
        else:
            self.cluster.network.cut(a.address, b.address)

    @rule(loss=st.sampled_from([0.1, 0.3]))
    def lossy(self, loss: float) -> None:
        network = self.cluster.network
        network.default = LinkFaults(loss=loss, delay_max_s=network.default.delay_max_s)

    @rule()
    def heal(self) -> None:
        self.cluster.network.heal()

    @precondition(lambda self: len(self.live()) > 1)
    @rule(data=st.data(), mid_flush=st.booleans())
    def crash(self, data: st.DataObject, mid_flush: bool) -> None:
        index = data.draw(st.sampled_from(self.live()))
        if mid_flush:
            self.cluster.crash_in_next_flush(index)
            self.cluster.add(index, "a", 1)
            if self.cluster.slots[index].node is not None:
                self.cluster.slots[index].crash_mid_flush = False
                self.cluster.crash(index)
        else:
            self.cluster.crash(index)

    @precondition(lambda self: bool(self.down()))
    @rule(data=st.data(), wipe=st.booleans())
    def restart(self, data: st.DataObject, wipe: bool) -> None:
        self.cluster.start(data.draw(st.sampled_from(self.down())), wipe=wipe)

    @rule(seconds=st.sampled_from([0.001, 0.02, 0.3, 1.5, 5.0]))
    def advance(self, seconds: float) -> None:
        self.cluster.run_until(self.cluster.now + seconds)

    @invariant()
    def every_live_node_is_consistent(self) -> None:
        self.cluster.check_all()

    def teardown(self) -> None:
        if self.cluster.slots and self.cluster.slots[0].boot:
            self.cluster.heal()
            self.cluster.await_convergence(60.0)


ClusterMachine.TestCase.settings = settings(
    max_examples=60,
    stateful_step_count=40,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
TestClusterMachine = ClusterMachine.TestCase
