"""The node, driven by hand: a few nodes wired by an in-test delivery loop.

`Lan` plays driver and network at once. After every input it flushes the node in the
driver's order (records, then datagrams, then events), delivers every datagram at once
unless a drop rule says otherwise, and jumps the clock from one ``get_timer()`` to the
next. On the way it checks what every test relies on:

- a node never puts an op (or a base) on the wire before handing it out as a record;
- an `AddApplied` names an op that is already on disk;
- after ``handle_timer(now)``, ``get_timer()`` is later than ``now`` (no timer spin).

The only randomness is `random.Random` streams seeded per node and per test.
"""

from __future__ import annotations

import hashlib
import random
from collections import deque
from collections.abc import Callable, Iterable
from typing import TypeVar

import pytest

from crdtd.core import reports, wire
from crdtd.core.barrier_io import Fold
from crdtd.core.events import (
    AddApplied,
    DatagramRejected,
    Event,
    GapRepaired,
    IdentityConflict,
    PeerJoined,
    PeerLost,
    SyncFinished,
    SyncStarted,
    ValueChanged,
    VariableAdded,
    VerifyFinished,
)
from crdtd.core.ids import INT64_MAX, Address, InvalidInput, Origin
from crdtd.core.messages import (
    Announce,
    Bases,
    Message,
    NackRange,
    OpBatch,
    OpGroup,
    SyncCommit,
    SyncJoin,
    VariableDigest,
    VariableReport,
)
from crdtd.core.modes import Mode
from crdtd.core.node import Datagram, Node
from crdtd.core.records import (
    BaseFolded,
    EpochAdvanced,
    IncarnationStarted,
    OpRecorded,
    OpsRecorded,
    Record,
    VariableCreated,
)
from crdtd.core.repair import retry_after
from crdtd.core.settings import Key, Settings, pace
from crdtd.core.step import Stepper
from crdtd.core.view import node_state

START = 12_345.678  # a loop.time()-like start, so deadlines are inexact floats
PORT = 7000

E = TypeVar("E")

Drop = Callable[[str, str, Message], bool]
"""(sender id, receiver id, message) -> True to lose that datagram."""


def address_of(node_id: str) -> Address:
    return (f"10.0.0.{ord(node_id[0])}", PORT)


class Lan:
    """Nodes, their disks and event logs, and an immediate, optionally lossy, network."""

    def __init__(
        self,
        node_ids: Iterable[str],
        settings: Settings | None = None,
        seed: int = 0,
        now: float = START,
    ) -> None:
        self.now = now
        self.settings = settings or Settings()
        self.seed = seed
        self.nodes: dict[str, Node] = {}
        self.disk: dict[str, list[Record]] = {}
        self.events: dict[str, list[Event]] = {}
        self.by_address: dict[Address, str] = {}
        self.cut: set[tuple[str, str]] = set()
        self.drop: Drop | None = None
        self.queue: deque[tuple[str, str, bytes]] = deque()
        self.delivered = 0
        self.timer_calls = 0
        self.applied_in: dict[tuple[str, int], Mode] = {}  # (node, ticket) -> mode then
        for node_id in node_ids:
            self.disk[node_id] = []
            self.events[node_id] = []
            self.by_address[address_of(node_id)] = node_id
            self.nodes[node_id] = self._build(node_id, ())

    def _build(self, node_id: str, records: Iterable[Record]) -> Node:
        rng = random.Random(f"{self.seed}/node/{node_id}")
        return Node(Origin(node_id, 1), self.settings, rng, self.now, records=records)

    def __getitem__(self, node_id: str) -> Node:
        return self.nodes[node_id]

    # --- the driver ---------------------------------------------------------------

    def flush(self, node_id: str) -> None:
        """Persist, then send, then report: a `Flush`, in the order every owner keeps."""
        node = self.nodes[node_id]
        flush = Stepper[None](node).flush()
        self.disk[node_id].extend(flush.records)
        for datagram in flush.datagrams:
            self._check_persisted(node_id, datagram)
            self._send(node_id, datagram)
        for event in flush.events:
            if isinstance(event, AddApplied):
                op = OpRecorded(event.variable, event.origin, event.nonce, 0)
                assert self._on_disk(node_id, op), f"{event} reported before it was durable"
                self.applied_in[(node_id, event.ticket)] = node.mode
            self.events[node_id].append(event)

    def _send(self, sender: str, datagram: Datagram) -> None:
        if datagram.destination is None:
            receivers = [node_id for node_id in self.nodes if node_id != sender]
        else:
            receivers = [self.by_address[datagram.destination]]
        for receiver in receivers:
            self.queue.append((sender, receiver, datagram.payload))

    def deliver(self) -> None:
        while self.queue:
            sender, receiver, payload = self.queue.popleft()
            if receiver not in self.nodes or (sender, receiver) in self.cut:
                continue
            if self.drop is not None:
                message = wire.decode(payload, self.settings.keys).message
                if self.drop(sender, receiver, message):
                    continue
            self.delivered += 1
            self.nodes[receiver].receive_datagram(payload, address_of(sender), self.now)
            self.flush(receiver)

    def settle(self) -> None:
        for node_id in list(self.nodes):
            self.flush(node_id)
        self.deliver()

    def advance(self, until: float) -> None:
        """Run every timer due up to *until*, in time order, then set the clock there."""
        self.settle()
        while True:
            due = min(node.get_timer() for node in self.nodes.values())
            if due > until:
                break
            self.now = max(self.now, due)
            for node_id, node in list(self.nodes.items()):
                if node.get_timer() <= self.now:
                    node.handle_timer(self.now)
                    self.timer_calls += 1
                    assert node.get_timer() > self.now, (node_id, node.get_timer(), self.now)
                    self.flush(node_id)
            self.deliver()
        self.now = until

    def run_for(self, seconds: float) -> None:
        self.advance(self.now + seconds)

    # --- helpers for tests -----------------------------------------------------------

    def isolate(self, node_id: str, incoming: bool = True, outgoing: bool = True) -> None:
        for other in self.nodes:
            if other != node_id:
                if outgoing:
                    self.cut.add((node_id, other))
                if incoming:
                    self.cut.add((other, node_id))

    def heal(self) -> None:
        self.cut.clear()
        self.drop = None

    def join(self, node_id: str) -> Node:
        """Start a brand-new node now (empty disk)."""
        self.disk[node_id] = []
        self.events[node_id] = []
        self.by_address[address_of(node_id)] = node_id
        self.nodes[node_id] = self._build(node_id, ())
        return self.nodes[node_id]

    def restart(self, node_id: str) -> Node:
        """Rebuild a node from what is on its disk (the same incarnation)."""
        self.nodes[node_id] = self._build(node_id, list(self.disk[node_id]))
        return self.nodes[node_id]

    def of_type(self, node_id: str, kind: type[E]) -> list[E]:
        return [event for event in self.events[node_id] if isinstance(event, kind)]

    def values(self, variable: str) -> dict[str, int | None]:
        return {node_id: node.value(variable) for node_id, node in self.nodes.items()}

    def _on_disk(self, node_id: str, op: OpRecorded) -> bool:
        for record in self.disk[node_id]:
            if not isinstance(record, OpRecorded | OpsRecorded | BaseFolded):
                continue
            if (record.variable, record.origin) != (op.variable, op.origin):
                continue
            if isinstance(record, OpRecorded) and record.nonce == op.nonce:
                return True
            in_run = isinstance(record, OpsRecorded) and record.first <= op.nonce
            if in_run and op.nonce - record.first < len(record.deltas):
                return True
            if isinstance(record, BaseFolded) and op.nonce <= record.upto:
                return True
        return False

    def _check_persisted(self, node_id: str, datagram: Datagram) -> None:
        message = wire.decode(datagram.payload, self.settings.keys).message
        created = {r.variable for r in self.disk[node_id] if isinstance(r, VariableCreated)}
        if isinstance(message, OpBatch):
            for group in message.groups:
                assert group.variable in created, f"{node_id} sent {group.variable} unrecorded"
                for nonce, delta in group.ops:
                    op = OpRecorded(group.variable, group.origin, nonce, delta)
                    assert self._on_disk(node_id, op), f"{node_id} sent {op} before persisting"
        elif isinstance(message, Bases):
            for entry in message.entries:
                folded = BaseFolded(entry.variable, entry.origin, entry.upto, entry.total)
                assert folded in self.disk[node_id], f"{node_id} sent {folded} unrecorded"


