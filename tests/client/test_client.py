"""crdtd.client against a real daemon (one node on loopback): the blocking and the
asyncio client, the same answers, and an add retried with its id counted once, also
across a kill -9."""

from __future__ import annotations

import asyncio
import signal
from collections.abc import Iterator
from pathlib import Path

import pytest

from crdtd.client import Added, AsyncClient, Client, ControlError, DaemonUnreachable, Value
from tests.daemon.loopback import Cluster


@pytest.fixture
def daemon(tmp_path: Path) -> Iterator[Cluster]:
    cluster = Cluster.start(tmp_path, 1, log_level="info")
    try:
        yield cluster
    finally:
        cluster.stop()


def test_the_blocking_client_does_what_crdtctl_does(daemon: Cluster) -> None:
    with Client(daemon.daemons[0].socket) as counters:
        assert counters.create("seats") is True
        assert counters.create("seats") is False
        added = counters.add("seats", 5)
        assert isinstance(added, Added) and added.value == 5 and added.nonce == 1
        counters.add("seats", -2)
        assert counters.get("seats") == Value("seats", 3, 0, "work")
        assert [op.delta for op in counters.history("seats")] == [5, -2]
        assert counters.status()["node_id"] == "n0"
        assert counters.sync().result == "completed"
        assert counters.get("seats").before == 3
        watch = counters.watch("seats")
        assert next(watch) == 3
        counters.add("seats", 1)
        assert next(watch) == 4
        watch.close()
        with pytest.raises(ControlError) as refused:
            counters.get("missing")
        assert refused.value.code == "not_found"


def test_an_add_sent_again_with_its_id_counts_once_and_another_add_may_not_reuse_it(
    daemon: Cluster,
) -> None:
    with Client(daemon.daemons[0].socket) as counters:
        first = counters.add("x", 7, request_id="order-1")
        assert counters.add("x", 7, request_id="order-1") == first
        with pytest.raises(ControlError) as refused:
            counters.add("x", 8, request_id="order-1")
        assert refused.value.code == "bad_request"
        assert counters.get("x").value == 7


def test_a_retry_with_the_same_id_after_a_kill_9_counts_once(daemon: Cluster) -> None:
    node = daemon.daemons[0]
    with Client(node.socket) as counters:
        first = counters.add("x", 7, request_id="order-2")
    node.kill(signal.SIGKILL)
    node.start()
    with Client(node.socket) as counters:
        again = counters.add("x", 7, request_id="order-2")
        assert (again.nonce, again.incarnation, again.value) == (
            first.nonce,
            first.incarnation,
            first.value,
        )
        assert counters.get("x").value == 7


def test_a_delete_hides_the_variable_until_an_add_starts_it_again_from_zero(
    daemon: Cluster,
) -> None:
    with Client(daemon.daemons[0].socket) as counters:
        counters.add("x", 5)
        watch = counters.watch("x")
        assert next(watch) == 5
        assert counters.delete("x") is True
        assert next(watch) == 0
        assert counters.delete("x") is False
        with pytest.raises(ControlError) as refused:
            counters.get("x")
        assert refused.value.code == "not_found"
        assert counters.call("variables") == {"variables": []}
        assert counters.add("x", 2).value == 2
        assert next(watch) == 2
        watch.close()
        assert counters.delete("never") is False
        assert counters.create("x") is False and counters.delete("x") is True
        assert counters.create("x") is True and counters.get("x").value == 0


def test_no_daemon_is_daemon_unreachable(tmp_path: Path) -> None:
    with pytest.raises(DaemonUnreachable), Client(tmp_path / "none.sock") as counters:
        counters.get("x")

    async def scenario() -> None:
        async with AsyncClient(tmp_path / "none.sock") as counters:
            await counters.get("x")

    with pytest.raises(DaemonUnreachable):
        asyncio.run(scenario())


def test_the_async_client_pipelines_concurrent_calls_on_one_connection(
    daemon: Cluster,
) -> None:
    async def scenario() -> None:
        async with AsyncClient(daemon.daemons[0].socket) as counters:
            added = await asyncio.gather(*(counters.add("x", 1) for _ in range(500)))
            assert sorted(a.nonce for a in added) == list(range(1, 501))
            assert (await counters.get("x")).value == 500
            assert len(await counters.history("x")) == 500
            assert (await counters.sync()).result == "completed"
            watch = counters.watch("x")
            assert await anext(watch) == 500
            await counters.add("x", -1)
            assert await anext(watch) == 499
            assert await counters.delete("x") is True
            assert await anext(watch) == 0
            await watch.aclose()
            assert await counters.delete("x") is False
            with pytest.raises(ControlError):
                await counters.get("x")
            assert (await counters.status())["node_id"] == "n0"

    asyncio.run(scenario())
