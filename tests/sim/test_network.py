"""The simulated network: loss, duplicates, delays, cuts, clogs, multicast fan-out."""

from __future__ import annotations

import pytest

from crdtd.core.settings import DATAGRAM_BYTES_MAX
from crdtd.sim.failures import InvariantViolation
from crdtd.sim.network import Delivery, LinkFaults, Network
from crdtd.sim.rng import stream

A, B, C = ("n00", 7778), ("n01", 7778), ("n02", 7778)


def network(faults: LinkFaults | None = None, seed: int = 1) -> Network:
    net = Network(stream(seed, "network"), faults or LinkFaults())
    for address in (A, B, C):
        net.attach(address)
    return net


def drain(net: Network) -> list[tuple[float, Delivery]]:
    out = []
    while net.next_time() is not None:
        popped = net.pop()
        if popped is not None:
            out.append(popped)
    return out


def test_multicast_reaches_every_other_attached_node_once() -> None:
    net = network()
    net.send(A, b"hello", None, 0.0)
    assert sorted(d.destination for _, d in drain(net)) == [B, C]


def test_unicast_reaches_only_its_destination_after_a_delay_in_range() -> None:
    net = network(LinkFaults(delay_min_s=0.01, delay_max_s=0.02))
    net.send(A, b"x", B, 5.0)
    [(at, delivery)] = drain(net)
    assert delivery == Delivery(A, B, b"x")
    assert 5.01 <= at <= 5.02


def test_a_delay_range_reorders_datagrams() -> None:
    net = network(LinkFaults(delay_min_s=0.0, delay_max_s=0.1))
    for i in range(50):
        net.send(A, bytes([i]), B, i * 0.001)
    order = [d.payload[0] for _, d in drain(net)]
    assert sorted(order) == list(range(50))
    assert order != list(range(50))


def test_deliveries_come_out_in_time_order() -> None:
    net = network(LinkFaults(delay_min_s=0.0, delay_max_s=0.05))
    for i in range(100):
        net.send(A, b"x", None, i * 0.002)
    times = [at for at, _ in drain(net)]
    assert times == sorted(times)


def test_loss_drops_about_the_configured_share_with_independent_draws() -> None:
    net = network(LinkFaults(loss=0.3))
    for _ in range(2000):
        net.send(A, b"x", None, 0.0)
    delivered = len(drain(net))
    assert 0.65 * 4000 < delivered < 0.75 * 4000
    assert net.stats.dropped_loss == 4000 - delivered


def test_duplication_delivers_some_datagrams_twice() -> None:
    net = network(LinkFaults(duplicate=0.5))
    for _ in range(1000):
        net.send(A, b"x", B, 0.0)
    delivered = len(drain(net))
    assert 1400 < delivered < 1600


def test_a_one_way_cut_blocks_one_direction_only() -> None:
    net = network()
    net.cut_one_way(A, B)
    net.send(A, b"ab", B, 0.0)
    net.send(B, b"ba", A, 0.0)
    assert [d.payload for _, d in drain(net)] == [b"ba"]
    net.heal_cuts()
    net.send(A, b"ab", B, 1.0)
    assert [d.payload for _, d in drain(net)] == [b"ab"]


def test_a_partition_cuts_between_groups_and_keeps_links_inside() -> None:
    net = network()
    net.partition([[A, B], [C]])
    net.send(A, b"from a", None, 0.0)
    net.send(C, b"from c", None, 0.0)
    got = sorted((d.source, d.destination) for _, d in drain(net))
    assert got == [(A, B)]


def test_a_clogged_link_holds_datagrams_until_it_clears() -> None:
    net = network(LinkFaults(delay_min_s=0.001, delay_max_s=0.002))
    net.clog(A, B, until=3.0)
    net.send(A, b"held", B, 1.0)
    net.send(A, b"free", C, 1.0)
    got = {d.payload: at for at, d in drain(net)}
    assert got[b"held"] >= 3.001
    assert got[b"free"] < 1.01
    net.send(A, b"later", B, 4.0)
    [(at, _)] = drain(net)
    assert at < 4.01


def test_a_datagram_to_a_down_node_is_dropped_on_arrival() -> None:
    net = network()
    net.send(A, b"x", B, 0.0)
    net.detach(B)
    assert drain(net) == []
    assert net.stats.dropped_down == 1


def test_heal_ends_loss_cuts_and_clogs_but_keeps_duplicates() -> None:
    net = network(LinkFaults(loss=0.3, duplicate=0.2))
    net.set_link(A, B, LinkFaults(loss=0.3))
    net.cut(A, C)
    net.clog(B, C, until=100.0)
    net.heal()
    assert net.link(A, B).loss == 0.0
    assert net.link(B, A).loss == 0.0
    assert net.link(B, A).duplicate == 0.2
    assert not net.cut_links
    assert not net.clogged_until


def test_an_oversized_payload_is_a_node_bug() -> None:
    net = network()
    net.send(A, bytes(DATAGRAM_BYTES_MAX), B, 0.0)
    with pytest.raises(InvariantViolation, match="datagram bytes"):
        net.send(A, bytes(DATAGRAM_BYTES_MAX + 1), B, 0.0)


def test_the_same_seed_gives_the_same_fates() -> None:
    def fates(seed: int) -> list[tuple[float, bytes]]:
        net = network(LinkFaults(loss=0.2, duplicate=0.2, delay_max_s=0.05), seed)
        for i in range(200):
            net.send(A, bytes([i]), None, i * 0.001)
        return [(at, d.payload + d.destination[0].encode()) for at, d in drain(net)]

    assert fates(3) == fates(3)
    assert fates(3) != fates(4)


def test_a_node_without_multicast_neither_sends_nor_hears_it_but_unicast_passes() -> None:
    net = network()
    net.no_multicast[C] = None
    net.send(A, b"group", None, 0.0)
    net.send(C, b"group from c", None, 0.0)
    net.send(A, b"direct", C, 0.0)
    got = sorted((d.payload, d.destination, d.multicast) for _, d in drain(net))
    assert got == [(b"direct", C, False), (b"group", B, True)]
    net.heal()
    assert C in net.no_multicast  # the shape of the LAN, not a fault