def lan_of(*node_ids: str, settings: Settings | None = None, seed: int = 0) -> Lan:
    """A Lan whose nodes have already heard each other's first announce."""
    lan = Lan(node_ids, settings=settings, seed=seed)
    lan.advance(lan.now)
    for node_id, node in lan.nodes.items():
        assert sorted(peer.node_id for peer in node.peers.values()) == sorted(
            set(node_ids) - {node_id}
        )
    return lan


def nonces_added(lan: Lan, node_id: str) -> list[int]:
    return [event.nonce for event in lan.of_type(node_id, AddApplied)]


# --- local adds ---------------------------------------------------------------------


def test_an_add_is_applied_and_add_applied_carries_ticket_nonce_and_value() -> None:
    node = Node(Origin("a", 7), Settings(), random.Random("t/a"), START)
    first = node.add("x", 5, START)
    second = node.add("x", -2, START)
    events = node.events()
    assert node.value("x") == 3
    applied = [event for event in events if isinstance(event, AddApplied)]
    assert applied == [
        AddApplied(first, "x", Origin("a", 7), 1, 5),
        AddApplied(second, "x", Origin("a", 7), 2, 3),
    ]
    assert first != second
    assert VariableAdded("x") in events
    assert [e for e in events if isinstance(e, ValueChanged)] == [
        ValueChanged("x", 5),
        ValueChanged("x", 3),
    ]


def test_an_add_is_recorded_before_the_datagram_that_carries_it_goes_out() -> None:
    node = Node(Origin("a", 1), Settings(), random.Random("t/a"), START)
    ticket = node.add("x", 5, START)

    records = node.records_to_persist()
    datagrams = node.datagrams_to_send()
    events = node.events()

    assert records == [
        IncarnationStarted(1),
        VariableCreated("x"),
        OpRecorded("x", Origin("a", 1), 1, 5),
    ]
    [datagram] = datagrams
    assert datagram.destination is None  # multicast
    message = wire.decode(datagram.payload).message
    assert message == OpBatch((OpGroup("x", Origin("a", 1), ((1, 5),)),))
    assert AddApplied(ticket, "x", Origin("a", 1), 1, 5) in events
    # Everything was handed out once: a second flush has nothing left.
    assert (node.records_to_persist(), node.datagrams_to_send(), node.events()) == ([], [], [])


def test_adds_of_one_step_share_one_batch() -> None:
    node = Node(Origin("a", 1), Settings(), random.Random("t/a"), START)
    node.add("x", 1, START)
    node.add("y", 2, START)
    node.add("x", 3, START)
    node.records_to_persist()
    [datagram] = node.datagrams_to_send()
    assert wire.decode(datagram.payload).message == OpBatch(
        (
            OpGroup("x", Origin("a", 1), ((1, 1), (2, 3))),
            OpGroup("y", Origin("a", 1), ((1, 2),)),
        )
    )


def test_a_node_rebuilt_from_its_records_starts_a_new_incarnation_and_keeps_its_values() -> None:
    lan = lan_of("a", "b")
    for delta in (1, 2, 3):
        lan["a"].add("x", delta, lan.now)
    lan["a"].add("y", 10, lan.now)
    lan.settle()

    rebuilt = lan.restart("a")
    assert rebuilt.value("x") == 6
    assert rebuilt.value("y") == 10
    new = rebuilt.origin
    assert new.node_id == "a" and new.incarnation > 1
    # Replaying records writes nothing new but the incarnation this boot took.
    assert rebuilt.records_to_persist() == [IncarnationStarted(new.incarnation)]
    assert rebuilt.events() == []
    rebuilt.add("x", 4, lan.now)
    rebuilt.add("y", 1, lan.now)
    lan.settle()

    # A new incarnation counts from 1 again: no nonce of the old one is ever reused.
    assert nonces_added(lan, "a") == [1, 2, 3, 1, 1, 1]
    assert [event.origin for event in lan.of_type("a", AddApplied)][-2:] == [new, new]
    assert lan.values("x") == {"a": 10, "b": 10}
    assert lan.values("y") == {"a": 11, "b": 11}
    assert "ops_conflicting" not in lan["b"].stats


def test_an_add_sent_again_with_its_request_id_is_answered_with_the_first_op() -> None:
    """Also after a restart (the `AddNamed` record) and while held in a barrier."""
    lan = lan_of("a", "b")

    def answers() -> list[tuple[str, int, int]]:
        """(variable, nonce, value) of each add answered since the last call, in order."""
        lan.settle()
        applied = lan.of_type("a", AddApplied)
        lan.events["a"].clear()
        return [(event.variable, event.nonce, event.value) for event in applied]

    lan["a"].add("x", 5, lan.now, request_id="r1")
    lan["b"].add("x", 100, lan.now)  # the repeat still answers the value the first saw
    lan.settle()
    lan["a"].add("x", 5, lan.now, request_id="r1")
    assert answers() == [("x", 1, 5), ("x", 1, 5)]
    rebuilt = lan.restart("a")
    rebuilt.add("x", 5, lan.now, request_id="r1")
    rebuilt.add("x", 5, lan.now, request_id="r2")
    # r1 is answered as its first boot answered; r2 is op 1 of the new incarnation.
    assert answers() == [("x", 1, 5), ("x", 1, 110)]
    lan.cut.add(("b", "a"))  # keep a in its barrier for a moment
    rebuilt.start_sync(lan.now)
    assert rebuilt.mode is Mode.SYNC
    rebuilt.add("x", 1, lan.now, request_id="r3")
    rebuilt.add("x", 1, lan.now, request_id="r3")
    lan.heal()
    lan.run_for(1.0)
    assert answers() == [("x", 2, 111), ("x", 2, 111)]
    assert lan.values("x") == {"a": 111, "b": 111}
    assert rebuilt.stats["adds_repeated"] == 1
    with pytest.raises(InvalidInput, match="already used for another add"):
        rebuilt.add("y", 5, lan.now, request_id="r1")
    with pytest.raises(InvalidInput, match="already used for another add"):
        rebuilt.add("x", 6, lan.now, request_id="r1")
    assert rebuilt.variables() == ["x"]


def test_a_node_rebuilt_from_compacted_records_continues_above_its_base() -> None:
    me = Origin("a", 1)
    records: list[Record] = [
        IncarnationStarted(1),
        VariableCreated("x"),
        BaseFolded("x", me, 3, 30),
        OpRecorded("x", me, 4, 4),
        OpRecorded("x", Origin("b", 1), 1, 100),
        EpochAdvanced(2),
    ]
    node = Node(me, Settings(), random.Random("t/a"), START, records=records)
    assert (node.value("x"), node.before("x"), node.epoch) == (134, 30, 2)
    assert node.origin.incarnation > me.incarnation  # it started 1 before
    node.add("x", 1, START)
    [applied] = [e for e in node.events() if isinstance(e, AddApplied)]
    assert (applied.origin, applied.nonce, applied.value) == (node.origin, 1, 135)


