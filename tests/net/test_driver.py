"""The driver's promises, on real sockets and a real SQLite store: no answer before the
step's records are on disk, and a datagram the kernel cannot take yet waits its turn."""

from __future__ import annotations

import asyncio
import contextlib
import random
import socket
import sqlite3
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import structlog

from crdtd.core.events import DatagramRejected
from crdtd.core.ids import Origin
from crdtd.core.node import Node
from crdtd.core.records import BaseFolded, OpRecorded, Record, VariableCreated
from crdtd.core.settings import Settings
from crdtd.net.driver import (
    KEY_MISMATCH_HINTS,
    KEY_MISMATCH_LOG_EVERY_S,
    REJECT_LOG_EVERY_S,
    Driver,
    RejectLog,
)
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

    @property
    def unpruned(self) -> bool:
        return self.store.unpruned

    def prune(self) -> bool:
        return self.store.prune()


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


# --- which rejections are logged (pure: the times are passed in) ------------------------

SENDER = ("10.0.0.9", 7778)


def test_a_key_mismatch_is_logged_once_a_minute_with_the_key_id_and_a_hint() -> None:
    log = RejectLog()
    event = DatagramRejected("unknown_key", SENDER, "k20260314-3fa2")
    assert log.line(event, 100.0) == {
        "reason": "unknown_key",
        "source": "10.0.0.9:7778",
        "suppressed": 0,
        "key_id": "k20260314-3fa2",
        "hint": KEY_MISMATCH_HINTS["unknown_key"],
    }
    assert [log.line(event, 100.0 + dt) for dt in (1, 30, 59.9)] == [None] * 3
    again = log.line(event, 100.0 + KEY_MISMATCH_LOG_EVERY_S)
    assert again is not None and again["suppressed"] == 3
    assert KEY_MISMATCH_LOG_EVERY_S == 60.0


@pytest.mark.parametrize("reason", ["unknown_key", "unexpected_mac", "unauthenticated"])
def test_every_key_mismatch_reason_has_a_hint_and_names_the_key_id_even_unread(
    reason: str,
) -> None:
    line = RejectLog().line(DatagramRejected(reason, SENDER), 0.0)
    assert line is not None
    assert line["key_id"] is None  # unsigned, or a trailer that names no key
    assert "security.key_file" in line["hint"]


def test_other_rejections_are_logged_every_ten_seconds_without_a_hint() -> None:
    log = RejectLog()
    malformed = DatagramRejected("malformed", SENDER)
    assert log.line(malformed, 0.0) == {
        "reason": "malformed",
        "source": "10.0.0.9:7778",
        "suppressed": 0,
    }
    assert log.line(malformed, REJECT_LOG_EVERY_S - 0.1) is None
    assert log.line(malformed, REJECT_LOG_EVERY_S) == {
        "reason": "malformed",
        "source": "10.0.0.9:7778",
        "suppressed": 1,
    }
    bad_mac = log.line(DatagramRejected("bad_mac", SENDER, "k2026a"), 1.0)
    assert bad_mac is not None and bad_mac["key_id"] == "k2026a" and "hint" not in bad_mac


def test_each_reason_has_its_own_allowance() -> None:
    log = RejectLog()
    assert log.line(DatagramRejected("unauthenticated", SENDER), 0.0) is not None
    assert log.line(DatagramRejected("unexpected_mac", SENDER, "k1"), 0.0) is not None
    assert log.line(DatagramRejected("unauthenticated", SENDER), 1.0) is None


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
        assert await driver.call(lambda node, now: node.create("y", now)) is True
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
    assert len(slices) >= 3 and slices[-1] is False  # 60,000 ops, 20,000 a slice
    with contextlib.closing(sqlite3.connect(state_dir / "crdtd.sqlite3")) as connection:
        assert connection.execute("SELECT count(*) FROM ops").fetchone() == (0,)
