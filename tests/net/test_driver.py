"""The driver's promises, on real sockets and a real SQLite store: no answer before the
step's records are on disk, and a datagram the kernel cannot take yet waits its turn."""

from __future__ import annotations

import asyncio
import contextlib
import random
import socket
import sqlite3
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import structlog

from crdtd.core.ids import Origin
from crdtd.core.node import Node
from crdtd.core.records import BaseFolded, OpRecorded, OpsRecorded, Record, VariableCreated
from crdtd.core.requests import Add, Create
from crdtd.core.settings import Settings
from crdtd.core.step import Flush
from crdtd.daemon.reporting import Reporter
from crdtd.net.driver import Driver
from crdtd.store.sqlite import Store

WAIT_S = 10.0


class PassingStore:
    """A real store behind the driver, for a test to note what each append wrote."""

    def __init__(self, store: Store) -> None:
        self.store = store

    def append(self, records: list[Record]) -> None:
        self.store.append(records)

    @property
    def unpruned(self) -> bool:
        return self.store.unpruned

    def prune(self) -> bool:
        return self.store.prune()


class WatchedStore(PassingStore):
    """Notes, at each append, whether the watched future was already answered (it
    must not be: the answer waits for the write)."""

    def __init__(self, store: Store) -> None:
        super().__init__(store)
        self.watched: asyncio.Future[Any] | None = None
        self.answered_before_write: list[bool] = []

    def append(self, records: list[Record]) -> None:
        if self.watched is not None and VariableCreated("x") in records:
            self.answered_before_write.append(self.watched.done())
        super().append(records)


class NoSystemd:
    watchdog_interval_s = None

    def notify(self, **fields: str) -> None:
        pass


def udp_socket() -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("127.0.0.1", 0))
    return sock


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    store = Store.open(tmp_path / "state", "n1", lambda: "n1")
    yield store
    store.close()


def make_driver(store: Any, group: tuple[str, int]) -> Driver:
    node = Node(Origin("n1", 1), Settings(), random.Random(0), 0.0)
    return Driver(node, store, group, Reporter(structlog.get_logger()), NoSystemd())


def test_a_request_is_answered_only_once_its_records_are_on_disk(store: Store) -> None:
    watched = WatchedStore(store)
    group = udp_socket()

    async def scenario() -> None:
        driver = make_driver(watched, group.getsockname())
        await driver.attach(udp_socket(), udp_socket())
        running = asyncio.create_task(driver.run())
        created = driver.submit(Create("x"))
        watched.watched = created
        assert await asyncio.wait_for(created, WAIT_S) is True
        assert watched.answered_before_write == [False]
        assert VariableCreated("x") in store.load()
        driver.stop()
        await asyncio.wait_for(running, WAIT_S)

    try:
        asyncio.run(scenario())
    finally:
        group.close()


class FullForAWhile:
    """A socket whose send buffer is 'full' for its first *refusals* sends."""

    def __init__(self, sock: socket.socket, refusals: int) -> None:
        self.sock = sock
        self.refusals = refusals

    def sendto(self, payload: bytes, destination: tuple[str, int]) -> int:
        if self.refusals > 0:
            self.refusals -= 1
            raise BlockingIOError
        return self.sock.sendto(payload, destination)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.sock, name)


def test_datagrams_the_kernel_refuses_for_now_go_out_later_in_order(store: Store) -> None:
    receiver = udp_socket()
    receiver.settimeout(WAIT_S)
    payloads = [f"datagram {n}".encode() for n in range(50)]

    async def scenario() -> None:
        driver = make_driver(store, receiver.getsockname())
        await driver.attach(udp_socket(), udp_socket())
        driver._sockets[0] = FullForAWhile(driver._sockets[0], refusals=3)  # type: ignore[assignment]
        for payload in payloads:
            driver._send(payload, receiver.getsockname())
        got = [await asyncio.to_thread(receiver.recv, 2048) for _ in payloads]
        assert got == payloads
        assert "send_errors" not in driver.stats
        driver.stop()
        await asyncio.wait_for(driver.run(), WAIT_S)

    try:
        asyncio.run(scenario())
    finally:
        receiver.close()


def test_each_step_is_timed_and_the_longest_is_in_the_stats(store: Store) -> None:
    group = udp_socket()

    async def scenario() -> None:
        driver = make_driver(store, group.getsockname())
        await driver.attach(udp_socket(), udp_socket())
        running = asyncio.create_task(driver.run())
        await driver.create("x")
        assert driver.steps.count >= 1
        assert driver.stats["owner_step_max_us"] == int(driver.steps.max_s * 1_000_000)
        snapshot = driver.steps.snapshot()
        assert snapshot["histogram_s"][-1][1] <= snapshot["steps"] == driver.steps.count
        driver.stop()
        await asyncio.wait_for(running, WAIT_S)

    try:
        asyncio.run(scenario())
    finally:
        group.close()