def test_a_node_rebuilt_after_a_barrier_keeps_epoch_bases_and_nonces() -> None:
    lan = lan_of("a", "b")
    lan["a"].add("x", 1, lan.now)
    lan["a"].add("x", 1, lan.now)
    lan["a"].start_sync(lan.now)
    lan.run_for(1.0)
    assert lan["a"].ops_in_log() == 0

    rebuilt = lan.restart("a")
    assert (rebuilt.epoch, rebuilt.before("x"), rebuilt.value("x")) == (1, 2, 2)
    rebuilt.add("x", 5, lan.now)
    lan.settle()
    assert lan.of_type("a", AddApplied)[-1].origin == rebuilt.origin
    assert nonces_added(lan, "a")[-1] == 1
    assert lan.values("x") == {"a": 7, "b": 7}


# --- replication ----------------------------------------------------------------------


def test_adds_on_every_node_reach_every_node() -> None:
    lan = lan_of("a", "b", "c", "d")
    for i, node_id in enumerate("abcd"):
        lan[node_id].add("x", 10**i, lan.now)
        lan[node_id].add(f"only-{node_id}", 1, lan.now)
    lan.settle()
    assert set(lan.values("x").values()) == {1111}
    for node in lan.nodes.values():
        assert node.variables() == ["only-a", "only-b", "only-c", "only-d", "x"]


def test_duplicated_datagrams_do_not_change_values() -> None:
    a = Node(Origin("a", 1), Settings(), random.Random("t/a"), START)
    b = Node(Origin("b", 1), Settings(), random.Random("t/b"), START)
    payloads = []
    for delta in (5, -7, INT64_MAX):
        a.add("x", delta, START)
        a.records_to_persist()
        payloads += [d.payload for d in a.datagrams_to_send()]
    for payload in [*payloads, *reversed(payloads), *payloads]:
        b.receive_datagram(payload, address_of("a"), START)
    assert b.value("x") == a.value("x") == 5 - 7 + INT64_MAX
    assert b.stats["ops_applied"] == 3
    assert b.stats["ops_duplicate"] == 6
    assert [e.value for e in b.events() if isinstance(e, ValueChanged)] == [5, -2, INT64_MAX - 2]


def test_a_lost_last_op_is_repaired_once_a_tail_digest_reveals_it() -> None:
    lan = lan_of("a", "b")
    lan["a"].add("x", 1, lan.now)
    lan["a"].add("y", 1, lan.now)
    lan.settle()
    lan.run_for(0.2)  # that burst's tail is over
    tails: list[Announce] = []

    def watch(src: str, dst: str, message: Message) -> bool:
        if src == "a" and isinstance(message, Announce):
            tails.append(message)
        return src == "a" and isinstance(message, OpBatch) and not tails

    lan.drop = watch  # b loses a's next batch, but none of its digests
    lan["a"].add("x", 2, lan.now)
    lan.settle()
    assert lan.values("x") == {"a": 3, "b": 1}

    lan.run_for(0.05)  # far from a's next announce (0.9..1.1 s after the start)

    assert lan.values("x") == {"a": 3, "b": 3}
    assert lan.of_type("b", GapRepaired) == [GapRepaired("x", Origin("a", 1), 2, 2)]
    # Only what that burst changed, with only a's own watermark.
    assert tails[0].digests == (VariableDigest("x", ((lan["a"].origin, 2),)),)
    lan.run_for(0.2)
    train = len(Settings().tail_digests_s)
    assert len(tails) == train
    assert lan["a"].stats["tail_digests_sent"] == 2 * train  # the first burst's too
    lan.run_for(1.0)
    assert lan["a"].stats["tail_digests_sent"] == 2 * train  # none without writes


def test_a_lost_last_op_is_repaired_by_nack_once_an_announce_reveals_it() -> None:
    lan = lan_of("a", "b", settings=Settings(tail_digests_s=()))  # no tail digests
    lan["a"].add("x", 1, lan.now)
    lan.settle()
    lan.cut.add(("a", "b"))
    lan["a"].add("x", 2, lan.now)
    lan.settle()
    lan.heal()
    assert lan.values("x") == {"a": 3, "b": 1}

    lan.run_for(0.5)  # no announce from a yet: b cannot know
    assert lan["b"].value("x") == 1
    lan.run_for(1.0)  # a's next announce is due within 0.9..1.1 s of the start

    assert lan.values("x") == {"a": 3, "b": 3}
    assert lan.of_type("b", GapRepaired) == [GapRepaired("x", Origin("a", 1), 2, 2)]
    assert lan["b"].stats["nacks_sent"] >= 1
    assert lan["a"].stats["nacks_received"] >= 1
    assert lan["a"].stats["repairs_served"] >= 1


def test_a_hole_seen_from_a_later_op_is_repaired_without_waiting_for_an_announce() -> None:
    lan = lan_of("a", "b", "c", settings=Settings(tail_digests_s=()))  # no tail digests
    lan.drop = lambda src, dst, m: dst == "b" and isinstance(m, OpBatch)
    lan["a"].add("x", 1, lan.now)
    lan["a"].add("y", 1, lan.now)
    lan.settle()
    lan.drop = None
    lan["a"].add("x", 10, lan.now)
    lan.settle()
    assert lan["b"].value("x") == 10

    lan.run_for(0.2)  # well before anyone's next announce
    assert lan.values("x") == {"a": 11, "b": 11, "c": 11}
    assert lan["b"].value("y") is None  # that hole only an announce can reveal
    lan.run_for(1.2)
    assert lan.values("y") == {"a": 1, "b": 1, "c": 1}


def test_a_repair_comes_from_another_holder_when_the_origin_is_silent() -> None:
    lan = lan_of("a", "b", "c")
    lan.cut.add(("a", "c"))
    for delta in (1, 2, 3):
        lan["a"].add("x", delta, lan.now)
    lan.settle()
    lan.isolate("a")  # a goes silent: only b holds a's ops for c
    lan.run_for(2.0)
    assert lan.values("x") == {"a": 6, "b": 6, "c": 6}
    assert lan["b"].stats["repairs_served"] >= 1


def test_a_new_node_catches_up_on_everything_including_folded_ops() -> None:
    lan = lan_of("a", "b")
    for delta in range(1, 6):
        lan["a"].add("x", delta, lan.now)
        lan["b"].add("y", -delta, lan.now)
    lan.settle()
    lan["a"].start_sync(lan.now)
    lan.run_for(0.5)
    lan["a"].add("x", 100, lan.now)
    lan.settle()
    assert lan["a"].before("x") == 15

    lan.join("c")
    lan.run_for(3.0)
    assert lan.values("x") == {"a": 115, "b": 115, "c": 115}
    assert lan.values("y") == {"a": -15, "b": -15, "c": -15}
    assert lan["c"].stats.get("bases_adopted", 0) >= 2


# --- create and local misuse --------------------------------------------------------


def test_create_replicates_and_a_second_create_is_a_no_op() -> None:
    lan = lan_of("a", "b", "c")
    assert lan["a"].create("x", lan.now) is True
    lan.settle()
    assert lan.values("x") == {"a": 0, "b": 0, "c": 0}
    assert VariableAdded("x") in lan.events["b"]

    assert lan["a"].create("x", lan.now) is False
    assert lan["b"].create("x", lan.now) is False
    assert lan["a"].records_to_persist() == []
    assert lan["a"].datagrams_to_send() == []
    assert lan["b"].datagrams_to_send() == []


