"""Announce summaries (issue 15): an idle announce costs O(1) datagrams however many
variables a node holds; a peer that missed changes learns them from a summary that
differs; a peer that never sent a summary (0.1) still gets our full announce."""

from __future__ import annotations

import random

from crdtd.core import wire
from crdtd.core.counters import Counter
from crdtd.core.events import GapRepaired
from crdtd.core.ids import Origin
from crdtd.core.messages import Announce, Message, OpBatch, PeerList, Summary, SummaryRequest
from crdtd.core.modes import Mode
from crdtd.core.repair import Tail
from crdtd.core.settings import Settings
from crdtd.core.summary import Summary as Hashes
from crdtd.core.summary import full_hash
from tests.core.test_node import Lan, lan_of

MANY = 2_000


def sent_by(lan: Lan, node_id: str, seconds: float) -> list[Message]:
    """What *node_id* sends over the next *seconds* (every message, decoded)."""
    seen: list[Message] = []

    def watch(src: str, dst: str, message: Message) -> bool:
        if src == node_id:
            seen.append(message)
        return False

    lan.drop = watch
    lan.run_for(seconds)
    lan.drop = None
    return seen


def populate(lan: Lan, node_id: str, count: int) -> None:
    node = lan[node_id]
    for index in range(count):
        node.add(f"v{index:05d}", 1, lan.now)
    lan.settle()