def test_requests_over_a_steps_time_budget_wait_for_the_next_step(
    store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With no time to spare, each step takes one request: a long queue of requests is
    spread over steps, with timers and datagrams between, never run in one go."""
    monkeypatch.setattr("crdtd.net.driver.STEP_CALLS_S", 0.0)
    group = udp_socket()

    async def scenario() -> None:
        driver = make_driver(store, group.getsockname())
        await driver.attach(udp_socket(), udp_socket())
        answered: list[int] = []
        step = driver._stepper.step

        def counted(now: float, more: Any = None) -> Flush[Any]:
            flush = step(now, more)
            answered.append(len(flush.answers))
            return flush

        driver._stepper.step = counted  # type: ignore[method-assign]
        running = asyncio.create_task(driver.run())
        created = await asyncio.gather(*(driver.create(f"v{n}") for n in range(5)))
        assert created == [True] * 5
        assert max(answered) == 1, "two requests ran in one step"
        driver.stop()
        await asyncio.wait_for(running, WAIT_S)

    try:
        asyncio.run(scenario())
    finally:
        group.close()


def test_an_idle_driver_deletes_folded_ops_a_slice_at_a_time_and_answers_between(
    tmp_path: Path,
) -> None:
    state_dir = tmp_path / "state"
    store = Store.open(state_dir, "n1", lambda: "n1")
    other = Origin("n2", 5)
    store.append([OpRecorded("x", other, nonce, 1) for nonce in range(1, 60_001)])
    store.append([BaseFolded("x", other, 60_000, 60_000)])
    slices: list[bool] = []
    prune = store.prune

    def counted_prune() -> bool:
        slices.append(prune())
        return slices[-1]

    store.prune = counted_prune  # type: ignore[method-assign]
    group = udp_socket()

    async def scenario() -> None:
        driver = make_driver(store, group.getsockname())
        await driver.attach(udp_socket(), udp_socket())
        running = asyncio.create_task(driver.run())
        assert await driver.create("y") is True
        deadline = asyncio.get_running_loop().time() + WAIT_S
        while store.unpruned and asyncio.get_running_loop().time() < deadline:
            await asyncio.sleep(0.01)
        driver.stop()
        await asyncio.wait_for(running, WAIT_S)

    try:
        asyncio.run(scenario())
    finally:
        group.close()
        store.close()
    assert len(slices) >= 3 and slices[-1] is False  # 60,000 ops, about 20,000 a slice
    with contextlib.closing(sqlite3.connect(state_dir / "crdtd.sqlite3")) as connection:
        assert connection.execute("SELECT count(*) FROM op_runs").fetchone() == (0,)


def test_our_own_multicast_is_skipped_before_parsing_and_a_peers_is_queued(store: Store) -> None:
    async def scenario() -> None:
        driver = make_driver(store, ("127.0.0.1", 9))
        unicast, multicast, peer = udp_socket(), udp_socket(), udp_socket()
        await driver.attach(unicast, multicast)
        try:
            unicast.sendto(b"our own", multicast.getsockname())
            peer.sendto(b"a peer's", multicast.getsockname())
            await asyncio.sleep(0.1)  # the reader drains both
            assert driver._stepper.waiting == (0, 1)
        finally:
            peer.close()
            driver.stop()
            await asyncio.wait_for(driver.run(), WAIT_S)

    asyncio.run(scenario())


class Commits(PassingStore):
    """Notes how many ops each commit wrote."""

    def __init__(self, store: Store) -> None:
        super().__init__(store)
        self.ops: list[int] = []

    def append(self, records: list[Record]) -> None:
        ops = sum(len(r.deltas) for r in records if isinstance(r, OpsRecorded))
        ops += sum(1 for r in records if isinstance(r, OpRecorded))
        if ops:
            self.ops.append(ops)
        super().append(records)


def test_a_step_gathers_as_many_requests_as_the_last_commit_answered(
    store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Three clients answered together ask again one by one: the step waits for all
    three and commits them together; one alone is taken once the gathering time is up,
    and a lone client is never held (its target is one)."""
    commits = Commits(store)
    group = udp_socket()

    async def scenario() -> None:
        driver = make_driver(commits, group.getsockname())
        await driver.attach(udp_socket(), udp_socket())
        running = asyncio.create_task(driver.run())
        try:
            add = Add("x", (1,))
            await asyncio.wait_for(asyncio.gather(*(driver.submit(add) for _ in range(3))), WAIT_S)
            monkeypatch.setattr("crdtd.net.driver.GATHER_S", WAIT_S)  # only the count ends it
            first = driver.submit(add)
            for _ in range(5):
                await asyncio.sleep(0)  # the driver had every chance to step
            assert not first.done()
            await asyncio.wait_for(
                asyncio.gather(first, driver.submit(add), driver.submit(add)), WAIT_S
            )
            monkeypatch.setattr("crdtd.net.driver.GATHER_S", 0.01)
            for _ in range(2):  # one client: it waits once for the other two, then alone
                await asyncio.wait_for(driver.submit(add), WAIT_S)
        finally:
            driver.stop()
            await asyncio.wait_for(running, WAIT_S)

    try:
        asyncio.run(scenario())
    finally:
        group.close()
    assert commits.ops == [3, 3, 1, 1]