def test_an_add_to_an_unknown_variable_creates_it_everywhere() -> None:
    lan = lan_of("a", "b")
    lan["b"].add("fresh", 3, lan.now)
    lan.settle()
    assert lan.values("fresh") == {"a": 3, "b": 3}
    assert VariableCreated("fresh") in lan.disk["a"]
    assert lan.of_type("a", VariableAdded) == [VariableAdded("fresh")]


@pytest.mark.parametrize("name", ["", "x" * 65, "a b", "zähler", "a/b"])
def test_a_bad_name_raises_invalid_input_and_changes_nothing(name: str) -> None:
    node = Node(Origin("a", 1), Settings(), random.Random("t/a"), START)
    assert node.records_to_persist() == [IncarnationStarted(1)]
    with pytest.raises(InvalidInput):
        node.create(name, START)
    with pytest.raises(InvalidInput):
        node.add(name, 1, START)
    assert node.variables() == []
    assert (node.records_to_persist(), node.datagrams_to_send()) == ([], [])


@pytest.mark.parametrize("delta", [True, 1.0, "5", None, INT64_MAX + 1, -(2**63) - 1])
def test_a_bad_delta_raises_invalid_input_and_changes_nothing(delta: object) -> None:
    node = Node(Origin("a", 1), Settings(), random.Random("t/a"), START)
    node.records_to_persist()
    with pytest.raises(InvalidInput):
        node.add("x", delta, START)  # type: ignore[arg-type]
    assert node.variables() == []
    assert (node.records_to_persist(), node.datagrams_to_send(), node.events()) == ([], [], [])


def test_add_many_makes_consecutive_ops_answered_by_one_ticket() -> None:
    """A populate step: every delta is an op of its own, on disk before it is sent;
    one AddApplied (the last op) and one ValueChanged stand for the batch."""
    lan = lan_of("a", "b")
    lan["a"].add("x", 100, lan.now)
    lan.settle()
    lan.events["a"].clear()
    ticket = lan["a"].add_many("x", [1, -2, 3], lan.now)
    lan.settle()
    (applied,) = lan.of_type("a", AddApplied)
    assert (applied.ticket, applied.nonce, applied.value) == (ticket, 4, 102)
    assert [e.value for e in lan.of_type("a", ValueChanged)] == [102]
    assert [op[1:] for op in lan["b"].history("x") or []] == [(1, 100), (2, 1), (3, -2), (4, 3)]
    with pytest.raises(InvalidInput):
        lan["a"].add_many("x", [], lan.now)
    with pytest.raises(InvalidInput):
        lan["a"].add_many("x", [1, 2**63], lan.now)
    assert lan["a"].value("x") == 102  # a bad delta anywhere refuses the whole batch


def a_in_a_barrier() -> Lan:
    """x is 1 on a and b; a is in a barrier, kept there while b's datagrams are cut."""
    lan = lan_of("a", "b")
    lan["a"].add("x", 1, lan.now)
    lan.settle()
    lan.cut.add(("b", "a"))
    lan["a"].start_sync(lan.now)
    assert lan["a"].mode is Mode.SYNC
    return lan


def test_add_many_during_a_barrier_holds_every_op() -> None:
    lan = a_in_a_barrier()
    ticket = lan["a"].add_many("x", [2, 3], lan.now)
    assert lan["a"].value("x") == 1
    lan.heal()
    lan.run_for(1.0)
    assert lan.values("x") == {"a": 6, "b": 6}
    assert any(e.ticket == ticket and e.value == 6 for e in lan.of_type("a", AddApplied))


def test_add_each_answers_every_add_with_its_own_op_and_value() -> None:
    """Adds a step took together: one run on disk and on the wire, one ValueChanged,
    and each ticket answered as if its add had been applied alone."""
    lan = lan_of("a", "b")
    lan["a"].add("x", 100, lan.now)
    lan.settle()
    lan.events["a"].clear()
    tickets = lan["a"].add_each("x", [1, -2, 3], lan.now)
    lan.settle()
    applied = lan.of_type("a", AddApplied)
    assert [(e.ticket, e.nonce, e.value) for e in applied] == [
        (tickets[0], 2, 101),
        (tickets[1], 3, 99),
        (tickets[2], 4, 102),
    ]
    assert [e.value for e in lan.of_type("a", ValueChanged)] == [102]
    assert [op[1:] for op in lan["b"].history("x") or []] == [(1, 100), (2, 1), (3, -2), (4, 3)]
    with pytest.raises(InvalidInput):
        lan["a"].add_each("x", [1, 2**63], lan.now)
    assert lan["a"].value("x") == 102


def test_add_each_during_a_barrier_holds_every_add_with_its_ticket() -> None:
    lan = a_in_a_barrier()
    tickets = lan["a"].add_each("x", [2, 3], lan.now)
    assert lan["a"].value("x") == 1
    lan.heal()
    lan.run_for(1.0)
    assert lan.values("x") == {"a": 6, "b": 6}
    answered = {e.ticket: e.value for e in lan.of_type("a", AddApplied)}
    assert (answered[tickets[0]], answered[tickets[1]]) == (3, 6)


def test_adding_beyond_variables_max_raises_invalid_input() -> None:
    node = Node(Origin("a", 1), Settings(variables_max=2), random.Random("t/a"), START)
    node.add("x", 1, START)
    node.create("y", START)
    with pytest.raises(InvalidInput, match="variables_max"):
        node.add("z", 1, START)
    node.add("x", 1, START)  # known variables still take adds
    assert node.variables() == ["x", "y"]


def test_adds_held_during_a_barrier_respect_variables_max() -> None:
    lan = lan_of("a", "b", settings=Settings(variables_max=2))
    lan["a"].add("x", 1, lan.now)
    lan.settle()
    lan.cut.add(("b", "a"))  # keep a in its barrier for a moment
    lan["a"].start_sync(lan.now)
    assert lan["a"].mode is Mode.SYNC
    lan["a"].add("y", 1, lan.now)
    lan["a"].add("y", 1, lan.now)  # a variable already held counts once
    with pytest.raises(InvalidInput, match="variables_max"):
        lan["a"].add("z", 1, lan.now)
    lan.heal()
    lan.run_for(1.0)
    assert lan["a"].variables() == lan["b"].variables() == ["x", "y"]
    assert lan.values("y") == {"a": 2, "b": 2}


def test_a_held_name_that_a_peer_brings_during_the_barrier_counts_once() -> None:
    """Held adds' new names are indexed (O(1) per add): a name a peer creates while the
    add is held stops counting as new, so it is not counted twice against the limit."""
    lan = lan_of("a", "b", settings=Settings(variables_max=4))
    lan["a"].add("x", 1, lan.now)
    lan.settle()
    lan.cut.add(("b", "a"))  # keep a in its barrier, and y away from a for now
    lan["b"].add("y", 1, lan.now)
    lan.disk["b"].extend(lan["b"].records_to_persist())
    y_from_b = [datagram.payload for datagram in lan["b"].datagrams_to_send()]
    lan["a"].start_sync(lan.now)
    assert lan["a"].mode is Mode.SYNC
    lan["a"].add("y", 1, lan.now)  # held; y is new here
    for payload in y_from_b:
        lan["a"].receive_datagram(payload, address_of("b"), lan.now)
    lan.flush("a")
    assert lan["a"].variables() == ["x", "y"]
    lan["a"].add("z", 1, lan.now)
    lan["a"].add("w", 1, lan.now)  # x, y, z, w: y counted once
    with pytest.raises(InvalidInput, match="variables_max"):
        lan["a"].add("v", 1, lan.now)
    with pytest.raises(InvalidInput, match="request_id"):
        lan["a"].add("z", 1, lan.now, request_id="r")
        lan["a"].add("z", 2, lan.now, request_id="r")  # held with another delta
    lan.heal()
    lan.run_for(1.0)
    assert lan["a"].variables() == lan["b"].variables() == ["w", "x", "y", "z"]
    assert lan.values("y") == {"a": 2, "b": 2}
    assert lan.values("z") == {"a": 2, "b": 2}


