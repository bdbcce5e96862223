"""The read-only control socket, passed the way systemd's crdtd.socket passes it:
a listening Unix socket at fd 3 with LISTEN_PID, LISTEN_FDS and LISTEN_FDNAMES set."""

from __future__ import annotations

import json
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.daemon.loopback import Daemon, crdtctl, free_udp_port

# Puts the socket given as argv[1] at fd 3, names it, and becomes the daemon (same pid).
ACTIVATE = """
import os, sys
os.dup2(int(sys.argv[1]), 3)
os.environ.update(LISTEN_PID=str(os.getpid()), LISTEN_FDS="1", LISTEN_FDNAMES=sys.argv[2])
os.execv(sys.executable, [sys.executable, "-m", "crdtd.daemon.main", *sys.argv[3:]])
"""


def activate(daemon: Daemon, sock: socket.socket, name: str) -> subprocess.Popen[bytes]:
    daemon.write_config()
    argv = [
        sys.executable,
        "-c",
        ACTIVATE,
        str(sock.fileno()),
        name,
        "--config",
        str(daemon.config),
    ]
    with open(daemon.log, "ab") as log:
        return subprocess.Popen(argv, stdout=log, stderr=log, pass_fds=(sock.fileno(),))


@pytest.fixture
def daemon(tmp_path: Path) -> Iterator[Daemon]:
    daemon = Daemon("n0", tmp_path, free_udp_port(), free_udp_port())
    daemon.extra_config = "sync: {interval_s: 0}\n"
    try:
        yield daemon
    finally:
        if daemon.process is not None and daemon.process.poll() is None:
            daemon.kill()


def test_reads_work_and_writes_are_refused_on_the_read_only_socket(
    daemon: Daemon, tmp_path: Path
) -> None:
    path = tmp_path / "ro.sock"
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as listening:
        listening.bind(str(path))
        listening.listen()
        daemon.process = activate(daemon, listening, "readonly")
    daemon.ctl("wait-ready", "--timeout", "15")
    daemon.ctl("add", "x", "5")

    def read_only(*args: str) -> subprocess.CompletedProcess[str]:
        return crdtctl("--socket", str(path), *args)

    assert json.loads(read_only("--json", "get", "x").stdout)["data"]["value"] == 5
    assert read_only("status").returncode == 0
    for write in (
        ["add", "x", "1"],
        ["create", "y"],
        ["delete", "x"],
        ["sync"],
        ["populate", "z", "3"],
    ):
        refused = read_only(*write)
        assert refused.returncode == 1, refused
        assert "is a read-only socket" in refused.stderr, refused.stderr
    assert json.loads(read_only("--json", "get", "x").stdout)["data"]["value"] == 5
    started = [
        json.loads(line) for line in daemon.log.read_text().splitlines() if "started" in line
    ]
    assert started[-1]["read_only_sockets"] == [str(path)]
    daemon.kill(signal.SIGTERM)
    assert path.exists(), "the socket is systemd's: the daemon leaves it"


@pytest.mark.parametrize(
    ("kind", "name", "code", "message"),
    [
        (socket.SOCK_STREAM, "other", 78, "crdtd serves only FileDescriptorName=readonly"),
        (socket.SOCK_DGRAM, "readonly", 78, "not a listening Unix stream socket"),
    ],
    ids=["unknown-name", "not-a-stream"],
)
def test_a_socket_crdtd_cannot_serve_stops_it_with_a_clear_message(
    daemon: Daemon, tmp_path: Path, kind: int, name: str, code: int, message: str
) -> None:
    """Exit 78: the unit passes a socket it should not, which no restart fixes."""
    with socket.socket(socket.AF_UNIX, kind) as sock:
        sock.bind(str(tmp_path / "x.sock"))
        if kind == socket.SOCK_STREAM:
            sock.listen()
        process = activate(daemon, sock, name)
    assert process.wait(timeout=30) == code
    assert message in daemon.log.read_text()
