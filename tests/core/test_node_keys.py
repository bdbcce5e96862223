"""A node with a wrong or missing key is not a peer: its datagrams fail to decode, and
decoding comes before anything learns of the sender."""

from __future__ import annotations

import random

import pytest

from crdtd.core import wire
from crdtd.core.events import DatagramRejected
from crdtd.core.ids import Origin
from crdtd.core.messages import BarrierId, NackRange, OpBatch, SyncStart
from crdtd.core.node import Node
from crdtd.core.records import IncarnationStarted, Record, ReplayFloor
from crdtd.core.replay import FLOOR_SAVE_INTERVAL_S
from crdtd.core.settings import Key, Settings
from crdtd.core.view import node_state

START = 1_000.0
CLUSTER = Key("k2026a", b"c" * 32)
ADDRESS = ("10.0.0.2", 7778)


def datagrams_of(keys: tuple[Key, ...]) -> list[bytes]:
    """What a node signing with *keys* sends: ops, announces, a nack and a barrier start."""
    node = Node(Origin("b", 1), Settings(keys=keys), random.Random("t/b"), START)
    node.add("x", 5, START)
    node.handle_timer(START)
    payloads = [datagram.payload for datagram in node.datagrams_to_send()]
    encoder = wire.Encoder(Origin("b", 1), keys, seq_start=100)
    payloads += encoder.nack([NackRange("x", Origin("c", 1), 1, 3)])
    payloads.append(encoder.sync(SyncStart(BarrierId(1, "b", 1))))
    return payloads


@pytest.mark.parametrize(
    ("sender_keys", "receiver_keys", "reason", "key_id"),
    [
        ((Key("k2026b", b"w" * 32),), (CLUSTER,), "unknown_key", "k2026b"),
        ((Key("k2026a", b"w" * 32),), (CLUSTER,), "bad_mac", "k2026a"),
        ((), (CLUSTER,), "unauthenticated", None),
        ((CLUSTER,), (), "unexpected_mac", "k2026a"),
    ],
    ids=["other-key-id", "same-id-wrong-secret", "no-key", "receiver-without-key"],
)
def test_a_sender_without_the_cluster_key_never_becomes_a_peer(
    sender_keys: tuple[Key, ...], receiver_keys: tuple[Key, ...], reason: str, key_id: str | None
) -> None:
    receiver = Node(Origin("a", 1), Settings(keys=receiver_keys), random.Random("t/a"), START)
    payloads = datagrams_of(sender_keys)
    for payload in payloads:
        receiver.receive_datagram(payload, ADDRESS, START)
    assert receiver.peers == {}
    assert node_state(receiver, START).peers == ()
    assert receiver.value("x") is None
    assert receiver.stats == {f"rejected_{reason}": len(payloads)}
    assert receiver.events() == [DatagramRejected(reason, ADDRESS, key_id)] * len(payloads)
    assert receiver.datagrams_to_send() == []  # not even a welcome announce


def test_the_same_datagrams_under_the_cluster_key_make_a_peer() -> None:
    receiver = Node(Origin("a", 1), Settings(keys=(CLUSTER,)), random.Random("t/a"), START)
    for payload in datagrams_of((CLUSTER,)):
        receiver.receive_datagram(payload, ADDRESS, START)
    assert [peer.node_id for peer in receiver.peers.values()] == ["b"]
    assert receiver.value("x") == 5


def restarted(node: Node, kept: list[Record], now: float) -> Node:
    """*node* rebuilt from the records it asked to persist, as after kill -9."""
    return Node(node.origin, node.settings, random.Random("t/a2"), now, kept, seq_start=10**9)