# --- peer garbage and loops -----------------------------------------------------------


@pytest.mark.parametrize(
    ("payload", "reason"),
    [
        (b"", "malformed"),
        (b"garbage that is not a datagram", "malformed"),
        (b"cR\x09\x01\x00", "unknown_version"),
        (bytes(1401), "oversized"),
    ],
)
def test_a_malformed_datagram_is_counted_and_does_not_raise(payload: bytes, reason: str) -> None:
    node = Node(Origin("a", 1), Settings(), random.Random("t/a"), START)
    node.receive_datagram(payload, ("10.9.9.9", 1), START)
    assert node.stats[f"rejected_{reason}"] == 1
    assert node.events() == [DatagramRejected(reason, ("10.9.9.9", 1))]
    assert node.peers == {}


def test_unsigned_datagrams_are_rejected_by_a_node_with_keys() -> None:
    signed = Node(Origin("a", 1), Settings(keys=(Key("k", b"s"),)), random.Random("t/a"), START)
    plain = Node(Origin("b", 1), Settings(), random.Random("t/b"), START)
    plain.add("x", 1, START)
    plain.records_to_persist()
    for datagram in plain.datagrams_to_send():
        signed.receive_datagram(datagram.payload, address_of("b"), START)
    assert signed.stats["rejected_unauthenticated"] == 1
    assert signed.value("x") is None


def test_a_keyed_cluster_replicates_and_repairs() -> None:
    keyed = Settings(keys=(Key("2025", b"cluster secret"), Key("2024", b"old secret")))
    lan = lan_of("a", "b", "c", settings=keyed)
    lan.cut.add(("a", "b"))
    lan["a"].add("x", 2, lan.now)
    lan.settle()
    lan.heal()
    lan.run_for(2.0)
    assert lan.values("x") == {"a": 2, "b": 2, "c": 2}
    assert not any(key.startswith("rejected") for n in lan.nodes.values() for key in n.stats)


def test_own_looped_back_datagrams_are_ignored() -> None:
    node = Node(Origin("a", 1), Settings(), random.Random("t/a"), START)
    node.add("x", 5, START)
    node.handle_timer(START)  # an announce too
    node.records_to_persist()
    payloads = [datagram.payload for datagram in node.datagrams_to_send()]
    node.events()
    assert len(payloads) == 3  # the announce, its summary, the op batch

    for payload in payloads:
        node.receive_datagram(payload, address_of("a"), START)

    assert node.value("x") == 5
    assert node.peers == {}
    assert "datagrams_received" not in node.stats
    assert node.events() == []
    assert (node.records_to_persist(), node.datagrams_to_send()) == ([], [])


def test_a_copy_of_us_is_a_peer_whose_ops_count_and_a_conflict_once_both_live() -> None:
    node = Node(Origin("a", 2), Settings(), random.Random("t/a"), START)
    twin = wire.Encoder(Origin("a", 1))
    [payload] = twin.op_batch([OpGroup("x", Origin("a", 1), ((1, 1),))])
    node.receive_datagram(payload, ("10.1.1.1", PORT), START)
    assert node.value("x") == 1  # its acknowledged add is not lost
    assert Origin("a", 1) in node.peers
    assert not [e for e in node.events() if isinstance(e, IdentityConflict)]
    [later] = twin.nack([])
    node.receive_datagram(later, ("10.1.1.1", PORT), START + 1.5)
    [conflict] = [e for e in node.events() if isinstance(e, IdentityConflict)]
    assert conflict == IdentityConflict(
        "a", (Origin("a", 1), Origin("a", 2)), ("10.1.1.1", PORT), ours=True
    )
    assert node.conflicts(START + 1.5) == ["a"]


def test_a_lower_incarnation_of_a_known_peer_is_a_peer_of_its_own_whose_ops_count() -> None:
    node = Node(Origin("a", 1), Settings(), random.Random("t/a"), START)
    [new] = wire.Encoder(Origin("b", 5)).nack([])
    [old] = wire.Encoder(Origin("b", 4)).op_batch([OpGroup("x", Origin("b", 4), ((1, 1),))])
    node.receive_datagram(new, address_of("b"), START)
    node.receive_datagram(old, address_of("b"), START)
    assert node.value("x") == 1
    assert sorted(node.peers) == [Origin("b", 4), Origin("b", 5)]
    assert node.conflicts(START) == []  # not yet heard together for long


# --- peers ----------------------------------------------------------------------------


def test_a_silent_peer_is_suspected_then_removed_with_peer_lost() -> None:
    lan = lan_of("a", "b")
    heard_at = lan.now
    lan.isolate("b")
    lan.run_for(2.9)
    assert [view.suspected for view in node_state(lan["a"], lan.now).peers] == [False]

    lan.advance(heard_at + 3.0)
    [view] = node_state(lan["a"], lan.now).peers
    assert view.suspected
    assert abs(view.last_seen_s - 3.0) <= 0.001
    assert lan.of_type("a", PeerLost) == []

    lan.advance(heard_at + 10.0)
    assert lan["a"].peers == {}
    [lost] = lan.of_type("a", PeerLost)
    assert lost.node_id == "b"
    assert lost.silent_s == pytest.approx(10.0)


def test_announces_slow_down_beyond_five_nodes_and_suspicion_waits_as_long() -> None:
    assert [pace(n) for n in (1, 3, 5, 10, 20)] == [1.0, 1.0, 1.0, 2.0, 4.0]
    lan = lan_of(*"abcdefghij")  # ten nodes: pace 2
    assert {node.pace() for node in lan.nodes.values()} == {2.0}
    sent = lan["a"].stats["announces_sent"]
    lan.run_for(20.0)
    # Every 2 s +-10% (each node's own, so each hears about 5 announces a second).
    assert 9 <= lan["a"].stats["announces_sent"] - sent <= 11

    lan.isolate("j")
    j = lan["a"].peers[Origin("j", 1)]
    factor = max(2.0, j.pace_seen)  # our pace, or j's as we heard it if slower
    assert 1.8 <= j.pace_seen <= 2.2
    lan.advance(j.last_seen + 3.0 * factor - 0.01)
    assert not j.suspected  # 3 s would have suspected it
    lan.advance(j.last_seen + 3.0 * factor)
    assert j.suspected
    [view] = [view for view in node_state(lan["a"], lan.now).peers if view.node_id == "j"]
    assert view.forgotten_in_s == pytest.approx(7.0 * factor, abs=0.01)
    # Suspected, it still counts: the others do not speed up (and suspect each other).
    assert lan["a"].pace() == 2.0
    assert [v.node_id for v in node_state(lan["a"], lan.now).peers if v.suspected] == ["j"]
    lan.advance(j.last_seen + 10.0 * factor)
    [lost] = lan.of_type("a", PeerLost)
    assert lost.node_id == "j"
    assert lost.silent_s == pytest.approx(10.0 * factor)
    assert lan["a"].pace() == 1.8


