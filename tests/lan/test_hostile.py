"""A hostile LAN: a keyed 3-node cluster with an attacker in a fourth namespace, then a
key rotation with adds flowing. Real daemons, real multicast, real HMACs.

The attacker (`crdtd.lab.attacker`) captures the group's datagrams, then floods the group
and every node's unicast port for 30 s with random bytes, unsigned and wrongly signed op
batches, tampered and replayed datagrams, while writers add and a probe sends ``status``
to every node (`crdtd.lab.hostile`). Afterwards every value equals the acknowledged adds,
no daemon restarted, no probe request failed, the attacker is nobody's peer and every
kind of bad datagram was counted. Then one node is killed and restarted and the capture
replayed again: every node (the restarted one from its replay floors) refuses it.

How fast the daemons answer under the flood is a figure, not a pass/fail here (tests do
not assert on wall time): ``python bench/lan_hostile.py`` measures it against the 5x
bound. This test prints the same summary (``-s`` shows it).
"""

from __future__ import annotations

import base64
import signal
import time
from collections.abc import Callable
from pathlib import Path
from random import Random

import pytest

from crdtd.core import wire
from crdtd.core.settings import Key
from crdtd.lab import Lab, Node, Outcome, Workload, await_convergence
from crdtd.lab.hostile import CLUSTER_KEY, flood, run_attacker, write_keys

pytestmark = pytest.mark.lan

MakeLab = Callable[..., Lab]
NEW_KEY = Key("k2026b", bytes(range(64, 112)))
REJECTED_KINDS = {"replayed", "bad_mac", "unknown_key", "unauthenticated"}


def rejected(node: Node) -> dict[str, int]:
    return dict(node.call("keys")["rejected"])


def wait_for(check: Callable[[], bool], what: str, timeout_s: float = 20.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {timeout_s:g} s: {what}")
        time.sleep(0.1)


def test_an_attacker_changes_nothing_and_a_key_rotation_loses_no_add(
    make_lab: MakeLab, tmp_path: Path, lab_rng: Random
) -> None:
    key_file = tmp_path / "keys.yaml"
    write_keys(key_file, CLUSTER_KEY)
    config = {"security": {"key_file": str(key_file)}, "sync": {"interval_s": 10}}
    lab = make_lab(3, config=config)
    evil = lab.add_host("evil")
    captured = tmp_path / "captured.b64"
    pids = {node.name: node.pid for node in lab.nodes}
    seed = lab_rng.randrange(10**6)
    result = flood(lab, evil, captured, normal_s=6, capture_s=3, flood_s=30, seed=seed)
    print(f"attacker: {result.attacker}\nsummary: {result.summary()}\nvalues: {result.values}")
    assert result.attacker["captured"] > 0
    assert not result.probe_errors, result.probe_errors[:5]
    for node in lab.nodes:
        assert (node.pid, node.starts) == (pids[node.name], 1), f"{node.name} restarted"
        peers = {peer["node_id"] for peer in node.call("peers")["peers"]}
        assert peers == {other.name for other in lab.nodes if other is not node}
        counts = rejected(node)
        assert set(counts) >= REJECTED_KINDS, (node.name, counts)
        assert node.call("stats")["datagrams"]["dropped"].get("oversized", 0) > 0, node.name

    # kill -9 one node and bring it back, then replay each captured datagram exactly once
    # to each node: every one is refused, by the restarted node from its replay floors on
    # disk (its windows died with it), by the others from theirs. A node ignores its own.
    lab.nodes[0].restart()
    lab.wait_mesh()
    senders = [
        wire.decode(base64.b64decode(line), (CLUSTER_KEY,)).sender.node_id
        for line in captured.read_text().split()
    ]
    before = {node.name: rejected(node).get("replayed", 0) for node in lab.nodes}
    run_attacker(lab, evil, captured, seconds=0, kinds=["replay"], once=True)
    for node in lab.nodes:
        expected = sum(sender != node.name for sender in senders)
        refused = rejected(node).get("replayed", 0) - before[node.name]
        assert refused == expected, (node.name, refused, expected)
    assert await_convergence(lab, result.ledger, timeout_s=30) == result.values

    rotate_keys_with_adds_flowing(lab, key_file, lab_rng)


def rotate_keys_with_adds_flowing(lab: Lab, key_file: Path, lab_rng: Random) -> None:
    """The three steps of the README, each SIGHUPed to every node and waited for."""
    steps = [(CLUSTER_KEY, NEW_KEY), (NEW_KEY, CLUSTER_KEY), (NEW_KEY,)]
    with Workload(lab, variables=("r1", "r2"), rate_per_s=40, seed=lab_rng.random()) as work:
        for keys in steps:
            write_keys(key_file, *keys)
            accepted = [key.key_id for key in keys]
            for node in lab.nodes:
                assert node.proc is not None
                node.proc.send_signal(signal.SIGHUP)
            for node in lab.nodes:
                wait_for(
                    lambda node=node, accepted=accepted: node.call("keys")["accepted"] == accepted,
                    f"{node.name} accepts {accepted}",
                )
            time.sleep(1.0)
    await_convergence(lab, work.ledger, timeout_s=30)
    assert work.ledger.total(Outcome.ACKED) > 0