@pytest.mark.parametrize("clean_stop", [False, True], ids=["kill-9", "clean-stop"])
def test_a_datagram_replayed_after_the_receiver_restarts_is_refused(clean_stop: bool) -> None:
    """Windows live in memory; `ReplayFloor` records carry them over the restart. Ops ride
    with the records they cause; after a kill -9 only datagrams that changed nothing
    durable since the last floor save are accepted once more, and they change nothing."""
    receiver = Node(Origin("a", 1), Settings(keys=(CLUSTER,)), random.Random("t/a"), START)
    kept: list[Record] = []
    captured = datagrams_of((CLUSTER,))
    ops = [p for p in captured if isinstance(wire.decode(p, (CLUSTER,)).message, OpBatch)]
    for payload in captured:
        receiver.receive_datagram(payload, ADDRESS, START)
        kept += receiver.records_to_persist()
    if clean_stop:
        receiver.checkpoint()
        kept += receiver.records_to_persist()
    again = restarted(receiver, kept, START + 60)
    assert again.value("x") == 5
    for payload in captured:
        again.receive_datagram(payload, ADDRESS, START + 60)
    floor = max(r.seq for r in kept if isinstance(r, ReplayFloor))
    below = [p for p in captured if wire.decode(p, (CLUSTER,)).seq <= floor]
    assert set(ops) <= set(below)
    assert again.stats["rejected_replayed"] == len(captured if clean_stop else below)
    assert again.value("x") == 5


def test_replay_floors_are_saved_with_other_records_and_on_a_timer() -> None:
    receiver = Node(Origin("a", 1), Settings(keys=(CLUSTER,)), random.Random("t/a"), START)
    assert receiver.records_to_persist() == [IncarnationStarted(1)]
    nack = datagrams_of((CLUSTER,))[-2]  # changes nothing durable
    receiver.receive_datagram(nack, ADDRESS, START)
    seq = wire.decode(nack, (CLUSTER,)).seq

    def floors_of_b() -> list[ReplayFloor]:
        records = receiver.records_to_persist()
        return [r for r in records if isinstance(r, ReplayFloor) and r.sender.node_id == "b"]

    assert floors_of_b() == []
    receiver.handle_timer(START + FLOOR_SAVE_INTERVAL_S)
    assert floors_of_b() == [ReplayFloor(Origin("b", 1), seq)]
    receiver.handle_timer(START + 2 * FLOOR_SAVE_INTERVAL_S)  # nothing new: nothing again
    assert floors_of_b() == []


def test_a_sender_restarted_with_its_clock_set_back_still_gets_through() -> None:
    """The driver seeds the sequence from the wall clock; a restarted sender is a new
    incarnation, a new window at its peers, so a clock set back cannot get it refused."""
    sender = Node(
        Origin("b", 1), Settings(keys=(CLUSTER,)), random.Random("t/b"), START, (), 10**15
    )
    receiver = Node(Origin("a", 1), Settings(keys=(CLUSTER,)), random.Random("t/a"), START)
    kept: list[Record] = []
    for step in range(3):
        sender.add("x", 1, START + step)
        kept += sender.records_to_persist()
        for datagram in sender.datagrams_to_send():
            receiver.receive_datagram(datagram.payload, ADDRESS, START + step)
    clock_back = Node(sender.origin, sender.settings, random.Random("t/b2"), START, kept, 10**9)
    assert clock_back.origin.incarnation > sender.origin.incarnation
    clock_back.add("x", 1, START + 10)
    for datagram in clock_back.datagrams_to_send():
        receiver.receive_datagram(datagram.payload, ADDRESS, START + 10)
    assert "rejected_replayed" not in receiver.stats
    assert receiver.value("x") == 4


def test_a_node_that_crashes_twice_before_writing_anything_never_reuses_numbers() -> None:
    """Each boot writes where it starts numbering before it sends anything; without
    that, a second crash before any other record would restart from the same floor."""
    settings = Settings(keys=(CLUSTER,))
    receiver = Node(Origin("a", 1), settings, random.Random("t/a"), START)
    kept: list[Record] = []
    for boot in range(3):
        node = Node(Origin("b", 1), settings, random.Random(f"t/b{boot}"), START, kept, 10**9)
        kept += node.records_to_persist()  # the driver's first flush
        node.handle_timer(START)  # announces; then kill -9, nothing else written
        for datagram in node.datagrams_to_send():
            receiver.receive_datagram(datagram.payload, ADDRESS, START)
    assert "rejected_replayed" not in receiver.stats
    assert receiver.stats["datagrams_received"] >= 3