def test_a_peer_that_knows_more_nodes_than_we_do_is_timed_by_its_own_pace() -> None:
    """b hears 14 nodes a does not (a one-way split, say): b announces every 3.2 s,
    past a's own 3 s suspicion; a times b by the gaps it hears between b's summaries."""
    lan = lan_of("a", "b")
    for index in range(14):
        stranger = wire.Encoder(Origin(f"x{index:02d}", 1))
        summary = stranger.summary(Mode.WORK, 0, None, 0, lan["b"].summary_hash())
        address = (f"10.0.1.{index}", PORT)
        lan.by_address[address] = f"x{index:02d}"  # a node outside the Lan: unreachable
        lan["b"].receive_datagram(summary, address, lan.now)
    lan.flush("b")
    assert (lan["a"].pace(), lan["b"].pace()) == (1.0, 3.2)
    suspected = []
    for _ in range(150):
        lan.run_for(0.1)
        suspected.append(lan["a"].peers[Origin("b", 1)].suspected)
    assert lan["a"].peers[Origin("b", 1)].pace_seen > 2.8
    assert not any(suspected[50:])  # once a heard one of b's slow gaps, never
    assert lan.of_type("a", PeerLost) == []


def test_a_suspected_peer_that_speaks_again_is_trusted_again() -> None:
    lan = lan_of("a", "b")
    lan.isolate("b")
    lan.run_for(5.0)
    assert node_state(lan["a"], lan.now).peers[0].suspected
    lan.heal()
    lan.run_for(1.5)
    assert not node_state(lan["a"], lan.now).peers[0].suspected
    assert lan.of_type("a", PeerLost) == []


def test_a_restarted_peer_with_a_new_incarnation_joins_again() -> None:
    lan = lan_of("a", "b")
    fresh = Node(Origin("b", 2), lan.settings, random.Random("t/b2"), lan.now)
    lan.nodes["b"] = fresh
    lan.run_for(1.5)
    assert lan.of_type("a", PeerJoined)[-1] == PeerJoined("b", 2, address_of("b"))
    # The old incarnation is superseded at once (no barrier waits for it), then expires.
    assert not lan["a"].peers[Origin("b", 2)].suspected
    assert lan["a"].peers[Origin("b", 1)].suspected
    lan.run_for(10.0)
    assert list(lan["a"].peers) == [Origin("b", 2)]
    assert lan["a"].conflicts(lan.now) == []


# --- full sync ------------------------------------------------------------------------


def fill(lan: Lan, adds_per_node: int = 3) -> int:
    total = 0
    for i, node_id in enumerate(sorted(lan.nodes)):
        for j in range(adds_per_node):
            delta = (i + 1) * 10 + j
            lan[node_id].add("x", delta, lan.now)
            lan[node_id].add(f"v{j}", 1, lan.now)
            total += delta
    lan.settle()
    return total


def test_a_sync_of_three_nodes_without_loss_completes_and_folds_the_log() -> None:
    lan = lan_of("a", "b", "c")
    total = fill(lan)
    assert lan["a"].ops_in_log() == 18
    ticket = lan["a"].start_sync(lan.now)
    lan.run_for(0.5)

    for node_id, node in lan.nodes.items():
        [finished] = lan.of_type(node_id, SyncFinished)
        assert finished.result == "completed", finished
        assert (finished.epoch, finished.initiator) == (1, "a")
        assert finished.tickets == ((ticket,) if node_id == "a" else ())
        assert lan.of_type(node_id, SyncStarted) == [SyncStarted(1, "a")]
        assert node.mode is Mode.WORK
        assert node.epoch == 1
        assert node.ops_in_log() == 0
        assert (node.before("x"), node.value("x")) == (total, total)
        assert node.before("v0") == 3
        assert EpochAdvanced(1) in lan.disk[node_id]


def test_a_sync_alone_completes() -> None:
    lan = Lan(["a"])
    lan["a"].add("x", 4, lan.now)
    lan["a"].start_sync(lan.now)
    lan.run_for(0.5)
    [finished] = lan.of_type("a", SyncFinished)
    assert finished.result == "completed"
    assert (lan["a"].before("x"), lan["a"].ops_in_log(), lan["a"].epoch) == (4, 0, 1)


def test_writes_during_a_barrier_are_held_and_applied_once_back_in_work() -> None:
    lan = lan_of("a", "b", "c")
    fill(lan, 1)
    ticket_sync = lan["a"].start_sync(lan.now)
    assert lan["a"].mode is Mode.SYNC
    ticket_add = lan["a"].add("x", 1000, lan.now)
    lan.flush("a")
    assert lan.of_type("a", AddApplied)[-1].ticket != ticket_add  # held, not applied
    assert OpRecorded("x", Origin("a", 1), 2, 1000) not in lan.disk["a"]

    lan.run_for(0.5)
    [finished] = lan.of_type("a", SyncFinished)
    [applied] = [e for e in lan.of_type("a", AddApplied) if e.ticket == ticket_add]
    events = lan.events["a"]
    assert events.index(applied) > events.index(finished)
    assert lan.applied_in[("a", ticket_add)] is Mode.WORK
    assert finished.tickets == (ticket_sync,)
    assert applied.nonce == 2
    assert lan["a"].before("x") == 10 + 20 + 30  # the held add is not folded
    assert set(lan.values("x").values()) == {1060}


def test_a_participant_holds_writes_until_the_barrier_ends() -> None:
    lan = lan_of("a", "b", "c")
    fill(lan, 1)
    lan.cut.add(("b", "a"))  # b joins, but a does not hear it yet
    lan["a"].start_sync(lan.now)
    lan.settle()
    assert lan["b"].mode in (Mode.SYNC, Mode.READY)
    ticket = lan["b"].add("x", 7, lan.now)
    lan.flush("b")
    assert all(e.ticket != ticket for e in lan.of_type("b", AddApplied))

    lan.run_for(0.1)
    lan.heal()
    lan.run_for(0.5)
    [finished] = lan.of_type("b", SyncFinished)
    [applied] = [e for e in lan.of_type("b", AddApplied) if e.ticket == ticket]
    events = lan.events["b"]
    assert finished.result == "completed"
    assert events.index(applied) > events.index(finished)
    assert lan.applied_in[("b", ticket)] is Mode.WORK
    assert set(lan.values("x").values()) == {67}


def test_a_sync_with_lost_ops_repairs_them_before_folding() -> None:
    lan = lan_of("a", "b", "c")
    lan.drop = lambda src, dst, m: src == "c" and dst == "a" and isinstance(m, OpBatch)
    total = fill(lan)
    lan.drop = None
    assert lan["a"].value("x") != total
    lan["a"].start_sync(lan.now)
    lan.run_for(1.0)
    for node_id, node in lan.nodes.items():
        assert [e.result for e in lan.of_type(node_id, SyncFinished)] == ["completed"]
        assert (node.before("x"), node.value("x"), node.ops_in_log()) == (total, total, 0)


@pytest.mark.parametrize(
    "silence",
    [
        "isolated",  # c hears nothing and says nothing
        "mute",  # c hears everything but nothing it sends arrives
        "joins_then_mute",  # only c's SyncJoin gets through
    ],
)
def test_a_barrier_with_a_silent_participant_ends_within_the_freeze_bound(silence: str) -> None:
    lan = lan_of("a", "b", "c")
    total = fill(lan, 2)
    if silence == "isolated":
        lan.isolate("c")
    elif silence == "mute":
        lan.isolate("c", incoming=False)
    else:
        lan.drop = lambda src, dst, m: src == "c" and not isinstance(m, SyncJoin)
    started = lan.now
    freeze = lan.settings.sync_freeze_max_s
    lan["a"].start_sync(lan.now)
    lan["c"].add("held", 1, lan.now)

    lan.advance(started + freeze)

    for node in lan.nodes.values():
        assert node.mode is Mode.WORK
    for node_id in ("a", "b"):
        [finished] = lan.of_type(node_id, SyncFinished)
        assert finished.result in ("completed", "aborted")
        assert finished.duration_s <= freeze
    for finished in lan.of_type("c", SyncFinished):
        assert finished.duration_s <= freeze
    assert lan["c"].value("held") == 1
    results = {e.result for e in lan.of_type("a", SyncFinished) + lan.of_type("b", SyncFinished)}
    if results == {"completed"}:
        assert lan["a"].before("x") == lan["b"].before("x") == total

    lan.heal()
    lan.run_for(3.0)
    assert set(lan.values("x").values()) == {total}
    assert set(lan.values("held").values()) == {1}


