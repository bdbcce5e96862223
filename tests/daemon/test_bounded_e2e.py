"""No client can hold the daemon: real daemons on loopback (issue 12).

A client that pipelines big requests and never reads does not stop other connections
from being answered; a populate of many steps answers with its count and the value it
left; the metrics endpoint refuses connections past its limit while the control socket
keeps answering. The assertions are on order and progress, never on time.
"""

from __future__ import annotations

import contextlib
import json
import socket
import urllib.request
from pathlib import Path

from crdtd.control.client import Client
from crdtd.control.protocol import HISTORY_PAGE_OPS, encode_request
from crdtd.daemon.handler import POPULATE_STEP_OPS
from crdtd.daemon.metrics import CONNECTIONS_MAX
from tests.daemon.loopback import Cluster, Daemon, free_udp_port
from tests.daemon.test_diagnosis_e2e import free_tcp_port


def test_pipelined_history_without_reading_does_not_hold_an_add_on_another_connection(
    tmp_path: Path,
) -> None:
    cluster = Cluster.start(tmp_path, 1)
    try:
        (daemon,) = cluster.daemons
        daemon.ctl("populate", "h", str(2 * HISTORY_PAGE_OPS))
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as greedy:
            greedy.connect(str(daemon.socket))
            greedy.sendall(
                b"".join(encode_request(i, "history", {"variable": "h"}) for i in range(256))
            )
            added = daemon.data("add", "other", "5")
            assert added["value"] == 5
            stats = daemon.data("stats")
            assert stats["counters"]["owner_step_max_us"] > 0
            # Only now does the greedy client read: its answers are all there, in order.
            greedy.settimeout(60)
            with greedy.makefile("rb") as answers:
                first = json.loads(answers.readline())
                assert first["id"] == 0 and len(first["data"]["ops"]) == HISTORY_PAGE_OPS
                assert [json.loads(answers.readline())["id"] for _ in range(255)] == list(
                    range(1, 256)
                )
    finally:
        cluster.stop()


def test_a_populate_of_many_steps_answers_with_its_count_and_the_value_it_left(
    tmp_path: Path,
) -> None:
    count = 2 * POPULATE_STEP_OPS + 123
    cluster = Cluster.start(tmp_path, 1)
    try:
        (daemon,) = cluster.daemons
        populated = daemon.data("populate", "p", str(count))
        assert populated["count"] == count
        assert daemon.data("get", "p")["value"] == populated["value"]
        history = daemon.data("history", "p")  # crdtctl joins the pages
        assert len(history["ops"]) == count
        assert history["before"] + sum(op["delta"] for op in history["ops"]) == populated["value"]
        assert [op["nonce"] for op in history["ops"]] == list(range(1, count + 1))
    finally:
        cluster.stop()


def test_metrics_connections_past_the_limit_are_refused_and_the_control_socket_answers(
    tmp_path: Path,
) -> None:
    port = free_tcp_port()
    daemon = Daemon(
        "n0",
        tmp_path,
        free_udp_port(),
        free_udp_port(),
        extra_config=f"metrics: {{listen: '127.0.0.1:{port}'}}\n",
    )
    cluster = Cluster(tmp_path, [daemon])
    idle: list[socket.socket] = []
    try:
        daemon.start()
        for _ in range(CONNECTIONS_MAX):
            idle.append(socket.create_connection(("127.0.0.1", port), timeout=10))
        # Idle ones are closed after HEADER_TIMEOUT_S (5 s): this part takes well under.
        with Client(daemon.socket) as client:
            assert client.call("status")["mode"] == "work"
        extra = socket.create_connection(("127.0.0.1", port), timeout=10)
        extra.sendall(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
        reply = b""
        with contextlib.suppress(ConnectionResetError):  # closed with our request unread
            while chunk := extra.recv(4096):
                reply += chunk
        extra.close()
        assert reply == b"" or reply.startswith(b"HTTP/1.1 503"), reply
        daemon.ctl("status")  # the control socket still answers (ctl checks the exit)
        for sock in idle:
            sock.close()
        idle.clear()
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as answer:
            text = answer.read().decode()
        assert "crdtd_owner_step_max_seconds" in text
        assert "crdtd_owner_step_seconds_bucket" in text
    finally:
        for sock in idle:
            sock.close()
        cluster.stop()
