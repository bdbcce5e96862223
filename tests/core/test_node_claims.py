"""A node never believes a claim it can check: its own origin, barriers from strangers,
addresses in a PeerList, limits, and replies it would send to anybody."""

from __future__ import annotations

import random

import pytest

from crdtd.core import wire
from crdtd.core.events import ClaimRefused, StateRewound, VariablesOverLimit
from crdtd.core.identity import SALT_BITS, choose_incarnation, propose_incarnation
from crdtd.core.ids import NONCE_MAX, UINT64_MAX, Origin
from crdtd.core.membership import WELCOMES_PER_S
from crdtd.core.messages import (
    BarrierId,
    BaseEntry,
    NackRange,
    OpGroup,
    SyncStart,
    VariableDigest,
)
from crdtd.core.modes import Mode
from crdtd.core.node import Node
from crdtd.core.records import IncarnationStarted, OpRecorded
from crdtd.core.settings import Key, Settings

START = 100.0
KEY = (Key("k", b"s" * 32),)
LIAR = ("127.0.0.9", 7000)


def keyed(node_id: str = "a", **settings: object) -> Node:
    node = Node(
        Origin(node_id, 1),
        Settings(keys=KEY, **settings),
        random.Random("t"),
        START,  # type: ignore[arg-type]
    )
    node.records_to_persist()
    node.datagrams_to_send()
    return node


Z = Origin("z", 1)


def liar(origin: Origin = Z) -> wire.Encoder:
    """A key holder's encoder: one per sender, or its replay window refuses the rest."""
    return wire.Encoder(origin, KEY)


def test_a_forged_base_for_our_own_origin_changes_nothing_and_a_later_add_works() -> None:
    node = keyed()
    node.add("x", 5, START)
    me = node.origin
    for payload in liar().bases([BaseEntry("x", me, UINT64_MAX >> 1, -(2**70))]):
        node.receive_datagram(payload, LIAR, START)
    assert node.value("x") == 5
    assert node.stats["claims_refused"] == 1
    [refused] = [e for e in node.events() if isinstance(e, ClaimRefused)]
    assert (refused.kind, refused.variable, refused.peer) == ("base", "x", "z")
    node.add("x", 1, START)  # the next nonce is ours, and within 64 bits
    records = node.records_to_persist()
    assert OpRecorded("x", me, 2, 1) in records
    assert node.value("x") == 6


def test_ops_and_watermarks_of_our_own_origin_that_we_never_issued_are_refused() -> None:
    node = keyed()
    node.add("x", 5, START)
    me = node.origin
    z = liar()
    [ops] = z.op_batch([OpGroup("x", me, ((1, 5), (2, 9)))])  # one echo, one forgery
    node.receive_datagram(ops, LIAR, START)
    [announce] = z.announce(Mode.WORK, 0, None, [VariableDigest("x", ((me, 50),))])
    node.receive_datagram(announce, LIAR, START)
    assert node.value("x") == 5
    assert node.stats["claims_refused"] == 2
    assert node.stats["ops_duplicate"] == 1
    node.handle_timer(START + 5.0)
    assert "nacks_sent" not in node.stats  # nobody is asked for ops of ours


def test_a_peer_holding_more_of_an_earlier_incarnation_of_ours_reveals_a_rewind() -> None:
    node = keyed()
    earlier = Origin("a", 0)  # not a live peer: a boot of ours whose ops our disk lost
    [announce] = liar().announce(Mode.WORK, 0, None, [VariableDigest("x", ((earlier, 7),))])
    node.receive_datagram(announce, LIAR, START)
    [rewound] = [e for e in node.events() if isinstance(e, StateRewound)]
    assert (rewound.origin, rewound.held, rewound.seen, rewound.peer) == (earlier, 0, 7, "z")
    node.handle_timer(START + 1.0)
    nacks = [
        wire.decode(d.payload, KEY).message
        for d in node.datagrams_to_send()
        if d.destination == LIAR
    ]
    assert any(  # and it asks for them back, like any missing op
        getattr(m, "ranges", None) == (NackRange("x", earlier, 1, 7),) for m in nacks
    )


def test_a_barrier_start_from_a_sender_that_never_announced_is_ignored() -> None:
    node = keyed()
    stranger = liar(Origin("s", 1))
    node.receive_datagram(stranger.sync(SyncStart(BarrierId(1, "s", 1))), LIAR, START)
    node.receive_datagram(stranger.sync(SyncStart(BarrierId(1, "s", 1))), LIAR, START)
    assert node.mode is Mode.WORK
    assert node.stats["barrier_start_from_stranger"] == 2
    [announce] = stranger.announce(Mode.WORK, 0, None, [])
    node.receive_datagram(announce, LIAR, START)
    node.receive_datagram(stranger.sync(SyncStart(BarrierId(1, "s", 2))), LIAR, START)
    assert node.mode is not Mode.WORK  # a live peer may


def test_a_peer_list_naming_a_host_name_is_dropped_before_it_can_aim_us() -> None:
    encoder = liar()
    for host in ("example", "224.0.0.1", "0.0.0.0", "255.255.255.255", "1.2.3"):
        [payload] = encoder.peer_list([("b", host, 7000, True)])
        with pytest.raises(wire.MalformedDatagram, match="peer entry"):
            wire.decode(payload, KEY)
    [good] = encoder.peer_list([("b", "127.0.0.2", 7000, True)])
    assert wire.decode(good, KEY).message.peers == (("b", "127.0.0.2", 7000, True),)