def test_the_incremental_hash_is_the_hash_from_scratch_in_any_order() -> None:
    a, b = Origin("a", 1), Origin("b", 2)
    one: dict[str, Counter] = {}
    two: dict[str, Counter] = {}
    hashes_one, hashes_two = Hashes(), Hashes()
    ops = [(f"v{n % 7}", (a, b)[n % 2], n // 2 + 1) for n in range(40)]
    for counters, hashes, order in ((one, hashes_one, ops), (two, hashes_two, ops[::-1])):
        for variable, origin, nonce in order:
            counter = counters.setdefault(variable, Counter(variable))
            counter.apply(origin, nonce, 1)
            hashes.touch(variable)
            if random.Random(nonce).random() < 0.3:
                assert hashes.refresh(counters) == full_hash(counters)
    assert hashes_one.refresh(one) == full_hash(one) == hashes_two.refresh(two) == full_hash(two)
    assert hashes_one.take_changed(one) == sorted(one)
    assert hashes_one.take_changed(one) == []


def test_an_idle_node_with_many_variables_announces_in_one_datagram() -> None:
    lan = lan_of("a", "b")
    populate(lan, "a", MANY)
    lan.run_for(3.0)  # the deltas and any summary requests are over
    assert lan.values("v01999") == {"a": 1, "b": 1}
    sent = sent_by(lan, "a", 5.0)
    summaries = [m for m in sent if isinstance(m, Summary)]
    # About 5 announces; the Lan passes no multicast, so each also goes by unicast.
    assert 4 <= len(summaries) <= 12
    assert [m for m in sent if not isinstance(m, Summary | PeerList)] == []  # no Announce
    assert summaries[-1].count == MANY
    assert summaries[-1].digest == lan["a"].summary_hash() == lan["b"].summary_hash()
    assert (
        "summary_requests_sent" not in lan["b"].stats
        or lan["b"].stats["summary_requests_sent"] <= 2
    )  # at the start only


def test_an_announce_names_only_the_variables_that_changed() -> None:
    lan = lan_of("a", "b")
    populate(lan, "a", MANY)
    lan.run_for(3.0)
    lan["a"].add("v00007", 5, lan.now)
    sent = sent_by(lan, "a", 1.2)
    announces = [m for m in sent if isinstance(m, Announce)]
    # The tail digests name it with a's mark only; the announce with every origin.
    assert announces
    assert {d.variable for m in announces for d in m.digests} == {"v00007"}


def test_a_peer_that_missed_changes_gets_them_after_a_differing_summary() -> None:
    lan = lan_of("a", "b", settings=Settings(tail_digests_s=()))  # no tail digests
    populate(lan, "a", 50)
    lan.run_for(3.0)
    assert lan["b"].value("v00010") == 1

    # b loses the op and a's next announce (its delta): only summaries can tell it.
    lan.drop = lambda src, dst, m: src == "a" and isinstance(m, OpBatch | Announce)
    lan["a"].add("v00010", 2, lan.now)
    lan.run_for(1.5)
    assert lan["a"].stats["announces_sent"] >= 2
    lan.drop = None
    assert lan.values("v00010") == {"a": 3, "b": 1}

    lan.run_for(3.5)

    assert lan.values("v00010") == {"a": 3, "b": 3}
    assert lan.of_type("b", GapRepaired) == [GapRepaired("v00010", Origin("a", 1), 2, 2)]
    assert lan["b"].stats["summary_requests_sent"] >= 1
    assert lan["a"].stats["summary_requests_served"] >= 1
    assert lan["a"].summary_hash() == lan["b"].summary_hash()


def test_a_peer_that_never_sent_a_summary_still_gets_our_full_announce() -> None:
    # b stands for a node of 0.1: what it sends has no summary, and it drops ours.
    def old_b(src: str, dst: str, message: Message) -> bool:
        return (src == "b" or dst == "b") and isinstance(message, Summary | SummaryRequest)

    lan = Lan(["a", "b"])
    lan.drop = old_b
    lan.run_for(0.1)
    populate(lan, "a", 300)
    lan.run_for(3.0)
    seen: list[Message] = []

    def watch(src: str, dst: str, message: Message) -> bool:
        if src == "a" and dst == "b":
            seen.append(message)
        return old_b(src, dst, message)

    lan.drop = watch
    lan.run_for(2.0)
    announces = [m for m in seen if isinstance(m, Announce)]
    named = {d.variable for m in announces for d in m.digests}
    assert len(named) == 300  # every variable, at every announce
    assert not lan["a"].peers[lan["b"].origin].summarized
    assert lan.values("v00299") == {"a": 1, "b": 1}


def test_a_node_in_a_barrier_announces_every_variable() -> None:
    lan = lan_of("a", "b")
    populate(lan, "a", 100)
    lan.run_for(3.0)
    seen: list[tuple[Mode, int]] = []

    def watch(src: str, dst: str, message: Message) -> bool:
        if src == "a" and isinstance(message, Announce) and message.mode is not Mode.WORK:
            seen.append((message.mode, len(message.digests)))
        return False

    lan.drop = watch
    lan["b"].start_sync(lan.now)
    lan.run_for(1.0)
    assert seen
    assert sum(count for _, count in seen) >= 100


def test_summary_datagrams_are_small_and_round_trip() -> None:
    encoder = wire.Encoder(Origin("a", 1))
    payload = encoder.summary(Mode.WORK, 3, None, 10_005, bytes(range(16)))
    assert len(payload) < 80
    message = wire.decode(payload).message
    assert message == Summary(Mode.WORK, 3, None, 10_005, bytes(range(16)))
    assert wire.decode(encoder.summary_request()).message == SummaryRequest()


def test_tail_digests_under_steady_writes_name_only_what_was_written_lately() -> None:
    # Writes one gap apart restart the train forever; each digest still names only the
    # variables of the last train's worth of writes, not every one since the first.
    settings = Settings()
    tail = Tail(settings)
    now = 0.0
    named: list[list[str]] = []
    for index in range(200):
        tail.burst(f"v{index}", now)
        now += settings.tail_digests_s[0]
        named.append(tail.due(now))
    assert max(len(names) for names in named) <= len(settings.tail_digests_s)
    assert named[-1][-1] == "v199"
    for _ in settings.tail_digests_s:
        now += max(settings.tail_digests_s)
        tail.due(now)
    assert tail.deadlines() == []


def test_one_summary_that_left_before_our_op_arrived_asks_nothing() -> None:
    """b's summary that crossed a's fresh op differs from a's hash once; a asks only
    for a difference that outlives the next summary."""
    lan = lan_of("a", "b")
    populate(lan, "a", MANY)
    lan.run_for(3.0)
    stale = wire.Encoder(Origin("b", 1)).summary(Mode.WORK, 0, None, MANY, lan["b"].summary_hash())
    lan["a"].add("v00010", 1, lan.now)
    lan.settle()
    asked = lan["a"].stats.get("summary_requests_sent", 0)

    lan["a"].receive_datagram(stale, ("10.0.0.98", 7000), lan.now)
    assert lan["a"].stats["summaries_differing"] == 1
    lan.flush("a")
    lan.run_for(1.5)  # b's next summary has the op: the same hash as a's
    assert lan["a"].stats["summaries_differing"] == 1
    assert lan["a"].stats.get("summary_requests_sent", 0) == asked
    assert lan["b"].stats.get("summary_requests_served", 0) == 0


def test_a_summary_request_from_a_stranger_gets_nothing() -> None:
    lan = lan_of("a", "b")
    populate(lan, "a", 20)
    lan.run_for(2.0)
    stranger = wire.Encoder(Origin("z", 1))
    before = lan["a"].stats.get("summary_requests_served", 0)
    lan["a"].receive_datagram(stranger.summary_request(), ("10.0.0.99", 7000), lan.now)
    to_it = [d for d in lan["a"].datagrams_to_send() if d.destination == ("10.0.0.99", 7000)]
    assert len(to_it) <= 1  # a new peer's welcome (one datagram), never our full announce
    assert lan["a"].stats["summary_requests_from_strangers"] == 1
    assert lan["a"].stats.get("summary_requests_served", 0) == before


def test_a_buried_variable_is_left_out_of_the_hash_so_a_joiner_agrees() -> None:
    lan = lan_of("a", "b")
    populate(lan, "a", 5)
    lan.run_for(2.0)
    lan["a"].delete("v00002", lan.now)
    lan.run_for(3.0)
    joiner = lan.join("c")
    lan.run_for(4.0)
    hashes = {node_id: node.summary_hash() for node_id, node in lan.nodes.items()}
    assert len(set(hashes.values())) == 1, hashes
    assert joiner.value("v00002") is None
    assert lan["a"]._announcer.summary_count == 4


def test_the_full_announce_a_peer_asked_for_is_not_a_unicast_copy() -> None:
    """net-test reads unicast announces from a peer as a sign that it does not hear our
    multicast; the answer to our own SummaryRequest must not look like one."""
    lan = lan_of("a", "b")
    [peer] = lan["b"].peers.values()
    announce = wire.Encoder(Origin("a", 1), seq_start=10**9).announce(Mode.WORK, 0, None, [])[0]
    copies = peer.unicast_copies  # (this harness delivers everything by unicast)
    peer.summary_asked_at = lan.now  # b just asked a for its full announce
    lan["b"].receive_datagram(announce, peer.address, lan.now + 0.1)
    assert peer.unicast_copies == copies
    later = lan.now + 5.0  # long after: a unicast announce is a copy again
    lan["b"].receive_datagram(announce, peer.address, later)
    assert (peer.unicast_copies, peer.unicast_copy_at) == (copies + 1, later)