@pytest.mark.parametrize("incoming", [False, True], ids=["isolated", "mute"])
def test_a_participant_that_never_joins_is_left_out_and_the_rest_complete(incoming: bool) -> None:
    lan = lan_of("a", "b", "c")
    total = fill(lan, 2)
    lan.isolate("c", incoming=not incoming)
    started = lan.now
    freeze = lan.settings.sync_freeze_max_s
    lan["a"].start_sync(lan.now)
    lan.advance(started + freeze / 2)
    for node_id in ("a", "b"):
        [finished] = lan.of_type(node_id, SyncFinished)
        assert finished.result == "completed"
        assert lan[node_id].before("x") == total
        assert lan[node_id].mode is Mode.WORK
    assert lan["a"].stats["barrier_members_dropped"] == 1


def test_a_participant_that_missed_the_commit_folds_it_when_a_retry_arrives() -> None:
    lan = lan_of("a", "b", "c")
    total = fill(lan, 2)
    lan.drop = lambda src, dst, message: dst == "c" and isinstance(message, SyncCommit)
    started = lan.now
    lan["a"].start_sync(lan.now)
    lan.advance(started + lan.settings.sync_freeze_max_s + 0.1)
    [finished] = lan.of_type("c", SyncFinished)
    assert (finished.result, lan["c"].mode, lan["c"].before("x")) == ("aborted", Mode.WORK, 0)

    lan.heal()  # the initiator still repeats its commit until c acknowledges
    lan.run_for(0.5)
    assert lan["c"].stats["late_folds"] == 1
    assert (lan["c"].before("x"), lan["c"].ops_in_log(), lan["c"].epoch) == (total, 0, 1)


def test_a_sync_started_on_two_nodes_at_once_ends_with_everyone_in_work() -> None:
    lan = lan_of("a", "b", "c")
    total = fill(lan)
    lan["a"].start_sync(lan.now)
    lan["c"].start_sync(lan.now)
    lan.advance(lan.now + lan.settings.sync_freeze_max_s)
    for node_id, node in lan.nodes.items():
        assert node.mode is Mode.WORK
        assert lan.of_type(node_id, SyncFinished)
    assert lan.of_type("a", SyncFinished)[-1].result == "completed"
    assert {n.before("x") for n in lan.nodes.values()} == {total}


def test_barriers_start_on_their_own_every_sync_interval() -> None:
    lan = lan_of("a", "b", settings=Settings(sync_interval_s=20.0, sync_min_gap_s=10.0))
    lan["b"].add("x", 1, lan.now)
    lan.run_for(45.0)
    finished = lan.of_type("b", SyncFinished)
    assert [e.result for e in finished] == ["completed", "completed"]
    assert {e.initiator for e in finished} == {"a"}  # the lowest node id starts them
    assert lan["b"].epoch == 2


# --- timers -----------------------------------------------------------------------------


@pytest.mark.parametrize("seed", range(3))
def test_a_busy_lossy_cluster_never_spins_its_timer_and_converges(seed: int) -> None:
    settings = Settings(sync_interval_s=7.0, sync_min_gap_s=5.0)
    lan = Lan("abcd", settings=settings, seed=seed)
    rng = random.Random(f"{seed}/workload")
    lost = 0

    def lossy(src: str, dst: str, message: Message) -> bool:
        nonlocal lost
        if rng.random() < 0.2:
            lost += 1
            return True
        return False

    lan.drop = lossy
    expected: dict[str, int] = {}
    for _ in range(150):
        node_id = rng.choice("abcd")
        variable = rng.choice(["x", "y", "z"])
        delta = rng.randint(-100, 100)
        lan[node_id].add(variable, delta, lan.now)
        expected[variable] = expected.get(variable, 0) + delta
        if rng.random() < 0.05:
            lan[rng.choice("abcd")].start_sync(lan.now)
        if rng.random() < 0.05:
            lan.isolate(rng.choice("abcd"))
        if rng.random() < 0.1:
            lan.cut.clear()
        lan.run_for(rng.uniform(0.0, 0.3))

    lan.heal()
    lan.run_for(20.0)
    assert lost > 0
    for variable, value in expected.items():
        assert set(lan.values(variable).values()) == {value}, (variable, lan.values(variable))
    # A spinning timer would run handle_timer without end; a healthy node needs a few
    # calls per virtual second (announces, repairs, barrier retries).
    assert lan.timer_calls < 25 * (lan.now - START) * len(lan.nodes), lan.timer_calls


def test_get_timer_is_later_than_now_after_handle_timer_at_any_time() -> None:
    lan = lan_of("a", "b")
    lan["a"].add("x", 1, lan.now)
    lan["a"].start_sync(lan.now)
    rng = random.Random("timer-probe")
    now = lan.now
    for _ in range(300):
        now += rng.choice([0.0, 1e-9, 0.001, 0.05, 0.7])
        for node in lan.nodes.values():
            node.handle_timer(now)
            assert node.get_timer() > now
        lan.now = now
        lan.settle()


def test_handle_timer_with_nothing_due_changes_nothing() -> None:
    node = Node(Origin("a", 1), Settings(), random.Random("t/a"), START)
    node.handle_timer(START)
    node.datagrams_to_send()
    due = node.get_timer()
    node.handle_timer((START + due) / 2)
    assert node.datagrams_to_send() == []
    assert node.get_timer() == due


def test_nacks_back_off_while_no_holder_answers() -> None:
    lan = lan_of("a", "b")
    lan.cut = {("a", "b")}
    lan["a"].add("x", 1, lan.now)
    lan.settle()
    lan.cut = {("b", "a")}  # b hears a's next announce; a never hears b's Nacks
    lan.run_for(1.2)
    assert lan["b"].stats["gaps_detected"] == 1
    asked = lan["b"].stats.get("nacks_sent", 0)

    lan.run_for(10.0)

    # After nack_retries_flat retries at nack_retry_s, retries double up to
    # nack_retry_max_s (0.5 s, jitter x1..1.5): some 15-25 in ten seconds, where the flat
    # 20 ms retry kept up would send 400.
    assert 10 <= lan["b"].stats["nacks_sent"] - asked <= 30
    lan.heal()
    lan.run_for(1.0)
    assert lan.values("x") == {"a": 1, "b": 1}


def test_nack_retries_are_flat_and_short_then_double_to_the_max() -> None:
    settings = Settings()
    flat = [retry_after(settings, attempt) for attempt in range(1, settings.nack_retries_flat + 1)]
    assert flat == [settings.nack_retry_s] * settings.nack_retries_flat
    assert settings.nack_retry_s * settings.nack_retries_flat * 1.5 <= 0.25  # lossy, not slow
    later = [retry_after(settings, settings.nack_retries_flat + k) for k in range(1, 10)]
    assert later[:3] == [2 * settings.nack_retry_s, 4 * settings.nack_retry_s, 0.16]
    assert later[-1] == settings.nack_retry_max_s == max(later)


