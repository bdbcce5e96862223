from __future__ import annotations

import asyncio
import json
import os
import socket
import stat
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
import structlog.testing

from crdtd.control.protocol import REQUEST_BYTES_MAX
from crdtd.control.server import ControlServer, SocketPathError, serve
from tests.control.fake import FakeHandler

# A hang guard, not a speed check: the 256 x 300 KB history scenario took over 10 s on a
# loaded 2-core machine (it passes in ~2 s alone). Below pytest-timeout's 120 s, so a
# hang still ends here, with the await it was stuck in.
TEST_TIMEOUT_S = 60.0

Scenario = Callable[[ControlServer, FakeHandler], Awaitable[None]]


def run(coroutine: Awaitable[None]) -> None:
    """Run a scenario with a time bound; fail on any error asyncio would only log."""
    unhandled: list[dict[str, Any]] = []

    async def bounded() -> None:
        asyncio.get_running_loop().set_exception_handler(
            lambda _, context: unhandled.append(context)
        )
        async with asyncio.timeout(TEST_TIMEOUT_S):
            await coroutine

    asyncio.run(bounded())
    assert unhandled == []


def with_server(
    path: Path, scenario: Scenario, handler: FakeHandler | None = None, **limits: Any
) -> FakeHandler:
    handler = handler or FakeHandler()

    async def main() -> None:
        server = await serve(path, handler, **limits)
        try:
            await scenario(server, handler)
        finally:
            await server.close()

    run(main())
    return handler


class Connection:
    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer

    @classmethod
    async def open(cls, path: Path) -> Connection:
        reader, writer = await asyncio.open_unix_connection(path, limit=2**20)
        return cls(reader, writer)

    async def send(self, *messages: object) -> None:
        for message in messages:
            raw = message if isinstance(message, bytes) else json.dumps(message).encode()
            self.writer.write(raw + b"\n")
        await self.writer.drain()

    async def receive(self) -> dict[str, Any]:
        line = await self.reader.readline()
        assert line.endswith(b"\n"), f"connection closed instead: {line!r}"
        return json.loads(line)

    async def call(self, cmd: str, request_id: object = 1, **args: object) -> dict[str, Any]:
        await self.send({"v": 1, "id": request_id, "cmd": cmd, "args": args})
        return await self.receive()

    async def closed_by_server(self) -> bool:
        return await self.reader.read() == b""

    async def close(self) -> None:
        self.writer.close()
        await self.writer.wait_closed()


def request(request_id: object, cmd: str, **args: object) -> dict[str, object]:
    return {"v": 1, "id": request_id, "cmd": cmd, "args": args}


def test_a_request_gets_its_data_and_id_back(tmp_path: Path) -> None:
    async def scenario(server: ControlServer, handler: FakeHandler) -> None:
        client = await Connection.open(server.path)
        assert await client.call("create", "c1", variable="x") == {
            "v": 1,
            "id": "c1",
            "ok": True,
            "data": {"variable": "x", "created": True},
        }
        assert await client.call("ping", 2) == {"v": 1, "id": 2, "ok": True, "data": {}}
        await client.close()

    with_server(tmp_path / "c.sock", scenario)


def test_pipelined_requests_are_answered_in_order(tmp_path: Path) -> None:
    async def scenario(server: ControlServer, handler: FakeHandler) -> None:
        client = await Connection.open(server.path)
        await client.call("create", 0, variable="x")
        await client.send(*(request(i, "add", variable="x", delta=i) for i in range(1, 101)))
        answers = [await client.receive() for _ in range(100)]
        assert [answer["id"] for answer in answers] == list(range(1, 101))
        assert [answer["data"]["value"] for answer in answers] == [
            i * (i + 1) // 2 for i in range(1, 101)
        ]
        await client.close()

    with_server(tmp_path / "c.sock", scenario)


def test_twenty_clients_at_once_are_all_served(tmp_path: Path) -> None:
    async def one_client(path: Path, number: int) -> list[int]:
        client = await Connection.open(path)
        await client.send(
            *(request(f"{number}/{i}", "add", variable="x", delta=1) for i in range(10))
        )
        answers = [await client.receive() for _ in range(10)]
        await client.close()
        assert [answer["id"] for answer in answers] == [f"{number}/{i}" for i in range(10)]
        return [answer["data"]["nonce"] for answer in answers]

    async def scenario(server: ControlServer, handler: FakeHandler) -> None:
        setup = await Connection.open(server.path)
        await setup.call("create", variable="x")
        await setup.close()
        nonces = await asyncio.gather(*(one_client(server.path, n) for n in range(20)))
        assert sorted(nonce for batch in nonces for nonce in batch) == list(range(1, 201))
        assert handler.values["x"] == 200

    with_server(tmp_path / "c.sock", scenario)


