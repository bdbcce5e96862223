"""End to end: real crdtd subprocesses on loopback, driven through crdtctl and its client."""

from __future__ import annotations

import json
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from crdtd.control.client import Client
from crdtd.control.protocol import ControlError
from tests.daemon.loopback import Cluster, crdtctl


def test_adds_on_every_node_converge_everywhere(cluster: Cluster) -> None:
    total = 0
    for index, daemon in enumerate(cluster.daemons):
        for delta in (5, -2, 7):
            daemon.ctl("add", "x", str(delta * (index + 1)))
            total += delta * (index + 1)
    cluster.wait_agree("x", total)
    history = cluster.daemons[0].data("history", "x")
    assert len(history["ops"]) == 9
    assert sorted({op["node_id"] for op in history["ops"]}) == ["n0", "n1", "n2"]


def test_seed_style_adds_and_json_contract(cluster: Cluster) -> None:
    first, second = cluster.daemons[0], cluster.daemons[1]
    added = json.loads(first.ctl("--json", "+5", "y").stdout)
    assert added["ok"] is True
    assert {"variable", "node_id", "nonce", "value"} <= set(added["data"])
    assert added["data"]["nonce"] == 1
    second.ctl("--", "-3", "y")
    cluster.wait_agree("y", 2)
    got = second.data("get", "y")
    assert got == {"variable": "y", "value": 2, "before": 0, "mode": "work"}
    status = second.data("status")
    assert {"node_id", "mode", "epoch", "peers", "ops_in_log"} <= set(status)
    assert {peer["node_id"] for peer in status["peers"]} == {"n0", "n2"}
    assert "y" in second.data("variables")["variables"]


def test_sync_folds_the_log_into_before_on_every_node(cluster: Cluster) -> None:
    for daemon in cluster.daemons:
        daemon.ctl("populate", "z", "50")
    expected = cluster.daemons[0].data("get", "z")["value"]
    cluster.wait_agree("z", cluster.daemons[2].data("get", "z")["value"])
    expected = cluster.daemons[0].data("get", "z")["value"]
    result = cluster.daemons[1].data("sync")
    assert result["result"] == "completed"
    assert result["epoch"] == 1
    for daemon in cluster.daemons:
        history = daemon.data("history", "z")
        assert history["before"] == expected
        assert history["ops"] == []
        assert daemon.data("status")["epoch"] == 1


def test_kill_9_loses_no_acknowledged_add_and_reuses_no_nonce(cluster: Cluster) -> None:
    victim = cluster.daemons[0]
    first = victim.data("status")["incarnation"]
    nonces = [victim.data("add", "k", "1")["nonce"] for _ in range(20)]
    victim.kill(signal.SIGKILL)
    victim.start()
    assert victim.data("get", "k")["value"] == 20
    # A new boot is a new incarnation: its nonces start again at 1, under another origin.
    assert victim.data("status")["incarnation"] > first
    assert victim.data("add", "k", "1")["nonce"] == 1
    assert nonces == list(range(1, 21))
    cluster.wait_agree("k", 21)


def test_an_add_retried_after_a_kill_9_is_answered_with_the_first_op(cluster: Cluster) -> None:
    """The client lost the answer (the daemon died) and sends the add again with the
    same request id to the restarted daemon: the same op comes back, applied once."""
    victim = cluster.daemons[0]
    args = {"variable": "once", "delta": 7, "request_id": "retry-me"}
    with Client(victim.socket, timeout_s=10) as client:
        first = client.call("add", args)
    victim.kill(signal.SIGKILL)
    victim.start()
    with Client(victim.socket, timeout_s=10) as client:
        again = client.call("add", args)
        with pytest.raises(ControlError, match="already used for another add") as reused:
            client.call("add", {**args, "delta": 8})
    assert reused.value.code == "bad_request"
    assert again == first
    assert victim.data("get", "once")["value"] == 7
    cluster.wait_agree("once", 7)


def test_sigterm_stops_cleanly(cluster: Cluster) -> None:
    assert cluster.daemons[2].kill(signal.SIGTERM) == 0
    assert '"event": "stopped"' in cluster.daemons[2].log.read_text()


def test_bad_control_requests_get_errors_and_the_daemon_keeps_serving(cluster: Cluster) -> None:
    daemon = cluster.daemons[0]
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(10)
        sock.connect(str(daemon.socket))
        sock.sendall(b"not json\n")
        sock.sendall(b'{"v": 1, "id": 2, "cmd": "add", "args": {"variable": "x", "delta": "5"}}\n')
        sock.sendall(b'{"v": 1, "id": 3, "cmd": "get", "args": {"variable": "nope"}}\n')
        sock.sendall(b'{"v": 1, "id": 4, "cmd": "add", "args": {"variable": "x", "delta": 1.5}}\n')
        replies = []
        buffer = b""
        while len(replies) < 4:
            buffer += sock.recv(65536)
            *lines, buffer = buffer.split(b"\n")
            replies.extend(json.loads(line) for line in lines)
    assert [reply["ok"] for reply in replies] == [False, False, False, False]
    assert [reply["error"]["code"] for reply in replies] == [
        "bad_request",
        "bad_request",
        "not_found",
        "bad_request",
    ]
    assert daemon.data("add", "x", "1")["value"] == 1


def test_unreachable_daemon_exits_3(tmp_path: Path) -> None:
    done = crdtctl("--socket", str(tmp_path / "missing.sock"), "get", "x")
    assert done.returncode == 3
    assert "missing.sock" in done.stderr


def test_bad_config_names_file_line_and_key(tmp_path: Path) -> None:
    config = tmp_path / "bad.yaml"
    config.write_text("network:\n  port: 80a\n")
    done = subprocess.run(
        [sys.executable, "-m", "crdtd.daemon.main", "--config", str(config), "--check-config"],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert done.returncode == 78
    assert "bad.yaml:2: network.port" in done.stderr


def test_corrupt_state_directory_refuses_to_start(tmp_path: Path) -> None:
    state = tmp_path / "state"
    state.mkdir()
    (state / "crdtd.sqlite3").write_bytes(b"this is not a database" * 100)
    config = tmp_path / "c.yaml"
    config.write_text(
        f"node: {{state_dir: {state}}}\nnetwork: {{interface: 127.0.0.1, ttl: 0}}\n"
        f"control: {{socket: {tmp_path / 'c.sock'}}}\n"
    )
    done = subprocess.run(
        [sys.executable, "-m", "crdtd.daemon.main", "--config", str(config)],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert done.returncode == 1
    assert str(state) in done.stderr
