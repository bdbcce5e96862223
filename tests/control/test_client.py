from __future__ import annotations

import json
import os
import socket
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from crdtd.control import client as client_module
from crdtd.control.client import Client, DaemonUnreachable
from crdtd.control.protocol import ControlError, encode_response
from tests.control.fake import Daemon, daemon_in_thread


@pytest.fixture
def daemon(tmp_path: Path) -> Iterator[Daemon]:
    with daemon_in_thread(tmp_path / "c.sock") as running:
        yield running


def test_call_returns_the_data(daemon: Daemon) -> None:
    with Client(daemon.path) as client:
        assert client.call("create", {"variable": "x"}) == {"variable": "x", "created": True}
        assert client.call("add", {"variable": "x", "delta": 4})["value"] == 4
        assert client.call("variables") == {"variables": ["x"]}


def test_an_error_answer_raises_control_error_with_its_code(daemon: Daemon) -> None:
    with Client(daemon.path) as client, pytest.raises(ControlError) as caught:
        client.call("get", {"variable": "x"})
    assert (caught.value.code, caught.value.message) == ("not_found", "no variable named 'x'")


def test_no_answer_in_time_is_a_timeout_and_the_client_recovers(daemon: Daemon) -> None:
    daemon.handler.sync_hangs = True
    with Client(daemon.path, timeout_s=0.2) as client:
        with pytest.raises(ControlError) as caught:
            client.call("sync")
        assert caught.value.code == "timeout"
        assert client.call("status")["node_id"] == "n1", "a fresh connection, no stale answer"


def test_a_busy_daemon_answers_busy(tmp_path: Path) -> None:
    with (
        daemon_in_thread(tmp_path / "c.sock", connections_max=1) as daemon,
        Client(daemon.path) as first,
        Client(daemon.path) as second,
    ):
        first.call("ping")
        with pytest.raises(ControlError) as caught:
            second.call("ping")
    assert caught.value.code == "busy"


def test_a_watch_yields_changes_until_the_daemon_ends_it(daemon: Daemon) -> None:
    with Client(daemon.path) as client:
        client.call("create", {"variable": "x"})
        daemon.handler.scripted_changes = [3, 4, None]
        values = []
        with pytest.raises(DaemonUnreachable, match="connection closed by crdtd"):
            for item in client.watch("x"):
                values.append(item["value"])
    assert values == [0, 3, 4]


def test_a_missing_socket_is_unreachable(tmp_path: Path) -> None:
    path = tmp_path / "absent.sock"
    with Client(path) as client, pytest.raises(DaemonUnreachable) as caught:
        client.call("status")
    assert str(caught.value) == (
        f"cannot reach crdtd at {path}: "
        "socket missing (is crdtd running? set --socket or CRDTD_SOCKET)"
    )


def test_a_socket_nobody_listens_on_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "stale.sock"
    stale = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    stale.bind(os.fspath(path))
    stale.close()
    with Client(path) as client, pytest.raises(DaemonUnreachable, match="connection refused"):
        client.call("status")


@pytest.mark.skipif(os.geteuid() == 0, reason="root may connect to any socket")
def test_a_socket_we_may_not_use_is_permission_denied(daemon: Daemon) -> None:
    os.chmod(daemon.path, 0o600)
    daemon.path.parent.chmod(0o700)
    with Client(daemon.path) as client, pytest.raises(DaemonUnreachable, match="permission denied"):
        client.call("status")


def test_permission_denied_is_named(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    class Forbidden(socket.socket):
        def connect(self, address: object) -> None:
            raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(client_module.socket, "socket", Forbidden)
    with (
        Client(tmp_path / "c.sock") as client,
        pytest.raises(DaemonUnreachable, match=r"permission denied \(is this user in"),
    ):
        client.call("status")


def scripted_server(
    path: Path, connections: int, answer: Callable[[int, list[dict]], bytes | None]
) -> list[dict]:
    """Accept *connections* connections, read one request on each and call *answer*,
    which returns the reply or None to hang up without one. Returns the requests seen
    (filled in by a thread)."""
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(os.fspath(path))
    listener.listen()
    seen: list[dict] = []

    def serve() -> None:
        with listener:
            for attempt in range(connections):
                connection, _ = listener.accept()
                with connection, connection.makefile("rb") as lines:
                    seen.append(json.loads(lines.readline()))
                    reply = answer(attempt, seen)
                    if reply is not None:
                        connection.sendall(reply)

    threading.Thread(target=serve, daemon=True).start()
    return seen


def test_retry_resends_once_with_the_same_request_id(tmp_path: Path) -> None:
    path = tmp_path / "c.sock"

    def answer(attempt: int, seen: list[dict]) -> bytes | None:
        if attempt == 0:
            return None
        return encode_response(seen[-1]["id"], {"value": 1})

    seen = scripted_server(path, 2, answer)
    args = {"variable": "x", "delta": 1, "request_id": "r1"}
    with Client(path) as client:
        assert client.call("add", args, retry=True) == {"value": 1}
    assert [request["args"] for request in seen] == [args, args]


def test_without_retry_a_lost_connection_is_unreachable(tmp_path: Path) -> None:
    path = tmp_path / "c.sock"
    scripted_server(path, 1, lambda attempt, seen: None)
    with (
        Client(path) as client,
        pytest.raises(DaemonUnreachable, match="connection closed by crdtd"),
    ):
        client.call("status")


def test_an_answer_to_another_request_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "c.sock"
    scripted_server(path, 1, lambda attempt, seen: encode_response(999, {}))
    with Client(path) as client, pytest.raises(ControlError, match="answered request 999"):
        client.call("status")
