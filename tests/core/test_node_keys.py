"""A node with a wrong or missing key is not a peer: its datagrams fail to decode, and
decoding comes before anything learns of the sender."""

from __future__ import annotations

import random

import pytest

from crdtd.core import wire
from crdtd.core.events import DatagramRejected
from crdtd.core.ids import Origin
from crdtd.core.messages import BarrierId, NackRange, SyncStart
from crdtd.core.node import Node
from crdtd.core.settings import Key, Settings

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
    ("sender_keys", "receiver_keys", "reason"),
    [
        ((Key("k2026b", b"w" * 32),), (CLUSTER,), "unknown_key"),
        ((Key("k2026a", b"w" * 32),), (CLUSTER,), "bad_mac"),
        ((), (CLUSTER,), "unauthenticated"),
        ((CLUSTER,), (), "unexpected_mac"),
    ],
    ids=["other-key-id", "same-id-wrong-secret", "no-key", "receiver-without-key"],
)
def test_a_sender_without_the_cluster_key_never_becomes_a_peer(
    sender_keys: tuple[Key, ...], receiver_keys: tuple[Key, ...], reason: str
) -> None:
    receiver = Node(Origin("a", 1), Settings(keys=receiver_keys), random.Random("t/a"), START)
    payloads = datagrams_of(sender_keys)
    for payload in payloads:
        receiver.receive_datagram(payload, ADDRESS, START)
    assert receiver.peers == {}
    assert receiver.peer_views(START) == []
    assert receiver.value("x") is None
    assert receiver.stats == {f"rejected_{reason}": len(payloads)}
    assert receiver.events() == [DatagramRejected(reason, ADDRESS)] * len(payloads)
    assert receiver.datagrams_to_send() == []  # not even a welcome announce


def test_the_same_datagrams_under_the_cluster_key_make_a_peer() -> None:
    receiver = Node(Origin("a", 1), Settings(keys=(CLUSTER,)), random.Random("t/a"), START)
    for payload in datagrams_of((CLUSTER,)):
        receiver.receive_datagram(payload, ADDRESS, START)
    assert list(receiver.peers) == ["b"]
    assert receiver.value("x") == 5
