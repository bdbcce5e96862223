"""Identity on a real LAN (docs/protocol.md, "Identity"): every boot is a new
incarnation, so copies of one node's state - a clone running beside it, an older copy
booted again - never lose or double-count an acknowledged add; and claims about a
node's own current origin are refused, whoever signs them.

The ledger rule is the one of test_faults.py: every node must read the acked sum.
These tests pause a node's writer around each stop, so nothing is ever *maybe* and the
sums are exact.
"""

from __future__ import annotations

import base64
import contextlib
import json
import random
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from crdtd.core.ids import Origin
from crdtd.daemon.keys import load_keys
from crdtd.lab import Lab, Node, Outcome, Workload, await_convergence, await_folded
from crdtd.lab.attacker import own_origin_claims
from crdtd.lab.hostile import UNICAST_PORT
from crdtd.lab.scenarios import PEER_TIMEOUT_S, SyncLoop

pytestmark = pytest.mark.lan

MakeLab = Callable[..., Lab]
MANUAL_SYNC = {"sync": {"interval_s": 0}}
RATE_PER_S = 20.0
WRITE_S = 5.0
CONVERGE_S = 30.0
EVENT_S = 15.0
CTL_TIMEOUT_S = 60.0
OWN = "own"  # written only by the forged-claims test's own adds, never by the writers
EXIT_NOT_AGREED = 4

SEND = """\
import base64, json, sys
from crdtd.lab.attacker import send_once
for target, payloads in json.load(sys.stdin).items():
    host, port = target.rsplit(":", 1)
    kinds = {"claims": [base64.b64decode(payload) for payload in payloads]}
    print(json.dumps(send_once(kinds, [(host, int(port))])))
"""
"""Run in the attacker's namespace: each target's datagrams, once each, paced."""


def ctl_json(node: Node, *args: str) -> tuple[int, dict[str, Any]]:
    """``crdtctl --json ARGS`` against *node*: its exit code and ``data``."""
    done = subprocess.run(
        [sys.executable, "-m", "crdtd.cli.main", "--socket", str(node.socket), "--json", *args],
        capture_output=True,
        text=True,
        timeout=CTL_TIMEOUT_S,
        check=False,
    )
    envelope = json.loads(done.stdout)
    assert envelope["ok"], (done.returncode, envelope, done.stderr)
    return done.returncode, envelope["data"]


@contextlib.contextmanager
def paused(work: Workload, node: Node) -> Iterator[None]:
    """*node*'s writer sends nothing meanwhile: an add in flight when the node stops
    would be a maybe, and the sums would no longer be exact."""
    writer = work.writers[node.name]
    writer.pause()
    try:
        yield
    finally:
        writer.resume()


def incarnation(node: Node) -> int:
    return int(node.status()["incarnation"])


def acked_on(work: Workload, node: Node) -> int:
    return int(work.ledger.summary()["by_node"].get(node.name, {}).get(Outcome.ACKED.value, 0))


def test_two_clones_and_a_rewound_node_keep_every_acknowledged_add(
    make_lab: MakeLab, lab_rng: random.Random, tmp_path: Path
) -> None:
    """(a) n01 (A) stops cleanly, a new node D boots on a copy of its state directory
    with ``node.id: auto`` (so as n01, like a cloned VM image), A starts again, and both
    take adds while syncs run back to back. (b) n02 (B) stops, its state directory is
    saved, it runs and acks adds for a while, stops, the others fold those adds in a
    sync, and B gets the saved (older) copy back and starts again. Every node must
    read exactly the acked sums; A and D hold two incarnations, the conflict is logged
    and reported by ``crdtctl verify`` while both run, B logs ``state_rewound``; once D
    is gone, verify agrees again."""
    lab = make_lab(3, config=MANUAL_SYNC)
    a, b, c = lab.nodes
    b_first = incarnation(b)
    syncs = SyncLoop(lab, None, gap_s=(0.2, 0.8), rng=random.Random(lab_rng.random()))
    with Workload(lab, rate_per_s=RATE_PER_S, seed=lab_rng.random()) as work:
        time.sleep(WRITE_S)
        with paused(work, a):
            a.stop()
            d = lab.add_clone(a)
            a.start()
        work.add(d)
        lab.wait_mesh(timeout_s=CONVERGE_S)
        assert d.status()["node_id"] == a.node_id
        syncs.start()
        try:
            time.sleep(WRITE_S)
        finally:
            syncs.stop()

        with paused(work, b):
            b.stop()
            saved = b.save_state(tmp_path / "b-state")
            b.start()
        b_middle = incarnation(b)
        acked_before = acked_on(work, b)
        time.sleep(WRITE_S)
        assert acked_on(work, b) > acked_before, "no add acked on B's middle incarnation"
        # As for a wiped disk: acks B never passed on die with its state, so let its
        # peers hold them first; the test is that they come back to the older copy.
        # The others fold them meanwhile, so they come back as a base of B's middle
        # incarnation, which B must take (it is not its current one).
        work.pause()
        try:
            await_convergence(lab, work.ledger, timeout_s=CONVERGE_S)
            b.stop()
            await_folded(lab, work.ledger, timeout_s=CONVERGE_S)
            b.restore_state(saved)
            b.start()
        finally:
            work.resume()
        time.sleep(WRITE_S)

    assert work.ledger.total(Outcome.MAYBE) == 0, work.ledger.summary()
    values = await_convergence(lab, work.ledger, timeout_s=CONVERGE_S)
    b_last = incarnation(b)
    a_now, d_now = incarnation(a), incarnation(d)
    print(f"values {values}; syncs {dict(syncs.results)}")
    print(f"incarnations: A {a_now}, D {d_now}; B {b_first} -> {b_middle} -> {b_last}")

    assert a_now != d_now, "the clone reused its source's incarnation"
    assert syncs.results["completed"] > 0, (dict(syncs.results), syncs.errors[:5])
    assert set(syncs.results) <= {"completed", "aborted"}, (dict(syncs.results), syncs.errors)
    assert b_first < b_middle < b_last, "a rewound state must still take a larger incarnation"

    conflicts = [e for node in lab.running() for e in node.events("identity_conflict")]
    print(f"identity_conflict: {[(e['node_id'], e['peer'], e['ours']) for e in conflicts]}")
    assert any(event["peer"] == a.node_id for event in conflicts), "no identity_conflict"
    rewound = b.events("state_rewound")
    print(f"state_rewound on B: {rewound[:1]}")
    assert any(event["origin"] == str(Origin(b.node_id, b_middle)) for event in rewound), rewound

    peers = {(p["node_id"], p["incarnation"]) for p in c.status()["peers"] if not p["suspected"]}
    assert {(a.node_id, a_now), (a.node_id, d_now)} <= peers, peers
    for node in (c, a):  # a bystander, and a holder of the id itself
        code, report = ctl_json(node, "verify")
        print(f"verify on {node.name}, clones running: exit {code}, {report['identity_conflicts']}")
        assert code == EXIT_NOT_AGREED, report
        assert report["agree"] is False and report["identity_conflicts"] == [a.node_id], report

    d.stop()
    code, report = ctl_json(c, "verify", "--wait", str(PEER_TIMEOUT_S + 10))
    print(f"verify once D stopped: exit {code} after {report['attempts']} attempts")
    assert code == 0 and report["agree"] is True, report
    assert await_convergence(lab, work.ledger, timeout_s=CONVERGE_S) == values
    await_folded(lab, work.ledger, timeout_s=CONVERGE_S)


