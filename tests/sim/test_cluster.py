"""The cluster driver: flush order, crashes, restarts, wipes and convergence."""

from __future__ import annotations

from crdtd.core.modes import Mode
from crdtd.core.records import OpRecorded
from crdtd.sim.cluster import Cluster, address_of


def started(size: int, seed: int = 1) -> Cluster:
    cluster = Cluster(seed, size)
    for index in range(size):
        cluster.start(index)
    return cluster


def test_nodes_are_named_and_addressed_by_index() -> None:
    cluster = started(3)
    assert [s.node_id for s in cluster.slots] == ["n00", "n01", "n02"]
    assert address_of(2) == ("127.0.1.3", 7778)
    assert cluster.slots[1].origin.node_id == "n01"
    assert cluster.node(1).origin == cluster.slots[1].origin


def test_an_acknowledged_add_is_synced_on_its_origins_disk_and_reaches_everyone() -> None:
    cluster = started(3)
    cluster.add(0, "v", 5)
    assert cluster.ledger.acked_total == {"v": 5}
    assert ("v", cluster.slots[0].origin, 1) in cluster.slots[0].disk.ops
    cluster.run_until(1.0)
    assert [cluster.node(i).value("v") for i in range(3)] == [5, 5, 5]
    assert cluster.convergence_gap() is None


def test_a_crash_mid_flush_loses_the_unsynced_op_and_its_ack() -> None:
    cluster = started(2)
    cluster.add(0, "v", 1)
    first = cluster.slots[0].origin
    cluster.crash_in_next_flush(0)
    cluster.add(0, "v", 100)
    assert cluster.slots[0].node is None
    assert cluster.ledger.acked_total == {"v": 1}
    assert cluster.slots[0].disk.synced[-1] == OpRecorded("v", first, 1, 1)
    cluster.run_until(0.5)
    cluster.start(0)
    assert cluster.slots[0].origin.incarnation > first.incarnation
    cluster.add(0, "v", 2)  # nonce 1 of a new incarnation: nothing of the lost op escaped
    cluster.run_until(1.0)
    assert cluster.await_convergence(10.0) >= 1.0
    assert cluster.node(1).value("v") == 3


def test_a_restart_rebuilds_the_node_from_its_synced_records() -> None:
    cluster = started(2)
    cluster.add(0, "v", 4)
    cluster.add(1, "w", -3)
    cluster.run_until(0.5)
    first = cluster.slots[0].origin
    cluster.crash(0)
    cluster.run_until(1.0)
    cluster.start(0)
    node = cluster.node(0)
    assert node.value("v") == 4 and node.value("w") == -3
    assert cluster.slots[0].boot == 2
    assert cluster.slots[0].origin.incarnation > first.incarnation  # every boot: a new one


def test_a_wipe_happens_when_every_acked_op_lives_elsewhere() -> None:
    cluster = started(2)
    cluster.add(0, "v", 4)
    cluster.run_until(0.5)
    cluster.crash(0)
    cluster.start(0, wipe=True)
    assert cluster.stats.wipes == 1
    assert cluster.node(0).value("v") is None
    cluster.add(0, "v", 1)
    cluster.heal()
    cluster.await_convergence(20.0)
    assert cluster.node(0).value("v") == 5


def test_a_wipe_that_would_lose_an_acked_op_is_refused() -> None:
    cluster = started(2)
    cluster.network.cut(cluster.slots[0].address, cluster.slots[1].address)
    cluster.add(0, "v", 4)
    cluster.run_until(0.5)
    cluster.crash(0)
    cluster.start(0, wipe=True)
    assert cluster.stats.wipes_refused == 1
    assert cluster.node(0).value("v") == 4
    cluster.heal()
    cluster.await_convergence(20.0)
    assert cluster.node(1).value("v") == 4


def test_time_jumps_to_the_next_thing_that_can_happen() -> None:
    cluster = started(3)
    cluster.run_until(600.0)
    assert cluster.now == 600.0
    # per node and second about one announce: its timer and two receptions, each with a
    # flush line (6 lines), plus a barrier at sync_interval_s - not a step per millisecond
    assert cluster.trace.steps < 3 * 600 * 8
    assert all(cluster.node(i).mode is Mode.WORK for i in range(3))


def test_heal_restarts_every_down_node() -> None:
    cluster = started(3)
    cluster.crash(1)
    cluster.crash(2)
    cluster.heal()
    assert len(cluster.live()) == 3