def test_bad_lines_get_errors_and_the_connection_stays_usable(tmp_path: Path) -> None:
    async def scenario(server: ControlServer, handler: FakeHandler) -> None:
        client = await Connection.open(server.path)
        await client.send(
            b"not json",
            b"[1, 2]",
            b"",
            request(1, "launch"),
            request(2, "add", variable="x", delta="5"),
            request(3, "get", variable="no such name"),
            {"v": 9, "id": 4, "cmd": "ping"},
            request(5, "ping"),
        )
        answers = [await client.receive() for _ in range(8)]
        assert [(a["id"], a["ok"]) for a in answers] == [
            (None, False),
            (None, False),
            (None, False),
            (1, False),
            (2, False),
            (3, False),
            (4, False),
            (5, True),
        ]
        codes = [a["error"]["code"] for a in answers[:7]]
        assert codes == ["bad_request"] * 6 + ["unsupported_version"]
        assert handler.requests == [], "the handler sees only valid requests"
        await client.close()

    with_server(tmp_path / "c.sock", scenario)


def test_a_handler_refusal_and_a_handler_bug_are_answered_and_the_connection_lives(
    tmp_path: Path,
) -> None:
    async def scenario(server: ControlServer, handler: FakeHandler) -> None:
        client = await Connection.open(server.path)
        missing = await client.call("get", 1, variable="x")
        assert missing["error"]["code"] == "not_found"
        assert "x" in missing["error"]["message"]
        with structlog.testing.capture_logs() as logged:
            bug = await client.call("get", 2, variable="boom")
        assert bug["error"] == {
            "code": "internal",
            "message": "internal error in crdtd; see its log",
        }
        [entry] = logged
        assert (entry["event"], entry["cmd"], entry["request_id"]) == (
            "control_handler_failed",
            "get",
            2,
        )
        assert entry["log_level"] == "error"
        assert isinstance(entry["exc_info"], RuntimeError)  # rendered with its traceback
        assert (await client.call("ping", 3))["ok"]
        await client.close()

    with_server(tmp_path / "c.sock", scenario)


def test_a_line_over_64_kib_gets_an_error_then_the_connection_closes(tmp_path: Path) -> None:
    async def scenario(server: ControlServer, handler: FakeHandler) -> None:
        client = await Connection.open(server.path)
        client.writer.write(b'{"v": 1, "id": 1, "cmd": "ping", "args": {"pad": "')
        client.writer.write(b"x" * REQUEST_BYTES_MAX)
        await client.writer.drain()
        answer = await client.receive()
        assert answer["id"] is None
        assert answer["error"]["code"] == "bad_request"
        assert "longer than 65536 bytes" in answer["error"]["message"]
        assert await client.closed_by_server()
        await client.close()
        other = await Connection.open(server.path)
        assert (await other.call("ping"))["ok"], "the server itself is unharmed"
        await other.close()

    with_server(tmp_path / "c.sock", scenario)


def test_a_connection_that_sends_nothing_is_closed_after_the_idle_timeout(tmp_path: Path) -> None:
    async def scenario(server: ControlServer, handler: FakeHandler) -> None:
        client = await Connection.open(server.path)
        assert (await client.call("ping"))["ok"]
        assert await client.closed_by_server()
        await client.close()

    with_server(tmp_path / "c.sock", scenario, idle_timeout_s=0.2)


def test_connections_beyond_the_limit_are_told_busy_and_closed(tmp_path: Path) -> None:
    async def scenario(server: ControlServer, handler: FakeHandler) -> None:
        first, second = await Connection.open(server.path), await Connection.open(server.path)
        assert (await first.call("ping"))["ok"] and (await second.call("ping"))["ok"]
        assert server.connections == 2
        third = await Connection.open(server.path)
        answer = await third.receive()
        assert answer["id"] is None
        assert answer["error"]["code"] == "busy"
        assert "limit 2" in answer["error"]["message"]
        assert await third.closed_by_server()
        await third.close()
        await first.close()
        while True:  # the server notices the hang-up on its own schedule
            fourth = await Connection.open(server.path)
            await fourth.send(request(1, "ping"))
            answer = await fourth.receive()
            await fourth.close()
            if answer["ok"]:
                break
        await second.close()

    with_server(tmp_path / "c.sock", scenario, connections_max=2)