def test_gossiped_addresses_get_a_probe_per_interval_not_a_copy_of_every_op() -> None:
    node = keyed()
    targets = [(f"127.0.1.{i}", 7000) for i in range(1, 51)]
    [peers] = liar().peer_list(
        [(f"p{i}", host, port, True) for i, (host, port) in enumerate(targets)]
    )
    node.receive_datagram(peers, LIAR, START)
    probed = {d.destination for d in node.datagrams_to_send()} & set(targets)
    assert len(probed) <= WELCOMES_PER_S
    node.add("x", 1, START)
    sent = node.datagrams_to_send()
    assert all(d.destination is None for d in sent)  # the op is multicast only


def test_nonces_and_watermarks_beyond_nonce_max_are_malformed() -> None:
    [nack] = liar().nack([NackRange("x", Origin("b", 1), 1, NONCE_MAX + 1)])
    with pytest.raises(wire.MalformedDatagram, match="bad range"):
        wire.decode(nack, KEY)
    [base] = liar().bases([BaseEntry("x", Origin("b", 1), NONCE_MAX + 1, 1)])
    with pytest.raises(wire.MalformedDatagram, match="nonce out of range"):
        wire.decode(base, KEY)
    [announce] = liar().announce(
        Mode.WORK, 0, None, [VariableDigest("x", ((Origin("b", 1), NONCE_MAX + 1),))]
    )
    with pytest.raises(wire.MalformedDatagram, match="watermark out of range"):
        wire.decode(announce, KEY)


def test_variables_max_bounds_local_names_while_peers_may_bring_more() -> None:
    node = keyed(variables_max=2)
    node.add("a", 1, START)
    node.add("b", 1, START)
    with pytest.raises(ValueError, match="variables_max"):
        node.create("c", START)
    [batch] = liar().op_batch(
        [OpGroup(name, Origin("z", 1), ((1, 1),)) for name in ("c", "d", "e", "f", "g")]
    )
    node.receive_datagram(batch, LIAR, START)
    assert node.variables() == ["a", "b", "c", "d"]  # up to twice the limit, then dropped
    assert node.stats["variables_hard_max_reached"] == 3
    [over] = [e for e in node.events() if isinstance(e, VariablesOverLimit)]
    assert (over.limit, over.hard_limit) == (2, 4)


def test_incarnations_only_grow_for_one_state_whatever_the_clock_says() -> None:
    salt = (1 << SALT_BITS) - 1
    now = propose_incarnation(1_700_000_000_000, salt)
    assert choose_incarnation(now, 0, 5) == now
    hour_back = propose_incarnation(1_700_000_000_000 - 3_600_000, 3)
    later = choose_incarnation(hour_back, now, 9)
    assert later > now
    assert choose_incarnation(hour_back, later, 0) > later
    node = Node(
        Origin("a", hour_back), Settings(), random.Random("t"), START, [IncarnationStarted(now)]
    )
    assert node.origin.incarnation > now


def test_a_want_that_no_live_peer_can_fill_is_dropped_not_retried_forever() -> None:
    node = keyed()
    invented = Origin("nobody", 1)
    [announce] = liar().announce(Mode.WORK, 0, None, [VariableDigest("x", ((invented, 9),))])
    node.receive_datagram(announce, LIAR, START)
    node.handle_timer(START + 0.1)
    assert node.stats["nacks_sent"] == 1  # the announcer claimed it: ask it first
    node.handle_timer(START + 3.5)  # the announcer fell silent (suspected)
    node.handle_timer(START + 4.0)
    assert node.stats["wants_unanswerable"] == 1
    nacks = node.stats["nacks_sent"]
    node.handle_timer(START + 9.0)
    assert node.stats["nacks_sent"] == nacks


def test_an_op_of_our_id_with_a_huge_incarnation_never_steers_our_own() -> None:
    """Only our own IncarnationStarted records count: one forged op (relayed to us and
    stored like any origin's) must not leave no room for our next boot."""
    forged = OpRecorded("x", Origin("a", 2**64 - 1), 1, 5)
    node = Node(
        Origin("a", 10), Settings(), random.Random("t"), START, [IncarnationStarted(3), forged]
    )
    assert node.origin.incarnation == 10
    assert node.value("x") == 5


def test_an_id_keeps_at_most_a_few_origins_and_a_full_table_makes_room_for_restarts() -> None:
    node = keyed(peers_max=3)
    for incarnation in range(1, 9):  # one sender inventing origins of one id
        [hello] = liar(Origin("b", incarnation)).announce(Mode.WORK, 0, None, [])
        node.receive_datagram(hello, LIAR, START + incarnation * 0.01)
    assert len([o for o in node.peers if o.node_id == "b"]) <= 3
    for name in ("c", "d"):
        [hello] = liar(Origin(name, 1)).announce(Mode.WORK, 0, None, [])
        node.receive_datagram(hello, ("127.0.0.3", 7000), START + 1)
    assert {o.node_id for o in node.peers} >= {"c", "d"}  # b's superseded selves went first
