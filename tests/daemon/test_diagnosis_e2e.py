"""verify, stats and the Prometheus endpoint on real daemons on loopback."""

from __future__ import annotations

import json
import re
import signal
import socket
import urllib.request
from pathlib import Path

from crdtd import __version__
from tests.daemon.loopback import Cluster, Daemon, free_udp_port


def free_tcp_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_verify_exits_0_when_every_node_agrees(cluster: Cluster) -> None:
    for index, daemon in enumerate(cluster.daemons):
        daemon.ctl("add", "x", str(index + 1))
    cluster.wait_agree("x", 6)
    done = cluster.daemons[0].ctl("--json", "verify", "--wait", "10")
    data = json.loads(done.stdout)["data"]
    assert data["agree"] is True
    assert data["nodes"] == ["n0", "n1", "n2"] and data["silent"] == []
    assert data["variables"]["x"]["values"] == {"n0": 6, "n1": 6, "n2": 6}
    text = cluster.daemons[1].ctl("verify").stdout
    assert "all nodes agree" in text


def test_verify_exits_4_naming_a_silent_node(cluster: Cluster) -> None:
    cluster.daemons[0].ctl("add", "x", "1")
    cluster.wait_agree("x", 1)
    cluster.daemons[2].process.send_signal(signal.SIGSTOP)  # alive to its peers, mute
    try:
        done = cluster.daemons[0].ctl("--json", "verify", check=False)
        assert done.returncode == 4, done.stdout + done.stderr
        assert json.loads(done.stdout)["data"]["silent"] == ["n2"]
    finally:
        cluster.daemons[2].process.send_signal(signal.SIGCONT)


def test_stats_count_ops_datagrams_and_barriers(cluster: Cluster) -> None:
    first = cluster.daemons[0]
    first.ctl("add", "x", "2")
    cluster.daemons[1].ctl("add", "x", "3")
    cluster.wait_agree("x", 5)
    first.ctl("sync")
    stats = first.data("stats")
    assert stats["ops"]["local"] == 1
    assert stats["ops"]["applied"] >= 1
    assert stats["datagrams"]["received"] > 0 and stats["datagrams"]["sent"] > 0
    assert stats["barriers"]["completed"] == 1
    assert stats["barriers"]["duration_ms"]["max"] is not None
    assert stats["peers"] == {"live": 2, "suspected": 0}
    assert "barriers completed" in first.ctl("stats").stdout


def test_prometheus_endpoint_serves_the_stats(tmp_path: Path) -> None:
    port = free_tcp_port()
    cluster = Cluster(tmp_path)
    group_port = free_udp_port()
    for index, extra in enumerate([f"metrics: {{listen: '127.0.0.1:{port}'}}\n", ""]):
        daemon = Daemon(f"n{index}", tmp_path, group_port, free_udp_port(), extra_config=extra)
        cluster.daemons.append(daemon)
    try:
        for daemon in cluster.daemons:
            daemon.start()
        cluster.daemons[1].ctl("add", "x", "4")
        cluster.wait_agree("x", 4)
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as reply:
            text = reply.read().decode()
        assert re.search(r"^crdtd_ops_applied_total 1", text, re.MULTILINE), text
        assert re.search(r"^crdtd_datagrams_received_total [1-9]", text, re.MULTILINE), text
        assert "crdtd_barrier_duration_seconds_bucket" in text
        assert "crdtd_variable_value" not in text  # off unless metrics.variable_values
        assert re.search(r'^crdtd_peers\{state="live"\} 1', text, re.MULTILINE), text
        incarnation = cluster.daemons[0].data("status")["incarnation"]
        info = f'crdtd_info{{incarnation="{incarnation}",node_id="n0",version="{__version__}"}} 1'
        assert info in text, text
        for process in ("resident_memory_bytes", "cpu_seconds_total", "open_fds", "max_fds"):
            assert re.search(rf"^process_{process} [0-9]", text, re.MULTILINE), text
    finally:
        cluster.stop()


def test_prometheus_endpoint_serves_variable_values_when_asked(tmp_path: Path) -> None:
    port = free_tcp_port()
    extra = f"metrics: {{listen: '127.0.0.1:{port}', variable_values: true}}\n"
    cluster = Cluster.start(tmp_path, 1, extra_config=extra)
    try:
        daemon = cluster.daemons[0]
        daemon.ctl("add", "web-1.hits", "5")
        daemon.ctl("add", "web-1.hits", "-2")
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as reply:
            text = reply.read().decode()
        assert 'crdtd_variable_value{variable="web-1.hits"} 3.0\n' in text, text
        assert "values" not in daemon.data("stats")  # crdtctl stats stays one screen
    finally:
        cluster.stop()