def test_the_socket_has_mode_0660(tmp_path: Path) -> None:
    async def scenario(server: ControlServer, handler: FakeHandler) -> None:
        info = os.stat(server.path)
        assert stat.S_ISSOCK(info.st_mode)
        assert stat.S_IMODE(info.st_mode) == 0o660

    with_server(tmp_path / "c.sock", scenario)


def test_a_stale_socket_is_replaced(tmp_path: Path) -> None:
    path = tmp_path / "c.sock"
    stale = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    stale.bind(os.fspath(path))
    stale.close()  # the file stays; nobody listens: what a crashed daemon leaves

    async def scenario(server: ControlServer, handler: FakeHandler) -> None:
        client = await Connection.open(path)
        assert (await client.call("ping"))["ok"]
        await client.close()

    with_server(path, scenario)
    assert sorted(tmp_path.iterdir()) == [], "close removed the socket and left no debris"


def test_a_live_socket_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "c.sock"

    async def scenario(server: ControlServer, handler: FakeHandler) -> None:
        with pytest.raises(SocketPathError, match=f"another crdtd is listening on {path}"):
            await serve(path, FakeHandler())
        client = await Connection.open(path)
        assert (await client.call("ping"))["ok"], "the first server keeps its socket"
        await client.close()

    with_server(path, scenario)


def test_a_path_that_is_not_a_socket_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "c.sock"
    path.write_text("precious")

    async def main() -> None:
        with pytest.raises(SocketPathError, match="exists and is not a socket"):
            await serve(path, FakeHandler())

    run(main())
    assert path.read_text() == "precious"


def test_a_missing_directory_is_reported_with_the_path(tmp_path: Path) -> None:
    path = tmp_path / "absent" / "c.sock"

    async def main() -> None:
        with pytest.raises(SocketPathError, match=f"{path}.*does its directory exist"):
            await serve(path, FakeHandler())

    run(main())


def test_close_ends_connections_and_removes_the_socket(tmp_path: Path) -> None:
    path = tmp_path / "c.sock"

    async def main() -> None:
        handler = FakeHandler()
        handler.sync_hangs = True
        server = await serve(path, handler)
        client = await Connection.open(path)
        await client.send(request(1, "sync"), request(2, "ping"))
        await handler.sync_started.wait()
        await server.close()
        assert await client.reader.read() == b"", "no answer, just the end"
        assert not path.exists()
        await client.close()

    run(main())


def test_close_leaves_a_socket_that_is_no_longer_ours(tmp_path: Path) -> None:
    path = tmp_path / "c.sock"

    async def main() -> None:
        server = await serve(path, FakeHandler())
        path.unlink()
        path.write_text("someone else's")
        await server.close()

    run(main())
    assert path.read_text() == "someone else's"


def test_a_watch_streams_each_change_with_its_id_until_the_client_leaves(tmp_path: Path) -> None:
    async def scenario(server: ControlServer, handler: FakeHandler) -> None:
        writer = await Connection.open(server.path)
        await writer.call("create", variable="x")
        watcher = await Connection.open(server.path)
        await watcher.send(request("w", "watch", variable="x"))
        assert await watcher.receive() == {
            "v": 1,
            "id": "w",
            "ok": True,
            "data": {"variable": "x", "value": 0},
        }
        for delta in (5, -3):
            await writer.call("add", variable="x", delta=delta)
        assert [(await watcher.receive())["data"]["value"] for _ in range(2)] == [5, 2]
        await watcher.close()
        await handler.watch_ended.wait()
        assert handler.watchers["x"] == []
        await writer.close()

    with_server(tmp_path / "c.sock", scenario)


def test_a_watch_of_an_unknown_variable_is_refused_then_closed(tmp_path: Path) -> None:
    async def scenario(server: ControlServer, handler: FakeHandler) -> None:
        watcher = await Connection.open(server.path)
        answer = await watcher.call("watch", "w", variable="nope")
        assert (answer["id"], answer["error"]["code"]) == ("w", "not_found")
        assert await watcher.closed_by_server()
        await watcher.close()

    with_server(tmp_path / "c.sock", scenario)


def test_a_watch_the_handler_ends_closes_the_connection(tmp_path: Path) -> None:
    async def scenario(server: ControlServer, handler: FakeHandler) -> None:
        handler.values["x"] = handler.befores["x"] = 1
        handler.scripted_changes = [2, None]
        watcher = await Connection.open(server.path)
        await watcher.send(request(1, "watch", variable="x"))
        assert [(await watcher.receive())["data"]["value"] for _ in range(2)] == [1, 2]
        assert await watcher.closed_by_server()
        await watcher.close()

    with_server(tmp_path / "c.sock", scenario)