def test_a_nack_answer_is_bounded_by_repair_bytes_max() -> None:
    lan = lan_of("a", "b", settings=Settings(repair_bytes_max=16 * 50))
    lan.cut.add(("a", "b"))
    for _ in range(200):
        lan["a"].add("x", 1, lan.now)
    lan.settle()
    lan.heal()
    answers: list[int] = []

    def watch(src: str, dst: str, message: Message) -> bool:
        if src == "a" and isinstance(message, OpBatch):
            answers.append(sum(len(group.ops) for group in message.groups))
        return False

    lan.drop = watch
    lan.run_for(3.0)
    assert lan.values("x") == {"a": 200, "b": 200}
    assert len(answers) >= 4
    assert max(answers) <= 50
    assert lan["a"].stats["repair_truncated"] >= 1


def test_a_nack_for_ranges_we_do_not_hold_is_answered_with_nothing() -> None:
    node = Node(Origin("a", 1), Settings(), random.Random("t/a"), START)
    node.add("x", 1, START)
    node.records_to_persist()
    node.datagrams_to_send()
    encoder = wire.Encoder(Origin("b", 1))
    [hello] = encoder.nack([])
    node.receive_datagram(hello, address_of("b"), START)
    node.datagrams_to_send()  # the welcome announce to a new peer
    [nack] = encoder.nack(
        [NackRange("x", Origin("c", 1), 1, 5), NackRange("nope", Origin("a", 1), 1, 5)]
    )
    node.receive_datagram(nack, address_of("b"), START)
    assert node.datagrams_to_send() == []
    assert node.stats["nacks_received"] == 2


def test_the_same_seed_gives_the_same_run() -> None:
    def run() -> tuple[object, ...]:
        lan = Lan("abc", seed=42)
        rng = random.Random("42/workload")
        lan.drop = lambda src, dst, message: rng.random() < 0.3
        for _ in range(40):
            lan[rng.choice("abc")].add(rng.choice("xyz"), rng.randint(-5, 5), lan.now)
            lan.run_for(rng.uniform(0.0, 0.2))
        lan["b"].start_sync(lan.now)
        lan.run_for(5.0)
        return (lan.delivered, lan.timer_calls, repr(lan.events), repr(lan.disk))

    assert run() == run()


def test_digest_requests_from_one_peer_are_answered_at_most_every_quarter_second() -> None:
    """A verify walks every op; a peer asking in a loop must not stall the node."""
    node = Node(Origin("a", 1), Settings(), random.Random("t/a"), START)
    node.add("x", 1, START)
    asker = wire.Encoder(Origin("b", 1), (), seq_start=1)
    [hello] = asker.announce(Mode.WORK, 0, None, [])
    node.receive_datagram(hello, address_of("b"), START)  # only peers that announced

    def ask(at: float) -> int:
        node.datagrams_to_send()
        node.receive_datagram(asker.digest_request(7), address_of("b"), at)
        return sum(d.destination == address_of("b") for d in node.datagrams_to_send())

    assert ask(START) >= 1
    assert ask(START + 0.1) == 0
    assert ask(START + 0.3) >= 1
    assert node.stats["verify_requests_served"] == 2
    assert node.stats["verify_requests_limited"] == 1


def own_reports(node: Node) -> dict[str, VariableReport]:
    """Our own reports, as a verify with no peers collects them."""
    node.events()
    node.start_verify(START)
    (finished,) = [e for e in node.events() if isinstance(e, VerifyFinished)]
    return finished.reports[node.node_id]


def test_a_verify_makes_again_only_the_reports_of_variables_that_changed() -> None:
    node = Node(Origin("a", 1), Settings(), random.Random("t/a"), START)
    for nonce in range(1, 6):
        node.add("x", nonce, START)
    node.add("y", 2, START)
    first = own_reports(node)
    node.add("x", 3, START)
    second = own_reports(node)
    assert second["y"] is first["y"]
    assert second["x"].ops_hash != first["x"].ops_hash and second["x"].value == first["x"].value + 3
    restored = Node(
        Origin("a", 1), Settings(), random.Random("t/a"), START, records=node.records_to_persist()
    )
    assert own_reports(restored) == second


def report_records() -> list[Record]:
    """Two variables; x with ops of two peers' origins, a base, and a hole above it."""
    b, c = Origin("b", 1), Origin("c", 1)
    records: list[Record] = [VariableCreated("x"), VariableCreated("y")]
    records += [OpRecorded("x", b, nonce, nonce * 10) for nonce in (1, 2, 3, 4, 5, 7, 9)]
    records += [BaseFolded("x", c, 3, 10)]
    records += [OpRecorded("x", c, nonce, -nonce) for nonce in (4, 5, 6)]
    records += [OpRecorded("y", b, nonce, 1) for nonce in range(1, 8)]
    return records


def verify_in_steps(node: Node, now: float) -> tuple[VerifyFinished, int]:
    """Start a verify with no peers and call handle_timer while its timer is due."""
    node.events()
    node.start_verify(now)
    steps = 0
    while not (finished := [e for e in node.events() if isinstance(e, VerifyFinished)]):
        assert node.get_timer() <= now, "work remains, so the timer must be due"
        node.handle_timer(now)
        steps += 1
    return finished[0], steps


def test_reports_made_a_few_ops_per_step_are_those_made_in_one_go(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    whole = own_reports(
        Node(Origin("a", 1), Settings(), random.Random("t/a"), START, records=report_records())
    )
    monkeypatch.setattr(reports, "REPORT_STEP_OPS", 2)
    node = Node(Origin("a", 1), Settings(), random.Random("t/a"), START, records=report_records())
    finished, steps = verify_in_steps(node, START)
    assert steps >= 6  # 17 ops and a base in two variables, two at a time
    assert finished.reports["a"] == whole
    assert whole["x"].value == sum(n * 10 for n in (1, 2, 3, 4, 5, 7, 9)) + 10 - 4 - 5 - 6
    assert dict(whole["x"].marks) == {Origin("b", 1): 5, Origin("c", 1): 6}


def test_a_fold_or_new_ops_while_reports_are_made_leave_no_stale_report(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A fold mid-report makes that variable's report again; an op that arrives
    mid-report is in it or not, with its value, and the next verify reports it."""
    monkeypatch.setattr(reports, "REPORT_STEP_OPS", 2)
    node = Node(Origin("a", 1), Settings(), random.Random("t/a"), START, records=report_records())
    node.events()
    node.start_verify(START)
    node.handle_timer(START)
    node._apply([Fold({("x", Origin("b", 1)): (5, 150)}, epoch=1)], START)
    node.add("x", 1000, START)
    node.add("y", 1, START)
    disk = report_records() + node.records_to_persist()
    while not (finished := [e for e in node.events() if isinstance(e, VerifyFinished)]):
        node.handle_timer(START)
    made = finished[0].reports["a"]
    assert made["x"].value in (node.value("x"), node.value("x") - 1000)
    assert made["y"].value in (node.value("y"), node.value("y") - 1)
    monkeypatch.setattr(reports, "REPORT_STEP_OPS", 1_000_000)
    restored = Node(Origin("a", 1), Settings(), random.Random("t/a"), START, records=disk)
    assert own_reports(node) == own_reports(restored)
    assert {name: r.value for name, r in own_reports(node).items()} == {
        "x": node.value("x"),
        "y": node.value("y"),
    }


def test_a_report_hashes_the_bases_and_each_op_as_lines_of_text() -> None:
    """The digest is compared across nodes, also of other versions: its bytes are fixed."""
    node = Node(Origin("a", 1), Settings(), random.Random("t/a"), START)
    for delta in (4, -2, 7):
        node.add("x", delta, START)
    digest = hashlib.blake2b(digest_size=8)
    for nonce, delta in enumerate((4, -2, 7), start=1):
        digest.update(f"o a/1 {nonce} {delta}\n".encode())
    assert own_reports(node)["x"].ops_hash == digest.digest()
