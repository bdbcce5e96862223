"""Fleet diagnosis on real daemons in namespaces: verify, unicast-only clusters,
net-test and the Prometheus endpoint.

Every wait is bounded; the whole file takes about a minute and a half.
"""

from __future__ import annotations

import json
import random
import re
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from typing import Any

import pytest

from crdtd.lab import Lab, Node, Workload, await_convergence

pytestmark = pytest.mark.lan

MakeLab = Callable[..., Lab]
MANUAL_SYNC = {"sync": {"interval_s": 0}}
UNICAST_PORT = 7778  # the default network.unicast_port
METRICS_PORT = 9477
CONVERGE_S = 30.0


def ctl(node: Node, *args: str, timeout_s: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "crdtd.cli.main", "--socket", str(node.socket), *args],
        capture_output=True,
        text=True,
        timeout=timeout_s,
    )


def ctl_json(node: Node, *args: str) -> tuple[int, dict[str, Any]]:
    done = ctl(node, "--json", *args)
    return done.returncode, json.loads(done.stdout)["data"]


def await_values(nodes: Sequence[Node], variable: str, expected: int, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    values: dict[str, int | None] = {}
    while time.monotonic() < deadline:
        values = {node.name: node.get(variable) for node in nodes}
        if all(value == expected for value in values.values()):
            return
        time.sleep(0.2)
    tails = "\n".join(node.tail(15) for node in nodes)
    raise AssertionError(f"{variable}: expected {expected} everywhere, got {values}\n{tails}")


def block_multicast_both_ways(node: Node) -> None:
    node.set_rules(
        "multicast", ["-A OUTPUT -d 224.0.0.0/4 -j DROP", "-A INPUT -d 224.0.0.0/4 -j DROP"]
    )


def seed(node: Node) -> dict[str, Any]:
    return {"network": {"peers": [f"{node.address}:{UNICAST_PORT}"]}}


def test_verify_reports_a_partition_then_agreement_after_it_heals(make_lab: MakeLab) -> None:
    lab = make_lab(4, config=MANUAL_SYNC)
    left, right = lab.nodes[:2], lab.nodes[2:]
    for index, node in enumerate(lab.nodes):
        node.call("add", {"variable": "x", "delta": index + 1})
    await_values(lab.nodes, "x", 10, CONVERGE_S)
    lab.partition(left, right)
    left[0].call("add", {"variable": "x", "delta": 100})
    right[0].call("add", {"variable": "y", "delta": 1})
    code, data = ctl_json(left[0], "verify")
    assert code == 4, data
    assert data["agree"] is False
    assert set(data["silent"]) == {node.name for node in right}, data
    lab.heal()
    done = ctl(left[0], "--json", "verify", "--wait", "30")
    data = json.loads(done.stdout)["data"]
    assert done.returncode == 0, json.dumps(data, indent=1)
    assert data["agree"] is True and data["silent"] == []
    assert data["variables"]["x"]["values"] == {node.name: 110 for node in lab.nodes}
    assert data["variables"]["y"]["values"] == {node.name: 1 for node in lab.nodes}


def _start_unicast_cluster(lab: Lab, unicast_only: Sequence[Node], seeds: dict[str, Node]) -> None:
    for node in unicast_only:
        block_multicast_both_ways(node)
    for name, target in seeds.items():
        lab.node(name).overrides.update(seed(target))
    lab.start_all()
    lab.wait_mesh(timeout_s=30)


def test_multicast_blocked_cluster_converges_by_unicast_from_one_seed_each(
    make_lab: MakeLab,
) -> None:
    """No multicast anywhere (dropped in and out in every namespace); every node lists
    only n01, and n01 lists only n02: gossip must build the full mesh."""
    lab = make_lab(5, config=MANUAL_SYNC, start=False)
    first, second = lab.nodes[0], lab.nodes[1]
    seeds = {node.name: first for node in lab.nodes[1:]} | {first.name: second}
    _start_unicast_cluster(lab, lab.nodes, seeds)
    for index, node in enumerate(lab.nodes):
        node.call("add", {"variable": "x", "delta": index + 1})
    await_values(lab.nodes, "x", 15, CONVERGE_S)
    done = ctl(lab.nodes[3], "verify", "--wait", "20")
    assert done.returncode == 0, done.stdout + done.stderr
    code, report = ctl_json(first, "net-test")
    assert code == 1
    failed = {check["check"] for check in report["checks"] if check["status"] == "FAIL"}
    assert f"{second.name} multicast" in failed, report


def test_mixed_multicast_and_unicast_only_nodes_converge(make_lab: MakeLab) -> None:
    lab = make_lab(4, config=MANUAL_SYNC, start=False)
    multicast, unicast_only = lab.nodes[:2], lab.nodes[2:]
    _start_unicast_cluster(lab, unicast_only, {node.name: multicast[0] for node in unicast_only})
    for index, node in enumerate(lab.nodes):
        node.call("add", {"variable": "x", "delta": 10**index})
    await_values(lab.nodes, "x", 1111, CONVERGE_S)
    assert ctl(multicast[1], "verify", "--wait", "20").returncode == 0


def _checks(node: Node) -> tuple[int, dict[str, dict[str, str]]]:
    code, data = ctl_json(node, "net-test")
    return code, {check["check"]: check for check in data["checks"]}


def test_net_test_names_a_node_whose_multicast_is_blocked(make_lab: MakeLab) -> None:
    lab = make_lab(3, config=MANUAL_SYNC)
    first, _, victim = lab.nodes
    time.sleep(3)  # past the "joined just now" window
    code, checks = _checks(first)
    assert code == 0, json.dumps(checks, indent=1)
    victim.block_multicast()  # inbound only: it still sends to the group
    deadline = time.monotonic() + 20
    while True:
        victim_code, victim_checks = _checks(victim)
        first_code, first_checks = _checks(first)
        blind = victim_checks[f"{first.name} multicast"]
        deaf = first_checks[f"{victim.name} hears us"]
        if blind["status"] == "FAIL" and deaf["status"] == "FAIL":
            break
        assert time.monotonic() < deadline, (victim_checks, first_checks)
        time.sleep(0.5)
    assert victim_code == 1 and first_code == 1
    assert "reaches us" in blind["detail"] and "224.0.0.0/4" in blind["hint"]
    assert "does not hear our multicast" in deaf["detail"]
    text = ctl(victim, "net-test").stdout
    assert re.search(rf"^FAIL +{first.name} multicast", text, re.MULTILINE), text


def test_a_node_deaf_to_multicast_still_receives_new_ops(make_lab: MakeLab) -> None:
    lab = make_lab(3, config=MANUAL_SYNC)
    first, _, victim = lab.nodes
    victim.block_multicast()  # inbound only
    time.sleep(5)
    first.call("add", {"variable": "x", "delta": 7})
    await_values(lab.nodes, "x", 7, 15)


def _scrape(node: Node) -> dict[str, float]:
    code = (
        "import sys, urllib.request\n"
        "print(urllib.request.urlopen(sys.argv[1], timeout=5).read().decode())\n"
    )
    text = node.python(code, f"http://{node.address}:{METRICS_PORT}/metrics")
    samples = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, _, value = line.rpartition(" ")
            samples[name] = float(value)
    return samples


def test_metrics_move_under_load_and_loss(make_lab: MakeLab, lab_rng: random.Random) -> None:
    lab = make_lab(3, config=MANUAL_SYNC, start=False)
    for node in lab.nodes:
        node.overrides["metrics"] = {"listen": f"{node.address}:{METRICS_PORT}"}
    lab.start_all()
    lab.wait_mesh(timeout_s=30)
    before = {node.name: _scrape(node) for node in lab.nodes}
    with Workload(lab, rate_per_s=30, seed=lab_rng.random()) as work:
        lab.loss(0.25)
        time.sleep(8)
        lab.heal()
        work.stop()
    await_convergence(lab, work.ledger, timeout_s=CONVERGE_S)
    assert ctl(lab.nodes[0], "sync").returncode == 0
    after = {node.name: _scrape(node) for node in lab.nodes}

    def grew(metric: str) -> int:
        return sum(after[n].get(metric, 0) > before[n].get(metric, 0) for n in after)

    assert grew("crdtd_ops_local_total") == 3
    assert grew("crdtd_ops_applied_total") == 3
    assert grew("crdtd_datagrams_received_total") == 3
    assert grew("crdtd_datagrams_sent_total") == 3
    assert sum(samples.get("crdtd_gaps_detected_total", 0) for samples in after.values()) > 0
    assert sum(samples.get("crdtd_nacks_sent_total", 0) for samples in after.values()) > 0
    assert sum(samples.get("crdtd_repairs_served_total", 0) for samples in after.values()) > 0
    for name, samples in after.items():
        assert samples['crdtd_barriers_total{result="completed"}'] == 1, name
        assert samples["crdtd_barrier_duration_seconds_count"] == 1, name
        assert samples["crdtd_ops_in_log"] == 0, name  # folded by the sync
    stats = lab.nodes[0].call("stats")
    assert stats["ops"]["local"] == after[lab.nodes[0].name]["crdtd_ops_local_total"]