class WatchBug(FakeHandler):
    def watch(self, variable: str) -> AsyncIterator[dict[str, Any]]:
        if variable == "eager":
            raise RuntimeError("a bug before the first item")
        return self._failing_watch()

    async def _failing_watch(self) -> AsyncIterator[dict[str, Any]]:
        yield {"variable": "x", "value": 1}
        raise RuntimeError("a bug in the stream")


@pytest.mark.parametrize(("variable", "items"), [("eager", 0), ("late", 1)])
def test_a_watch_handler_bug_is_answered_internal_then_closed(
    tmp_path: Path, variable: str, items: int
) -> None:
    async def scenario(server: ControlServer, handler: FakeHandler) -> None:
        watcher = await Connection.open(server.path)
        await watcher.send(request("w", "watch", variable=variable))
        answers = [await watcher.receive() for _ in range(items + 1)]
        assert [answer["ok"] for answer in answers] == [True] * items + [False]
        assert answers[-1]["id"] == "w"
        assert answers[-1]["error"]["code"] == "internal"
        assert await watcher.closed_by_server()
        await watcher.close()

    with_server(tmp_path / "c.sock", scenario, WatchBug())


def test_a_slow_request_delays_only_its_own_connection(tmp_path: Path) -> None:
    async def scenario(server: ControlServer, handler: FakeHandler) -> None:
        handler.sync_hangs = True
        syncing = await Connection.open(server.path)
        await syncing.send(request(1, "sync"))
        other = await Connection.open(server.path)
        assert (await other.call("status"))["data"]["mode"] == "work"
        await other.close()
        await syncing.close()

    with_server(tmp_path / "c.sock", scenario)


def test_limits_are_checked() -> None:
    with pytest.raises(ValueError, match="connections_max"):
        ControlServer(Path("x"), FakeHandler(), connections_max=0)
    with pytest.raises(ValueError, match="idle_timeout_s"):
        ControlServer(Path("x"), FakeHandler(), idle_timeout_s=0)


def test_big_answers_pipelined_by_a_client_that_never_reads_are_not_all_made(
    tmp_path: Path,
) -> None:
    """A client pipelines 256 history requests of ~300 KB answers and reads nothing: the
    server makes the answers one at a time as the previous ones are written, so it stops
    at what the socket buffers hold; another connection is served meanwhile, and the
    greedy one gets every answer, in order, once it reads."""

    async def scenario(server: ControlServer, handler: FakeHandler) -> None:
        other = await Connection.open(server.path)
        await other.call("create", variable="big")
        handler.ops["big"] = [
            {"node_id": "n1", "incarnation": 1, "nonce": n, "delta": 1} for n in range(1, 5001)
        ]
        greedy = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        greedy.connect(str(server.path))
        lines = [json.dumps(request(i, "history", variable="big")).encode() for i in range(256)]
        greedy.sendall(b"\n".join(lines) + b"\n")
        assert (await other.call("add", 2, variable="big", delta=1))["ok"]
        assert (await other.call("status", 3))["ok"]
        made = sum(r.cmd == "history" for r in handler.requests)
        assert made < 16, f"{made} big answers made for a client that reads nothing"
        reader, writer = await asyncio.open_unix_connection(sock=greedy, limit=2**22)
        ids = [json.loads(await reader.readline())["id"] for _ in range(256)]
        assert ids == list(range(256))
        writer.close()
        await other.close()

    with_server(tmp_path / "c.sock", scenario)


def test_adds_pipelined_behind_a_big_answer_start_at_once(tmp_path: Path) -> None:
    """Small requests start when read, so pipelined adds still share a commit; their
    answers still come out in request order."""

    async def scenario(server: ControlServer, handler: FakeHandler) -> None:
        client = await Connection.open(server.path)
        await client.call("create", 0, variable="x")
        handler.sync_hangs = True
        await client.send(
            request(1, "sync"), *(request(i, "add", variable="x", delta=1) for i in range(2, 6))
        )
        await handler.sync_started.wait()
        while sum(r.cmd == "add" for r in handler.requests) < 4:
            await asyncio.sleep(0.01)
        assert handler.values["x"] == 4  # applied while the sync before them hangs
        await client.close()

    with_server(tmp_path / "c.sock", scenario)
