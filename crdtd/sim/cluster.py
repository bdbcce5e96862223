"""A simulated cluster: nodes, their disks, the network, the clock, the ledger.

Theory of operation: the cluster owns every `Node` and is the only caller of its inputs.
After each input it runs the node's flush in the fixed driver order - persist (write,
then sync), send, report - then re-reads the node's one timer and checks the node's
invariants. `run_until` repeatedly takes the earliest of the next delivery and the
earliest node timer (deliveries first on a tie, then nodes by index), jumps the clock
there and feeds it to the node. Scenario actions (adds, crashes, cuts...) are method
calls made between steps, at the current virtual time.

Rules:
- nodes are ``n00``..``nNN`` at address ``("127.0.1.<index + 1>", 7778)`` (IPv4 literals,
  as on a LAN, never sent anywhere); a node's origin is ``(node_id, incarnation)``, and
  every boot proposes a new incarnation from the virtual clock (as the daemon does from
  the wall clock; `crdtd.core.identity`), which the node may raise;
- a clone is one more slot with the node id of another and a copy of its synced disk
  (a cloned VM image); a rewound restart boots from a prefix of the synced records (a
  reverted snapshot); both are allowed only while every acknowledged op they drop has a
  durable copy on another disk, as wipes are;
- a clean crash happens between steps; a mid-flush crash happens inside the next flush
  that has records: they are written but not synced, then the node dies - its datagrams
  are never sent and its events never reported (a crash between taking a nonce and
  writing it down);
- a restart rebuilds the node from its synced records with a fresh random stream
  ``node/<slot>/<boot>``;
- an exception out of a node, and any broken invariant, is an `InvariantViolation`.
"""

from __future__ import annotations

import heapq
import random
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import TypeVar

from crdtd.core import wire
from crdtd.core.events import AddApplied, SyncFinished
from crdtd.core.identity import SALT_BITS, propose_incarnation
from crdtd.core.ids import NONCE_MAX, Address, Origin
from crdtd.core.messages import BarrierId, BaseEntry, OpGroup, SyncStart, VariableDigest
from crdtd.core.modes import Mode
from crdtd.core.node import Node
from crdtd.core.records import Buried, Record
from crdtd.core.requests import Add, Create, Delete, Request, StartSync, Ticket
from crdtd.core.settings import Settings
from crdtd.core.step import Flush, Stepper
from crdtd.sim.clock import VirtualClock
from crdtd.sim.disk import Disk
from crdtd.sim.failures import InvariantViolation
from crdtd.sim.invariants import check_durable, check_summary, check_variable, convergence_gap
from crdtd.sim.ledger import Ledger, describe
from crdtd.sim.network import LinkFaults, Network
from crdtd.sim.rng import stream
from crdtd.sim.trace import Trace

PORT = 7778
SAME_INSTANT_STEPS_MAX = 100_000
"""More steps than this without the clock moving is a livelock."""
IDLE_TIMER_FIRES_MAX = 1_000
"""A node whose timer stays due after this many idle ``handle_timer`` calls is spinning."""

T = TypeVar("T")

NodeFactory = Callable[[Origin, Settings, random.Random, float, Iterable[Record]], Node]


def node_id_of(index: int) -> str:
    return f"n{index:02d}"


def address_of(index: int) -> Address:
    return (f"127.0.1.{index + 1}", PORT)


LIAR_ADDRESS: Address = ("127.0.2.1", PORT)
"""Where forged datagrams come from: a key holder that is no node of the cluster."""
LIAR = Origin("liar", 1)


@dataclass(slots=True, eq=False)
class Slot:
    """One machine of the cluster: its disk outlives the node process running on it."""

    index: int
    node_id: str
    address: Address
    disk: Disk = field(default_factory=Disk)
    node: Node | None = None
    stepper: Stepper[Token] | None = None
    writing: Writing | None = None
    incarnation: int = 0
    boot: int = 0
    timer: float | None = None
    timer_version: int = 0
    crash_mid_flush: bool = False
    idle_fires: int = 0
    steps: int = 0
    values: dict[str, int] = field(default_factory=dict)

    @property
    def origin(self) -> Origin:
        return Origin(self.node_id, self.incarnation)


