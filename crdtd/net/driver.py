"""The driver: the one asyncio task that owns the Node.

Rules:
- only ``Driver.run`` calls into the node. Everyone else (control requests) hands it a
  function with `Driver.call`, which runs between two steps, so every answer reflects
  state that is already durable;
- each step ends with one flush in a fixed order: persist (one SQLite transaction for
  everything the step produced: group commit), then answer the step's requests, then
  send, then report events. Nothing is acknowledged, and no answer shows state, before
  that state is on disk;
- a datagram the kernel cannot take now (a full send buffer) waits in a bounded outbox,
  in order, until the socket is writable again;
- reading a socket only enqueues, up to `RECV_BURST` datagrams per wakeup (one loop turn
  per datagram would spend a flood's CPU on the event loop). The inbox is bounded;
  datagrams over 1400 bytes and overflow are dropped and counted before any parsing;
- a step takes the control requests first, until `STEP_CALLS_S` has passed (the rest
  wait for the next step), and at most `STEP_DATAGRAMS_MAX` datagrams, and the task
  yields after every step, so a flood of datagrams or requests delays a request by one
  short step, not by the whole queue. Each request's function must itself be short:
  big answers and big writes are asked for in slices (`crdtd.daemon.handler`);
- every stretch the owner task runs without yielding (the step, then the flush after
  the disk write) is timed (`StepStats`): its longest is ``owner_step_max_us`` in
  ``stats``, so a step that holds the loop too long shows in numbers, not in a
  watchdog abort;
- while a transaction is being written, datagrams and requests keep queueing; the next
  step takes them all at once, which is what batches ops into few commits and datagrams;
- rejected datagrams are logged at most once per reason per `REJECT_LOG_EVERY_S`, and a
  key mismatch (`KEY_MISMATCH_HINTS`) at most once a minute, with the key id the sender
  named and what to do: a flood of bad datagrams never floods the log (`RejectLog`).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import socket
import time
from collections.abc import Callable
from typing import Any, Protocol, TypeVar

from crdtd.core.events import (
    AddApplied,
    ClaimRefused,
    DatagramRejected,
    Event,
    GapRepaired,
    IdentityConflict,
    PeerJoined,
    PeerLost,
    StateRewound,
    SyncFinished,
    SyncStarted,
    ValueChanged,
    VariableAdded,
    VariablesOverLimit,
    VerifyFinished,
)
from crdtd.core.ids import Address
from crdtd.core.node import Node
from crdtd.core.records import Record
from crdtd.core.settings import DATAGRAM_BYTES_MAX

T = TypeVar("T")

INBOX_MAX = 8192
STEP_DATAGRAMS_MAX = 256  # keep one step short so timers and requests stay timely
STEP_CALLS_S = 0.02  # requests taken by one step, in time: each request is short itself
RECV_BURST = 64
OUTBOX_MAX = 4096
WATCH_QUEUE_MAX = 1024
REJECT_LOG_EVERY_S = 10.0
KEY_MISMATCH_LOG_EVERY_S = 60.0
KEY_MISMATCH_HINTS = {
    "unknown_key": "the sender signs with a key id this node's key file lacks: every node "
    "needs the same cluster key file (security.key_file); during a rotation, add the new "
    "key to this node's file and reload",
    "unexpected_mac": "the sender signs its datagrams and this node has no key: copy the "
    "cluster key file to this node (mode 0600), set security.key_file and restart crdtd",
    "unauthenticated": "the sender does not sign its datagrams and this node requires keys: "
    "copy the cluster key file to the sender (mode 0600), set security.key_file there and "
    "restart crdtd there",
}
"""What to do about a rejection that means a node lacks the cluster key (or has one
the others lack), by reason; these stay until someone acts, so once a minute is enough."""
BARRIER_BUCKETS_S = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)
"""Upper bounds of the barrier duration histogram (`BarrierStats`), seconds."""


class BarrierStats:
    """Barriers this node took part in, from `SyncFinished`: counts by result, and the
    durations of completed ones as last/sum/max and a cumulative histogram."""

    def __init__(self) -> None:
        self.completed = 0
        self.aborted = 0
        self.last_s: float | None = None
        self.sum_s = 0.0
        self.max_s = 0.0
        self.buckets = [0] * len(BARRIER_BUCKETS_S)  # cumulative: count <= bound

    def record(self, result: str, duration_s: float) -> None:
        if result != "completed":
            self.aborted += 1
            return
        self.completed += 1
        self.last_s = duration_s
        self.sum_s += duration_s
        self.max_s = max(self.max_s, duration_s)
        for index, bound in enumerate(BARRIER_BUCKETS_S):
            if duration_s <= bound:
                self.buckets[index] += 1

    def snapshot(self) -> dict[str, Any]:
        def ms(seconds: float | None) -> float | None:
            return None if seconds is None else round(seconds * 1000, 1)

        average = self.sum_s / self.completed if self.completed else None
        return {
            "completed": self.completed,
            "aborted": self.aborted,
            "duration_ms": {
                "last": ms(self.last_s),
                "avg": ms(average),
                "max": ms(self.max_s if self.completed else None),
            },
            "duration_sum_s": self.sum_s,
            "histogram_s": [
                [bound, count] for bound, count in zip(BARRIER_BUCKETS_S, self.buckets, strict=True)
            ],
        }


class RejectLog:
    """Which rejected datagrams get a log line: the first of a reason, then at most one
    per interval, carrying how many were left out since. Pure: the caller passes *now*."""

    def __init__(self) -> None:
        self._last: dict[str, tuple[float, int]] = {}  # reason -> (logged at, left out)

    def line(self, event: DatagramRejected, now: float) -> dict[str, Any] | None:
        """The fields of the ``datagram_rejected`` line for *event*, or None to skip it."""
        hint = KEY_MISMATCH_HINTS.get(event.reason)
        every = KEY_MISMATCH_LOG_EVERY_S if hint else REJECT_LOG_EVERY_S
        last = self._last.get(event.reason)
        if last is not None and now - last[0] < every:
            self._last[event.reason] = (last[0], last[1] + 1)
            return None
        self._last[event.reason] = (now, 0)
        fields: dict[str, Any] = {
            "reason": event.reason,
            "source": f"{event.address[0]}:{event.address[1]}",
            "suppressed": last[1] if last is not None else 0,
        }
        if hint or event.key_id is not None:
            fields["key_id"] = event.key_id
        if hint:
            fields["hint"] = hint
        return fields


STEP_BUCKETS_S = (0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0, 5.0)
"""Upper bounds of the owner-step duration histogram (`StepStats`), seconds."""


class StepStats:
    """How long the owner task ran without yielding, per stretch: count, sum, max and
    a cumulative histogram. The watchdog is fed between steps, so the longest step is
    how close the daemon came to being killed by it (habit 18 of docs/STYLE.md)."""

    def __init__(self) -> None:
        self.count = 0
        self.sum_s = 0.0
        self.max_s = 0.0
        self.buckets = [0] * len(STEP_BUCKETS_S)  # cumulative: count <= bound

    def record(self, duration_s: float) -> None:
        self.count += 1
        self.sum_s += duration_s
        self.max_s = max(self.max_s, duration_s)
        for index, bound in enumerate(STEP_BUCKETS_S):
            if duration_s <= bound:
                self.buckets[index] += 1

    def snapshot(self) -> dict[str, Any]:
        return {
            "steps": self.count,
            "max_ms": round(self.max_s * 1000, 3),
            "sum_s": self.sum_s,
            "histogram_s": [
                [bound, count] for bound, count in zip(STEP_BUCKETS_S, self.buckets, strict=True)
            ],
        }


class Store(Protocol):
    def append(self, records: list[Record]) -> None: ...

    @property
    def unpruned(self) -> bool: ...

    def prune(self) -> bool: ...


class Notifier(Protocol):
    def notify(self, **fields: str) -> None: ...

    @property
    def watchdog_interval_s(self) -> float | None: ...


class Driver:
    """Runs a Node on real sockets and a real disk."""

    def __init__(
        self,
        node: Node,
        store: Store,
        group: Address,
        log: Any,
        notifier: Notifier,
    ) -> None:
        self.node = node
        self.stats: dict[str, int] = {}
        self._store = store
        self._group = group
        self._log = log
        self._notifier = notifier
        self._inbox: collections.deque[tuple[bytes, Address, bool]] = collections.deque()
        self._calls: collections.deque[tuple[Callable[[Node, float], Any], asyncio.Future[Any]]]
        self._calls = collections.deque()
        self._answers: list[tuple[asyncio.Future[Any], Any, Exception | None]] = []
        self._outbox: collections.deque[tuple[bytes, Address]] = collections.deque()
        self._wakeup = asyncio.Event()
        self._stopping = asyncio.Event()
        self._waiters: dict[int, asyncio.Future[Any]] = {}
        self._watchers: dict[str, list[asyncio.Queue[int]]] = {}
        self._sockets: list[socket.socket] = []  # the unicast one first: we send from it
        self._reject_log = RejectLog()
        self._status = ""
        self.barriers = BarrierStats()
        self.steps = StepStats()

    # --- wiring -------------------------------------------------------------------

    async def attach(self, unicast: socket.socket, multicast: socket.socket) -> None:
        """Start receiving on both (non-blocking) sockets; everything is sent from
        *unicast*. The driver closes them when it stops."""
        loop = asyncio.get_running_loop()
        self._sockets = [unicast, multicast]
        for sock in self._sockets:
            sock.setblocking(False)  # _drain reads until the socket would block
        loop.add_reader(unicast.fileno(), self._drain, unicast, False)
        loop.add_reader(multicast.fileno(), self._drain, multicast, True)

    def _drain(self, sock: socket.socket, multicast: bool) -> None:
        for _ in range(RECV_BURST):
            try:
                # One byte over the limit: a longer datagram arrives cut, and is dropped.
                data, (host, port, *_) = sock.recvfrom(DATAGRAM_BYTES_MAX + 1)
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                self.count("socket_errors")
                return
            self.enqueue_datagram(data, (host, port), multicast)

    def enqueue_datagram(self, data: bytes, address: Address, multicast: bool) -> None:
        if len(data) > DATAGRAM_BYTES_MAX:
            self.count("dropped_oversized")
        elif len(self._inbox) >= INBOX_MAX:
            self.count("dropped_inbox_full")
        else:
            self._inbox.append((data, address, multicast))
            self._wakeup.set()

    def stop(self) -> None:
        self._stopping.set()
        self._wakeup.set()

    def count(self, name: str, amount: int = 1) -> None:
        self.stats[name] = self.stats.get(name, 0) + amount

    # --- requests from the control side -------------------------------------------

    async def call(self, function: Callable[[Node, float], T]) -> T:
        """Run ``function(node, now)`` in the owner task between steps; return its result."""
        future: asyncio.Future[T] = asyncio.get_running_loop().create_future()
        self._calls.append((function, future))
        self._wakeup.set()
        return await future

    def waiter(self, ticket: int) -> asyncio.Future[Any]:
        """A future resolved by the event carrying *ticket*. Call from inside `call`."""
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._waiters[ticket] = future
        return future

    def watch(self, variable: str) -> asyncio.Queue[int]:
        queue: asyncio.Queue[int] = asyncio.Queue(WATCH_QUEUE_MAX)
        self._watchers.setdefault(variable, []).append(queue)
        return queue

    def unwatch(self, variable: str, queue: asyncio.Queue[int]) -> None:
        queues = self._watchers.get(variable, [])
        if queue in queues:
            queues.remove(queue)
        if not queues:
            self._watchers.pop(variable, None)

    # --- the owner task -----------------------------------------------------------

    async def run(self) -> None:
        """Step until `stop`; then flush a last time and close the sockets (also when a
        step fails: the error propagates and stops the daemon)."""
        try:
            await self._run()
        finally:
            self._close_sockets()

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        next_watchdog = loop.time()
        while not self._stopping.is_set():
            deadline = self.node.get_timer()
            interval = self._notifier.watchdog_interval_s
            if interval is not None:
                deadline = min(deadline, next_watchdog)
            if not self._inbox and not self._calls:
                self._wakeup.clear()
                timeout = deadline - loop.time()
                if self._store.unpruned:
                    # Idle work: one slice of the ops the last fold covered, so that a
                    # big fold never holds a request for the whole delete.
                    await asyncio.to_thread(self._store.prune)
                elif timeout > 0:
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(self._wakeup.wait(), timeout)
            now = loop.time()
            if interval is not None and now >= next_watchdog:
                self._notifier.notify(WATCHDOG="1")
                next_watchdog = now + interval
            started = time.perf_counter()
            self._step(now)
            await self._flush(started)
            await asyncio.sleep(0)  # let requests and the sockets' readers in
        self._notifier.notify(STOPPING="1")
        self.node.checkpoint()
        await self._flush()
        self._send_queued()  # what the kernel takes now; the rest is lost with us

    def _close_sockets(self) -> None:
        loop = asyncio.get_running_loop()
        for sock in self._sockets:
            if sock.fileno() >= 0:
                loop.remove_reader(sock.fileno())
                loop.remove_writer(sock.fileno())
                sock.close()

    def _step(self, now: float) -> None:
        node = self.node
        calls_until = time.perf_counter() + STEP_CALLS_S
        while self._calls:
            function, future = self._calls.popleft()
            if future.cancelled():
                continue
            try:
                self._answers.append((future, function(node, now), None))
            except Exception as error:  # handed back to the caller, who reports it
                self._answers.append((future, None, error))
            if time.perf_counter() >= calls_until:
                break  # at least one per step; the rest wait for the next
        for _ in range(min(len(self._inbox), STEP_DATAGRAMS_MAX)):
            data, address, multicast = self._inbox.popleft()
            node.receive_datagram(data, address, now, multicast)
        if node.get_timer() <= now:
            node.handle_timer(now)

    async def _flush(self, started: float | None = None) -> None:
        """Persist, answer, send, report. *started*: when the step before began (by
        `time.perf_counter`), to time the stretches that hold the loop."""
        records = self.node.records_to_persist()
        if records:
            if started is not None:
                self._timed(started)
                started = None
            # A failure here propagates and stops the daemon: nothing of this step was
            # sent or acknowledged, so nothing acknowledged is lost.
            await asyncio.to_thread(self._store.append, records)
            started = time.perf_counter()
        answers, self._answers = self._answers, []
        for future, result, error in answers:
            if future.cancelled():
                continue
            if error is not None:
                future.set_exception(error)
            else:
                future.set_result(result)
        for datagram in self.node.datagrams_to_send():
            self._send(datagram.payload, datagram.destination or self._group)
        for event in self.node.events():
            self._report(event)
        self._update_status()
        if started is not None:
            self._timed(started)

    def _timed(self, started: float) -> None:
        self.steps.record(time.perf_counter() - started)
        self.stats["owner_step_max_us"] = int(self.steps.max_s * 1_000_000)

    def _send(self, payload: bytes, destination: Address) -> None:
        if not self._outbox:
            try:
                self._sockets[0].sendto(payload, destination)
                return
            except BlockingIOError:
                unicast = self._sockets[0].fileno()
                asyncio.get_running_loop().add_writer(unicast, self._send_queued)
            except OSError:  # unreachable and the like: repair and retries cover a loss
                self.count("send_errors")
                return
        if len(self._outbox) >= OUTBOX_MAX:
            self.count("dropped_outbox_full")
            return
        self._outbox.append((payload, destination))

    def _send_queued(self) -> None:
        """Send the outbox in order until the kernel refuses again (writer callback)."""
        sock = self._sockets[0]
        while self._outbox:
            payload, destination = self._outbox[0]
            try:
                sock.sendto(payload, destination)
            except BlockingIOError:
                return
            except OSError:
                self.count("send_errors")
            self._outbox.popleft()
        asyncio.get_running_loop().remove_writer(sock.fileno())

    # --- events -------------------------------------------------------------------

    def _report(self, event: Event) -> None:
        log = self._log
        if isinstance(event, AddApplied):
            self._resolve(event.ticket, event)
        elif isinstance(event, ValueChanged):
            for queue in self._watchers.get(event.variable, []):
                if queue.full():
                    queue.get_nowait()  # a slow watcher sees the latest values, not all
                queue.put_nowait(event.value)
        elif isinstance(event, VerifyFinished):
            self._resolve(event.ticket, event)
        elif isinstance(event, SyncFinished):
            self.barriers.record(event.result, event.duration_s)
            for ticket in event.tickets:
                self._resolve(ticket, event)
            log.info(
                f"sync_{event.result}",
                epoch=event.epoch,
                initiator=event.initiator,
                duration_ms=round(event.duration_s * 1000, 1),
                reason=event.reason or None,
            )
        elif isinstance(event, SyncStarted):
            log.info("sync_started", epoch=event.epoch, initiator=event.initiator)
        elif isinstance(event, PeerJoined):
            log.info(
                "peer_joined",
                peer=event.node_id,
                incarnation=event.incarnation,
                address=f"{event.address[0]}:{event.address[1]}",
            )
        elif isinstance(event, PeerLost):
            log.warning("peer_lost", peer=event.node_id, silent_s=round(event.silent_s, 1))
        elif isinstance(event, GapRepaired):
            log.debug(
                "gap_repaired",
                variable=event.variable,
                origin=str(event.origin),
                first=event.first,
                last=event.last,
            )
        elif isinstance(event, DatagramRejected):
            self._log_reject(event)
        elif isinstance(event, IdentityConflict):
            log.warning(
                "identity_conflict",
                peer=event.node_id,
                origins=[str(origin) for origin in event.origins],
                address=f"{event.address[0]}:{event.address[1]}",
                ours=event.ours,
                hint="two live daemons use this node id (a cloned state directory or one "
                "node.id set twice): stop one, give it a new node.id and an empty "
                "node.state_dir; meanwhile nothing is lost, each has its own incarnation",
            )
        elif isinstance(event, StateRewound):
            log.warning(
                "state_rewound",
                origin=str(event.origin),
                variable=event.variable,
                held=event.held,
                seen=event.seen,
                peer=event.peer,
                hint="this state directory is older than the one that issued these ops (a "
                "snapshot reverted, a lost WAL, a copy); peers are sending them back",
            )
        elif isinstance(event, ClaimRefused):
            log.warning(
                "claim_refused",
                kind=event.kind,
                variable=event.variable,
                nonce=event.nonce,
                peer=event.peer,
                address=f"{event.address[0]}:{event.address[1]}",
                hint="a key holder claimed ops of this node that it never issued: a forged "
                "datagram or a copy of this node's state running elsewhere",
            )
        elif isinstance(event, VariablesOverLimit):
            log.warning(
                "variables_over_limit",
                variables=event.variables,
                limit=event.limit,
                hard_limit=event.hard_limit,
                hint="peers hold more variables than limits.variables_max; this node keeps "
                "them up to the hard limit and refuses new local names: raise the limit "
                "on every node",
            )
        elif isinstance(event, VariableAdded):
            log.debug("variable_added", variable=event.variable)

    def _resolve(self, ticket: int, event: Event) -> None:
        future = self._waiters.pop(ticket, None)
        if future is not None and not future.done():
            future.set_result(event)

    def _log_reject(self, event: DatagramRejected) -> None:
        fields = self._reject_log.line(event, asyncio.get_running_loop().time())
        if fields is not None:
            self._log.warning("datagram_rejected", **fields)

    def _update_status(self) -> None:
        status = f"mode={self.node.mode.value} peers={len(self.node.peers)}"
        if status != self._status:
            self._status = status
            self._notifier.notify(STATUS=status)
