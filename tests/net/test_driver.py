"""The driver's promises, on real sockets and a real SQLite store: no answer before the
step's records are on disk, and a datagram the kernel cannot take yet waits its turn."""

from __future__ import annotations

import asyncio
import random
import socket
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import structlog

from crdtd.core.ids import Origin
from crdtd.core.node import Node
from crdtd.core.records import Record, VariableCreated
from crdtd.core.settings import Settings
from crdtd.net.driver import Driver
from crdtd.store.sqlite import Store

WAIT_S = 10.0


class GatedStore:
    """A real store whose appends wait for `release` (a slow disk)."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self.entered = threading.Event()
        self.gate = threading.Event()

    def append(self, records: list[Record]) -> None:
        self.entered.set()
        assert self.gate.wait(WAIT_S), "the test never released the store"
        self.store.append(records)


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
    store = Store.open(tmp_path / "state", "n1", lambda: 1, lambda: "n1")
    yield store
    store.close()


def make_driver(store: Any, group: tuple[str, int]) -> Driver:
    node = Node(Origin("n1", 1), Settings(), random.Random(0), 0.0)
    return Driver(node, store, group, structlog.get_logger(), NoSystemd())


def test_a_request_is_answered_only_once_its_records_are_on_disk(store: Store) -> None:
    gated = GatedStore(store)
    group = udp_socket()

    async def scenario() -> None:
        driver = make_driver(gated, group.getsockname())
        await driver.attach(udp_socket(), udp_socket())
        running = asyncio.create_task(driver.run())
        created = asyncio.create_task(driver.call(lambda node, now: node.create("x", now)))
        await asyncio.to_thread(gated.entered.wait, WAIT_S)
        await asyncio.sleep(0.2)
        assert not created.done(), "answered while its record was still being written"
        assert VariableCreated("x") not in store.load()
        gated.gate.set()
        assert await asyncio.wait_for(created, WAIT_S) is True
        assert VariableCreated("x") in store.load()
        driver.stop()
        await asyncio.wait_for(running, WAIT_S)

    try:
        asyncio.run(scenario())
    finally:
        gated.gate.set()
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
        await driver.call(lambda node, now: node.create("x", now))
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
        running = asyncio.create_task(driver.run())
        steps = await asyncio.gather(
            *(driver.call(lambda node, now: driver.steps.count) for _ in range(5))
        )
        assert steps == sorted(set(steps)), "two requests ran in one step"
        driver.stop()
        await asyncio.wait_for(running, WAIT_S)

    try:
        asyncio.run(scenario())
    finally:
        group.close()
