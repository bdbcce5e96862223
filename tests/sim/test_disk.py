"""The simulated disk: a crash keeps exactly the synced records."""

from __future__ import annotations

from crdtd.core.ids import Origin
from crdtd.core.records import BaseFolded, OpRecorded, VariableCreated
from crdtd.sim.disk import Disk

ORIGIN = Origin("n00", 1)


def test_a_crash_drops_only_what_was_not_synced() -> None:
    disk = Disk()
    disk.write([VariableCreated("v"), OpRecorded("v", ORIGIN, 1, 5)])
    assert disk.sync() == [VariableCreated("v"), OpRecorded("v", ORIGIN, 1, 5)]
    disk.write([OpRecorded("v", ORIGIN, 2, 7)])
    assert disk.crash() == 1
    assert disk.synced == [VariableCreated("v"), OpRecorded("v", ORIGIN, 1, 5)]
    assert disk.ops == {("v", ORIGIN, 1): 5}
    assert disk.records_lost == 1


def test_sync_of_nothing_is_not_a_sync() -> None:
    disk = Disk()
    assert disk.sync() == []
    assert disk.syncs == 0


def test_a_base_makes_the_ops_it_folds_durable_and_sums_per_variable() -> None:
    disk = Disk()
    disk.write([BaseFolded("v", ORIGIN, 3, 10), BaseFolded("v", Origin("n01", 1), 1, -2)])
    disk.sync()
    assert disk.holds(("v", ORIGIN, 2))
    assert disk.holds(("v", ORIGIN, 3))
    assert not disk.holds(("v", ORIGIN, 4))
    assert disk.base_sum == {"v": 8}
    disk.write([BaseFolded("v", ORIGIN, 2, 4), BaseFolded("v", ORIGIN, 5, 12)])
    disk.sync()
    assert disk.bases[("v", ORIGIN)].upto == 5
    assert disk.base_sum == {"v": 10}


def test_a_wipe_loses_everything() -> None:
    disk = Disk()
    disk.write([OpRecorded("v", ORIGIN, 1, 5), BaseFolded("v", ORIGIN, 1, 5)])
    disk.sync()
    disk.wipe()
    assert disk.synced == [] and disk.ops == {} and disk.bases == {} and disk.base_sum == {}