@dataclass(slots=True)
class Writing:
    """A flush whose records are written and not yet synced: it completes (sync,
    answers, sends, events) when the disk is done, at *done_at*."""

    flush: Flush[Token]
    what: str
    touched: dict[str, None]
    full: bool
    done_at: float


@dataclass(frozen=True, slots=True)
class Deleting:
    """The token of a delete request: its answer says whether it made a grave."""

    variable: str


Token = tuple[str, int] | Deleting | None
"""What a request carries to its answer: an add's (variable, delta), a delete's name."""


@dataclass(slots=True)
class ClusterStats:
    adds_called: int = 0
    adds_acked: int = 0
    creates: int = 0
    deletes: int = 0
    syncs_started: int = 0
    crashes: int = 0
    crashes_mid_flush: int = 0
    restarts: int = 0
    wipes: int = 0
    wipes_refused: int = 0
    rewinds: int = 0
    clones: int = 0
    forgeries: int = 0
    barriers_completed: int = 0
    barriers_aborted: int = 0
    log_len_max: int = 0
    steps_batched: int = 0
    """Steps that took more than one input (requests and datagrams queued meanwhile)."""
    step_inputs_max: int = 0
    dropped_inbox: int = 0


class Cluster:
    """Every node of one run, stepped deterministically on one virtual clock."""

    def __init__(
        self,
        seed: int,
        size: int,
        settings: Settings | None = None,
        faults: LinkFaults | None = None,
        node_factory: NodeFactory = Node,
        trace: Trace | None = None,
        full_check_every: int = 16,
        check_steps: bool = True,
        write_s: tuple[float, float] = (0.0, 0.0),
    ) -> None:
        """*write_s*: how long a flush's disk write takes, drawn uniformly from that
        range per flush (0: at once). While a node writes, what arrives queues, and its
        next step takes it all, as the daemon's driver does."""
        assert 1 <= size <= 100, size
        self.seed = seed
        self.settings = settings or Settings()
        self.clock = VirtualClock()
        self.network = Network(stream(seed, "network"), faults or LinkFaults())
        self.slots = [Slot(i, node_id_of(i), address_of(i)) for i in range(size)]
        self.ledger = Ledger()
        self.trace = trace or Trace()
        self.stats = ClusterStats()
        self.full_check_every = max(1, full_check_every)
        self.check_steps = check_steps
        """False skips the per-step checks (benchmarks only); convergence still checks."""
        self._factory = node_factory
        self._by_address = {slot.address: slot for slot in self.slots}
        self._timers: list[tuple[float, int, int]] = []
        self._pending: dict[tuple[int, int, int], tuple[str, int]] = {}
        self.barriers: list[SyncFinished] = []
        """Every barrier's end, as its initiator reported it."""
        self._same_instant_steps = 0
        self._write_s = write_s
        self._disk_rng = stream(seed, "disk")

    # views --------------------------------------------------------------
    @property
    def now(self) -> float:
        return self.clock.now

    def live(self) -> list[Slot]:
        return [slot for slot in self.slots if slot.node is not None]

    def down(self) -> list[Slot]:
        return [slot for slot in self.slots if slot.node is None]

    def node(self, index: int) -> Node:
        node = self.slots[index].node
        assert node is not None, f"{node_id_of(index)} is down"
        return node

    # lifecycle ----------------------------------------------------------
    def start(
        self, index: int, wipe: bool = False, keep: int | None = None, clock_back_ms: int = 0
    ) -> None:
        """Boot node *index* (first start or restart) from its disk; *wipe* loses the disk,
        *keep* rewinds it to its first *keep* synced records, and *clock_back_ms* sets
        the wall clock the boot proposes its incarnation from back by that much."""
        slot = self.slots[index]
        assert slot.node is None, f"{slot.node_id} is already running"
        what = "start" if slot.boot == 0 else "restart"
        if wipe and slot.boot > 0:
            keep = 0
        if keep is not None and slot.boot > 0 and keep < len(slot.disk.synced):
            what = self._rewind(slot, keep, "wiped" if keep == 0 else f"rewound to {keep}")
        if slot.boot > 0:
            self.stats.restarts += 1
        slot.boot += 1
        salt = stream(self.seed, f"slot/{slot.index}/{slot.boot}/incarnation").getrandbits(
            SALT_BITS
        )
        clock_ms = max(0, int(self.now * 1000) - clock_back_ms)
        proposed = Origin(slot.node_id, propose_incarnation(clock_ms, salt))
        slot.values = {}
        slot.steps = 0
        rng = stream(self.seed, f"node/{slot.index}/{slot.boot}")
        records = list(slot.disk.synced)
        what = f"{what} from {len(records)} records"
        node = self._call(
            slot,
            what,
            self._factory,
            proposed,
            self.settings,
            rng,
            self.now,
            records,
            # Above every sequence number of earlier boots, as the daemon's wall-clock
            # microseconds are: fewer than a million datagrams a virtual second.
            int(self.now * 1_000_000) + 1,
        )
        slot.node = node
        slot.stepper = Stepper(node)
        slot.incarnation = node.origin.incarnation
        self.trace.step(self.now, slot.node_id, f"booted as {node.origin}")
        self.network.attach(slot.address)
        self._write(slot, slot.stepper.flush(), what, {}, full=True)

    def _rewind(self, slot: Slot, keep: int, what: str) -> str:
        """Rewind *slot*'s disk to *keep* records, unless that loses an acknowledged op
        that no other disk holds (then the disk stays as it is)."""
        kept = slot.disk.copy()
        kept.rewind(keep)
        others = [s.disk for s in self.slots if s is not slot]
        unsafe = self.ledger.undurable_acked([*others, kept])
        if unsafe:
            self.stats.wipes_refused += 1
            return f"restart ({what} refused: {len(unsafe)} acked ops held only here)"
        slot.disk = kept
        if keep == 0:
            self.stats.wipes += 1
        else:
            self.stats.rewinds += 1
        return f"restart {what}"

    def clone(self, source: int) -> int:
        """Add a machine whose disk is a copy of *source*'s synced disk, and boot it: a
        second live holder of *source*'s node id. Returns the new slot's index."""
        index = len(self.slots)
        original = self.slots[source]
        slot = Slot(index, original.node_id, address_of(index), disk=original.disk.copy())
        self.slots.append(slot)
        self._by_address[slot.address] = slot
        self.stats.clones += 1
        self.trace.step(
            self.now, slot.node_id, f"cloned {original.address[0]} to {slot.address[0]}"
        )
        self.start(index)
        return index

    def forge(self, victim: int, kind: str, variable: str) -> None:
        """Send node *victim* one forged datagram, signed with the cluster's keys: a claim
        about its own current origin it never made (``base``, ``op``, ``mark``), an
        impersonation of one of its peers with a higher incarnation (``impersonate``),
        or a barrier start from a sender that never announced itself (``barrier``)."""
        slot = self.slots[victim]
        node = slot.node
        if node is None:
            return
        own = node.origin
        mark = node.counters[variable].watermark(own) if variable in node.counters else 0
        encoder = wire.Encoder(LIAR, self.settings.keys, int(self.now * 1_000_000) + 1)
        if kind == "base":
            payloads = encoder.bases([BaseEntry(variable, own, NONCE_MAX, 2**62)])
        elif kind == "op":
            payloads = encoder.op_batch([OpGroup(variable, own, ((mark + 1, 7), (mark + 2, -3)))])
        elif kind == "mark":
            digest = VariableDigest(variable, ((own, mark + 5),))
            payloads = encoder.announce(Mode.WORK, node.epoch, None, [digest])
        elif kind == "impersonate":
            others = [s for s in self.slots if s.node is not None and s.node_id != slot.node_id]
            if not others:
                return
            target = others[0].origin
            fake = wire.Encoder(Origin(target.node_id, target.incarnation + 1), self.settings.keys)
            payloads = fake.announce(Mode.WORK, node.epoch, None, [])
        else:
            stranger = wire.Encoder(Origin("stranger", 1), self.settings.keys)
            payloads = [stranger.sync(SyncStart(BarrierId(0, "stranger", 1)))]
        self.stats.forgeries += 1
        self.trace.step(self.now, "sim", f"forge {kind} {variable} to {slot.node_id}")
        for payload in payloads:
            self.network.send(LIAR_ADDRESS, payload, slot.address, self.now)

    def crash(self, index: int) -> None:
        """Kill node *index* between steps: it loses only what was never synced."""
        slot = self.slots[index]
        assert slot.node is not None, f"{slot.node_id} is already down"
        lost = slot.disk.crash()
        self.stats.crashes += 1
        self._down(slot)
        self.trace.step(self.now, slot.node_id, f"crash (lost {lost} unsynced records)")

    def crash_in_next_flush(self, index: int) -> None:
        """Kill node *index* in its next flush that writes records, before the sync."""
        slot = self.slots[index]
        assert slot.node is not None, f"{slot.node_id} is down"
        slot.crash_mid_flush = True

    def _down(self, slot: Slot) -> None:
        slot.node = None
        slot.stepper = None
        slot.writing = None
        slot.crash_mid_flush = False
        slot.timer = None
        slot.timer_version += 1
        self.network.detach(slot.address)

    # commands -----------------------------------------------------------
    def add(self, index: int, variable: str, delta: int) -> None:
        """Ask node *index* to add; the ledger acknowledges it when AddApplied comes."""
        self.add_batch(index, [(variable, delta)])

    def add_batch(self, index: int, adds: list[tuple[str, int]]) -> None:
        """Several ``add`` requests to node *index* at one instant, taken by one step.

        The node then sends their ops together, which must still fit
        ``DATAGRAM_BYTES_MAX`` per datagram.
        """
        what = "add " + ", ".join(f"{variable} {delta}" for variable, delta in adds)
        for variable, delta in adds:
            self.stats.adds_called += 1
            self._request(index, Add(variable, (delta,)), (variable, delta))
        self._kick(self.slots[index], what)

    def create(self, index: int, variable: str) -> None:
        self.stats.creates += 1
        self._request(index, Create(variable))
        self._kick(self.slots[index], f"create {variable}")

    def delete(self, index: int, variable: str) -> None:
        self.stats.deletes += 1
        self._request(index, Delete(variable), Deleting(variable))
        self._kick(self.slots[index], f"delete {variable}")

    def start_sync(self, index: int) -> None:
        self.stats.syncs_started += 1
        self._request(index, StartSync())
        self._kick(self.slots[index], "start_sync")

    def _request(self, index: int, request: Request, add: Token = None) -> None:
        self.node(index)
        stepper = self.slots[index].stepper
        assert stepper is not None
        stepper.offer(request, add)

    def _kick(self, slot: Slot, what: str) -> None:
        """Step *slot* now, unless it is writing: then its inputs wait for the disk."""
        if slot.writing is None:
            self._step(slot, what)

    # stepping -----------------------------------------------------------
    def run_until(self, until: float) -> None:
        """Take every step due at or before *until*, then set the clock to *until*."""
        network = self.network
        timers = self._timers
        slots = self.slots
        while True:
            while timers and timers[0][2] != slots[timers[0][1]].timer_version:
                heapq.heappop(timers)
            t_net = network.next_time()
            t_timer = timers[0][0] if timers else None
            if t_net is not None and (t_timer is None or t_net <= t_timer):
                if t_net > until:
                    break
                self._deliver()
            elif t_timer is not None:
                if t_timer > until:
                    break
                self._wake()
            else:
                break
        if until > self.clock.now:
            self.clock.advance_to(until)

    def _advance(self, instant: float) -> None:
        if instant > self.clock.now:
            self.clock.advance_to(instant)
            self._same_instant_steps = 0
        else:
            self._same_instant_steps += 1
            if self._same_instant_steps > SAME_INSTANT_STEPS_MAX:
                raise InvariantViolation(
                    f"livelock: {SAME_INSTANT_STEPS_MAX} steps without time moving at "
                    f"t={self.clock.now!r}"
                )

    def _deliver(self) -> None:
        popped = self.network.pop()
        if popped is None:
            return
        deliver_at, delivery = popped
        self._advance(deliver_at)
        slot = self._by_address[delivery.destination]
        assert slot.stepper is not None, "network delivered to a detached address"
        dropped = slot.stepper.offer_datagram(delivery.payload, delivery.source, delivery.multicast)
        if dropped is not None:
            self.stats.dropped_inbox += 1
        self._kick(slot, f"recv {delivery.source[0]} {len(delivery.payload)}B")

    def _wake(self) -> None:
        """A slot's wake-up: its disk finished a write, inputs wait, or its timer is due."""
        deadline, index, _ = heapq.heappop(self._timers)
        slot = self.slots[index]
        stepper = slot.stepper
        assert stepper is not None
        self._advance(deadline)
        slot.timer = None
        slot.timer_version += 1
        if slot.writing is not None:
            writing, slot.writing = slot.writing, None
            self._complete(slot, writing.flush, writing.what, writing.touched, writing.full)
            return  # what waited meanwhile makes the slot due now: the next wake-up
        requests, datagrams = stepper.waiting
        if requests or datagrams:
            self._step(slot, f"step {requests} requests {datagrams} datagrams")
            return
        idle = self._step(slot, "timer")
        if idle and slot.timer is not None and slot.timer <= self.now:
            slot.idle_fires += 1
            if slot.idle_fires >= IDLE_TIMER_FIRES_MAX:
                raise InvariantViolation(
                    f"livelock: after handle_timer(now={self.now!r}) {slot.node_id} did "
                    f"nothing and get_timer() still returns {slot.timer!r} <= now, "
                    f"{slot.idle_fires} times in a row (the driver would spin)"
                )
        else:
            slot.idle_fires = 0

    def _call(self, slot: Slot, what: str, fn: Callable[..., T], *args: object) -> T:
        """Feed one input to a node; an exception out of it is a failed run."""
        try:
            return fn(*args)
        except Exception as error:
            self.trace.step(self.now, slot.node_id, f"{what} -> raised {type(error).__name__}")
            raise InvariantViolation(
                f"{slot.node_id} raised {type(error).__name__} on '{what}' at "
                f"t={self.now!r}: {error}"
            ) from error

    # the step and its flush: persist, answer, send, report ---------------------
    def _step(self, slot: Slot, what: str) -> bool:
        """One step of the daemon's `Stepper` on *slot*; True if it did nothing."""
        stepper = slot.stepper
        assert stepper is not None
        requests, datagrams = stepper.waiting
        if requests + datagrams > 1:
            self.stats.steps_batched += 1
        self.stats.step_inputs_max = max(self.stats.step_inputs_max, requests + datagrams)
        flush = self._call(slot, what, stepper.step, self.now)
        return self._write(slot, flush, what, {}, full=False)

    def _write(
        self,
        slot: Slot,
        flush: Flush[Token],
        what: str,
        touched: dict[str, None],
        full: bool,
    ) -> bool:
        """Write the flush's records; complete it now, or when the disk is done."""
        if flush.records:
            slot.disk.write(flush.records)
            if slot.crash_mid_flush:
                slot.disk.crash()
                self.stats.crashes += 1
                self.stats.crashes_mid_flush += 1
                self._down(slot)
                self.trace.step(
                    self.now,
                    slot.node_id,
                    f"{what} -> r{len(flush.records)} d0 e0 crash mid-flush: written, not synced",
                )
                return False
            low, high = self._write_s
            if high > 0:
                done_at = self.now + self._disk_rng.uniform(low, high)
                slot.writing = Writing(flush, what, touched, full, done_at)
                self._rearm(slot)
                return False
        return self._complete(slot, flush, what, touched, full)

    def _complete(
        self,
        slot: Slot,
        flush: Flush[Token],
        what: str,
        touched: dict[str, None],
        full: bool,
    ) -> bool:
        """Sync, answer, send, report; re-arm the slot; check the node. True if idle.

        Traces the step as one line, ``<what> -> r<records> d<datagrams> e<events>``.
        """
        node = slot.node
        assert node is not None
        trace = self.trace
        details: list[str] = []
        touched = dict(touched)
        records, datagrams, events = flush.records, flush.datagrams, flush.events
        try:
            if records:
                for answer in flush.answers:
                    if isinstance(answer.token, Deleting) and answer.result is True:
                        self._allow_grave(records, answer.token.variable)
                check_durable(slot.disk.sync(), slot.origin, self.ledger)
                for record in records:
                    variable = getattr(record, "variable", None)
                    if variable is not None:
                        touched[variable] = None
                if trace.keep:
                    details.extend(f"  persist {record}" for record in records)
            for answer in flush.answers:
                if answer.error is not None:
                    raise InvariantViolation(
                        f"{slot.node_id} refused a request on '{what}' at t={self.now!r}: "
                        f"{type(answer.error).__name__}: {answer.error}"
                    )
                if isinstance(answer.result, Ticket) and isinstance(answer.token, tuple):
                    self._pending[(slot.index, slot.boot, answer.result.number)] = answer.token
            for datagram in datagrams:
                self.network.send(slot.address, datagram.payload, datagram.destination, self.now)
                trace.payload(datagram.payload)
                if trace.keep:
                    where = datagram.destination[0] if datagram.destination else "*"
                    details.append(f"  send {where} {len(datagram.payload)}B")
            for event in events:
                if trace.keep:
                    details.append(f"  event {event}")
                variable = getattr(event, "variable", None)
                if variable is not None:
                    touched[variable] = None
                if isinstance(event, AddApplied):
                    self._acknowledge(slot, event)
                elif isinstance(event, SyncFinished) and event.initiator == slot.node_id:
                    self.barriers.append(event)
                    if event.result == "completed":
                        self.stats.barriers_completed += 1
                    else:
                        self.stats.barriers_aborted += 1
        finally:
            names = "".join(f" {type(event).__name__}" for event in events)
            trace.step(
                self.now,
                slot.node_id,
                f"{what} -> r{len(records)} d{len(datagrams)} e{len(events)}{names}",
            )
            for line in details:
                trace.detail(line)
        self._rearm(slot)
        log_len = node.ops_in_log()
        if log_len > self.stats.log_len_max:
            self.stats.log_len_max = log_len
        slot.steps += 1
        if self.check_steps:
            full = full or slot.steps % self.full_check_every == 0
            self._check_node(slot, node, touched, full)
        return not (records or datagrams or events)

    def _rearm(self, slot: Slot) -> None:
        """Wake *slot* when its disk is done, now if inputs wait, else at its timer."""
        node, stepper = slot.node, slot.stepper
        assert node is not None and stepper is not None
        if slot.writing is not None:
            wake = slot.writing.done_at
        elif stepper.queued:
            wake = self.now
        else:
            wake = node.get_timer()
        if wake != slot.timer:
            slot.timer = wake
            slot.timer_version += 1
            heapq.heappush(self._timers, (wake, slot.index, slot.timer_version))

    def _allow_grave(self, records: list[Record], variable: str) -> None:
        """A delete of *variable* succeeded in this step: the grave it wrote may bury
        what it names (its node's cut), and no grave anywhere more than all such."""
        for record in records:
            if isinstance(record, Buried) and record.variable == variable:
                self.ledger.allow(variable, record.marks)

    def _acknowledge(self, slot: Slot, event: AddApplied) -> None:
        pending = self._pending.pop((slot.index, slot.boot, event.ticket), None)
        key = (event.variable, event.origin, event.nonce)
        if pending is None:
            raise InvariantViolation(
                f"stray ack: {slot.node_id} acknowledged {describe(key)} for ticket "
                f"{event.ticket}, which no add() of this boot returned"
            )
        variable, delta = pending
        self.ledger.acknowledge(event, variable, delta, slot.disk, slot.origin, self.now)
        self.stats.adds_acked += 1

    # invariants ---------------------------------------------------------
    def _check_node(self, slot: Slot, node: Node, touched: dict[str, None], full: bool) -> None:
        values = slot.values
        for variable in node.variables():
            if full or variable in touched:
                values[variable] = check_variable(
                    node, slot.node_id, variable, slot.disk, self.ledger
                )
            else:
                value = node.value(variable)
                if value is None or value != values.get(variable):
                    values[variable] = check_variable(
                        node, slot.node_id, variable, slot.disk, self.ledger
                    )

    def check_all(self) -> None:
        """Scan every variable of every live node (cheap enough now and then). A node
        whose disk is still writing runs ahead of its disk, as the daemon's does (and
        shows nothing of it yet): it is checked when the write completes."""
        for slot in self.slots:
            if slot.node is not None and slot.writing is None:
                self._check_node(slot, slot.node, {}, full=True)
                check_summary(slot.node, slot.node_id)

    # heal and convergence -------------------------------------------------
    def heal(self) -> None:
        """End every fault: no loss, no cuts, no clogs, every node up (restarted as it was)."""
        self.trace.step(self.now, "sim", "heal")
        self.network.heal()
        for slot in self.slots:
            if slot.node is None:
                self.start(slot.index)

    def convergence_gap(self) -> str | None:
        """None when all live nodes agree on the sum of the acknowledged ops."""
        return convergence_gap(
            [(slot.node_id, slot.node) for slot in self.slots if slot.node is not None],
            self.ledger,
        )

    def await_convergence(self, bound_s: float, check_every_s: float = 0.01) -> float:
        """Run until converged; return the virtual time of convergence, or raise."""
        deadline = self.now + bound_s
        gap = self.convergence_gap()
        while gap is not None:
            if self.now >= deadline:
                raise InvariantViolation(f"no convergence {bound_s:g} s after heal: {gap}")
            self.run_until(min(deadline, self.now + check_every_s))
            gap = self.convergence_gap()
        self.check_all()
        lost = self.ledger.undurable_acked([slot.disk for slot in self.slots])
        if lost:
            raise InvariantViolation(
                f"acknowledged ops on no disk at all: {', '.join(map(describe, lost[:5]))}"
            )
        self.trace.step(self.now, "sim", "converged")
        return self.now

    def await_barrier(self, index: int, bound_s: float, attempts: int = 3) -> SyncFinished:
        """Start a barrier at node *index* and run until one completes; raise if none does.

        Meant for a healed, converged cluster: a barrier may abort (say, it met one that
        a peer started), so it is retried up to *attempts* times within *bound_s*.
        """
        deadline = self.now + bound_s
        reasons: list[str] = []
        for _ in range(attempts):
            if self.slots[index].node is None:
                break
            seen = len(self.barriers)
            self.start_sync(index)
            while len(self.barriers) == seen and self.now < deadline:
                self.run_until(min(deadline, self.now + 0.01))
            if len(self.barriers) == seen:
                break
            finished = self.barriers[-1]
            if finished.result == "completed":
                return finished
            reasons.append(finished.reason or finished.result)
        raise InvariantViolation(
            f"no barrier completed {bound_s:g} s after heal with {len(self.live())} nodes up "
            f"(initiator {node_id_of(index)}; aborted: {reasons or 'none finished'})"
        )
