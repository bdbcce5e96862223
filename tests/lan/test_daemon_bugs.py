"""Daemon bugs the LAN lab found. A case that fails on today's daemon is marked
``xfail(strict=True)``, so it turns red (XPASS) the day the fix lands: then drop the
mark. The others guard bugs already fixed.

The ledger rule is the one of test_faults.py: every node must read the acked sum.
"""

from __future__ import annotations

import collections
import random
import time
from collections.abc import Callable

import pytest

from crdtd.lab import Lab, Workload, await_convergence, await_folded

pytestmark = pytest.mark.lan

MakeLab = Callable[..., Lab]
NODES = 5
RATE_PER_S = 25.0


@pytest.mark.parametrize(
    "outbound",
    [
        # fixed: PeerList says which peers' multicast the sender hears, suspected included
        pytest.param(False, id="inbound_only"),
        pytest.param(True, id="both_ways"),  # fixed in c78e5e8: fan out to suspected peers
    ],
)
def test_a_node_cut_off_from_the_group_keeps_up_by_unicast(
    make_lab: MakeLab, lab_rng: random.Random, outbound: bool
) -> None:
    """One node drops all multicast it receives (``-d 224.0.0.0/4 -j DROP`` on INPUT;
    with ``both_ways`` also on OUTPUT), while unicast works both ways. Unicast fan-out
    must take over: it keeps every peer and, with the cut still in place, reads the
    acked sums once the writes stop."""
    lab = make_lab(NODES, config={"sync": {"interval_s": 0}})
    deaf = lab.nodes[-1]
    with Workload(lab, rate_per_s=RATE_PER_S, seed=lab_rng.random()) as work:
        deaf.block_multicast(outbound=outbound)
        time.sleep(14)  # past peer_timeout_s
    live = {p["node_id"] for p in deaf.status()["peers"] if not p["suspected"]}
    await_convergence(lab, work.ledger, timeout_s=10)
    assert live == {node.name for node in lab.nodes if node is not deaf}
    lab.heal()


# Fixed in 4edf3e2: the initiator turns strays away with SyncAbort.
def test_a_stalled_node_does_not_hold_later_barriers_hostage(
    make_lab: MakeLab, lab_rng: random.Random
) -> None:
    """n05 is stopped (SIGSTOP) while n01 runs a sync, which completes without it
    (dropped after freeze_max_s / 4). n05's socket buffer meanwhile holds n01's
    SyncStart retransmissions. Resumed, n05 reads them and enters that finished
    barrier (before 4edf3e2 it then sat there until its own freeze_max_s deadline,
    refusing every newer barrier and holding its writes). Required: n05 never waits
    out freeze_max_s, and syncs run back to back in the second after the resume
    complete (after at most a few refusals)."""
    lab = make_lab(NODES, config={"sync": {"interval_s": 0}})
    initiator, stalled = lab.nodes[0], lab.nodes[-1]
    with Workload(lab, rate_per_s=RATE_PER_S, seed=lab_rng.random()) as work:
        stalled.freeze()
        try:
            first = initiator.call("sync", timeout_s=30)
        finally:
            stalled.thaw()
        results: collections.Counter[str] = collections.Counter()
        began = time.monotonic()
        while time.monotonic() - began < 1.0:
            answer = initiator.call("sync", timeout_s=30)
            results[f"{answer['result']} {answer['reason']}".strip()] += 1
    waited_out = [
        event for event in stalled.events("sync_aborted") if "freeze_max_s" in event["reason"]
    ]
    assert first["result"] == "completed", first
    assert not waited_out, f"n05 sat in a dead barrier: {waited_out}; syncs: {dict(results)}"
    # One refusal may cross the initiator's SyncAbort on the wire; a dead barrier held
    # for freeze_max_s refuses hundreds.
    refused = sum(count for outcome, count in results.items() if outcome != "completed")
    assert results["completed"] > 0 and refused <= 3, dict(results)
    await_convergence(lab, work.ledger, timeout_s=30)
    await_folded(lab, work.ledger, timeout_s=30)