def claims_refused(node: Node) -> int:
    return int(node.status()["stats"].get("claims_refused", 0))


def await_claims_refused(node: Node, count: int) -> None:
    """Wait until *node* has refused *count* claims in all (UDP takes its time)."""
    deadline = time.monotonic() + EVENT_S
    while (refused := claims_refused(node)) < count:
        if time.monotonic() > deadline:
            raise AssertionError(
                f"{node.name}: claims_refused {refused}, expected {count}\n{node.tail()}"
            )
        time.sleep(0.1)


def test_a_forged_own_origin_base_from_a_key_holder_changes_nothing(
    make_lab: MakeLab, lab_rng: random.Random
) -> None:
    """An attacker holding the cluster key sends each node a ``Bases`` for the node's
    own current origin up to 2^63 - 1 with a made-up total, ops of that origin from
    the nonce its next add would take up (and one at 2^63 - 1), and an announce that
    holds that origin up to 2^63 - 1, while writers add. Each
    node must refuse every one of them (``claims_refused``), keep its values equal to
    the ledger, not restart, and take its next local add at the very next nonce. (Before
    the fix such a base pushed the node's watermark to 2^63 - 1 and every later add
    failed with "expected an unsigned 64-bit integer".)"""
    lab = make_lab(3, config=MANUAL_SYNC)
    mallory = lab.add_host("mallory")
    keys = load_keys(lab.key_file)
    pids = {node.name: node.pid for node in lab.nodes}
    with Workload(lab, rate_per_s=RATE_PER_S, seed=lab_rng.random()) as work:
        time.sleep(WRITE_S)
        payloads: dict[str, list[str]] = {}
        expected: dict[str, int] = {}
        nonces: dict[str, int] = {}
        for node in lab.nodes:
            nonces[node.name] = node.call("add", {"variable": OWN, "delta": 1})["nonce"]
            work.ledger.record(node.name, OWN, 1, Outcome.ACKED)
            # The writers' variables: nonces far above anything they reach here.
            claimed = {OWN: nonces[node.name] + 1, **dict.fromkeys(work.variables, 2**32)}
            origin = Origin(node.node_id, incarnation(node))
            datagrams = own_origin_claims(origin, claimed, keys, lab_rng)
            payloads[f"{node.address}:{UNICAST_PORT}"] = [
                base64.b64encode(datagram).decode() for datagram in datagrams
            ]
            # Per variable: a base, four ops and a watermark.
            expected[node.name] = claims_refused(node) + 6 * len(claimed)
        out = mallory.python(SEND, input_text=json.dumps(payloads))
        sent = [json.loads(line) for line in out.splitlines()]
        assert not any(report["send_errors"] for report in sent), sent
        for node in lab.nodes:
            await_claims_refused(node, expected[node.name])
        time.sleep(1.0)  # adds keep flowing after the claims

    assert work.ledger.total(Outcome.MAYBE) == 0, work.ledger.summary()
    values = await_convergence(lab, work.ledger, timeout_s=CONVERGE_S)
    for node in lab.nodes:
        assert (node.pid, node.starts) == (pids[node.name], 1), f"{node.name} restarted"
        assert claims_refused(node) == expected[node.name], node.name
        refused = node.events("claim_refused")
        assert refused, f"{node.name} logged no claim_refused"
        kinds = sorted({(event["kind"], event["peer"]) for event in refused})
        print(f"{node.name}: claims_refused {claims_refused(node)}; claim_refused {kinds}")
        answer = node.call("add", {"variable": OWN, "delta": 1})
        assert answer["nonce"] == nonces[node.name] + 1, (node.name, answer)
        work.ledger.record(node.name, OWN, 1, Outcome.ACKED)
    after = await_convergence(lab, work.ledger, timeout_s=CONVERGE_S)
    assert after == {**values, OWN: values[OWN] + len(lab.nodes)}, (values, after)