def test_a_burst_of_adds_in_one_flush_fits_in_datagrams_and_converges() -> None:
    cluster = started(3)
    cluster.add_batch(0, [(f"v{i % 4}", i) for i in range(300)])
    assert cluster.stats.adds_acked == 300
    assert cluster.stats.step_inputs_max == 300 and cluster.stats.steps_batched == 1
    assert cluster.network.stats.datagrams_sent > 1  # split to fit DATAGRAM_BYTES_MAX
    cluster.await_convergence(10.0)
    assert sum(cluster.node(2).value(f"v{i}") or 0 for i in range(4)) == sum(range(300))


def test_a_barrier_in_a_quiet_cluster_folds_every_log_away() -> None:
    cluster = started(4)
    for i in range(12):
        cluster.add(i % 4, "v", i)
    cluster.run_until(3.0)
    finished = cluster.await_barrier(1, bound_s=10.0)
    assert finished.result == "completed" and finished.initiator == "n01"
    cluster.await_convergence(10.0)
    assert [cluster.node(i).ops_in_log() for i in range(4)] == [0, 0, 0, 0]
    assert cluster.stats.barriers_completed == 1
    assert cluster.node(3).value("v") == sum(range(12))


def test_a_rewound_disk_comes_back_as_a_new_incarnation_and_gets_its_ops_back() -> None:
    cluster = started(2)
    cluster.add(0, "v", 4)
    cluster.run_until(0.5)
    kept = len(cluster.slots[0].disk.synced)
    cluster.add(0, "v", 5)
    cluster.run_until(1.0)
    first = cluster.slots[0].origin
    cluster.crash(0)
    cluster.start(0, keep=kept, clock_back_ms=3_600_000)
    assert cluster.stats.rewinds == 1
    assert cluster.slots[0].origin.incarnation > first.incarnation  # the clock went back
    assert cluster.node(0).value("v") == 4
    cluster.add(0, "v", 1)  # ledger.issue would raise on a reused nonce
    cluster.heal()
    cluster.await_convergence(20.0)
    assert cluster.node(0).value("v") == 10


def test_a_clone_is_a_second_live_holder_whose_adds_both_count() -> None:
    cluster = started(3)
    cluster.add(0, "v", 1)
    cluster.run_until(0.5)
    twin = cluster.clone(0)
    assert cluster.slots[twin].node_id == "n00"
    assert cluster.slots[twin].origin != cluster.slots[0].origin
    cluster.add(0, "v", 10)
    cluster.add(twin, "v", 100)
    cluster.run_until(3.0)
    cluster.await_convergence(10.0)
    assert cluster.node(2).value("v") == 111
    assert cluster.node(2).conflicts(cluster.now) == ["n00"]
    finished = cluster.await_barrier(1, bound_s=10.0)
    assert finished.result == "completed"


def test_claims_about_a_nodes_own_origin_are_refused() -> None:
    cluster = started(2)
    cluster.add(0, "v", 1)
    cluster.run_until(0.5)
    for kind in ("base", "op", "mark", "impersonate", "barrier"):
        cluster.forge(0, kind, "v")
    cluster.run_until(1.0)
    node = cluster.node(0)
    assert node.stats["claims_refused"] == 4  # a base, two ops, a watermark
    assert node.stats["barrier_start_from_stranger"] == 1
    assert node.value("v") == 1
    cluster.add(0, "v", 1)  # the next nonce is still its own to take
    cluster.heal()
    cluster.await_convergence(10.0)


def test_what_arrives_while_a_disk_writes_is_taken_by_one_step_as_in_the_driver() -> None:
    cluster = Cluster(1, 3, write_s=(0.05, 0.05))
    for index in range(3):
        cluster.start(index)
    cluster.run_until(1.0)
    batched = cluster.stats.steps_batched
    for round_ in range(20):
        cluster.add(0, "v", 1)
        cluster.add(1, "v", 2)
        assert cluster.stats.adds_acked == 2 * round_, "acknowledged before the disk was done"
        cluster.run_until(cluster.now + 0.2)
    assert cluster.stats.adds_acked == 40
    assert cluster.stats.steps_batched > batched  # n02 took both nodes' ops in one step
    cluster.await_convergence(10.0)
    assert cluster.node(2).value("v") == 60


def test_an_add_queued_behind_a_write_waits_and_a_crash_meanwhile_loses_only_unacked() -> None:
    cluster = Cluster(1, 2, write_s=(0.05, 0.05))
    for index in range(2):
        cluster.start(index)
    cluster.add(0, "v", 1)  # written, not yet synced
    cluster.add(0, "v", 10)  # queued behind that write
    assert cluster.stats.adds_acked == 0
    cluster.crash(0)
    assert cluster.ledger.acked_total == {}
    cluster.start(0)
    cluster.add(0, "v", 100)
    cluster.run_until(1.0)
    cluster.await_convergence(10.0)
    assert cluster.node(1).value("v") == 100
