"""The simulated LAN: datagrams in flight, and every way a network can mistreat them.

Theory of operation: ``send`` decides, at the moment a datagram leaves its sender, the
fate of each copy - lost, delivered once, or duplicated - and when each copy arrives, then
pushes ``(deliver_at, seq, Delivery)`` onto a heap. ``seq`` is a global counter, so two
copies due at the same instant leave in the order they were queued. The simulator pops the
heap when its clock reaches the head.

Rules:
- a payload larger than ``DATAGRAM_BYTES_MAX`` is a bug in the node: `InvariantViolation`;
- multicast (destination None) fans out to every other attached address, with an
  independent loss/duplicate/delay draw per receiver; a sender never hears itself;
- faults are per directed link: loss probability, duplicate probability, a delay range
  ``delay_min_s..delay_max_s`` (a range, so datagrams overtake each other), a one-way or
  symmetric cut (checked when the datagram is sent), and clogging (everything sent on the
  link before ``until`` arrives only after ``until``, in a burst, reordered);
- a node may sit where multicast does not pass (``no_multicast``): its multicast reaches
  nobody and it hears nobody's, while unicast works; this is the shape of the LAN, so
  ``heal`` keeps it (seeds and unicast fan-out must cope);
- a datagram whose destination is not attached when it arrives (the node is down) is
  dropped, like a datagram to a closed port; one that arrives after a restart is delivered
  to the new process, which is bound to the same address;
- every random draw comes from the network's own stream, in a fixed order (attached
  receivers are visited sorted), so a run is a function of its seed.
"""

from __future__ import annotations

import heapq
import random
from dataclasses import dataclass, field, replace

from crdtd.core.ids import Address
from crdtd.core.settings import DATAGRAM_BYTES_MAX
from crdtd.sim.failures import InvariantViolation

Link = tuple[Address, Address]
"""A directed link: ``(source, destination)``."""


@dataclass(frozen=True, slots=True)
class LinkFaults:
    """How one directed link treats each datagram copy."""

    loss: float = 0.0
    duplicate: float = 0.0
    delay_min_s: float = 0.0001
    delay_max_s: float = 0.002

    def __post_init__(self) -> None:
        assert 0.0 <= self.loss <= 1.0, self.loss
        assert 0.0 <= self.duplicate <= 1.0, self.duplicate
        assert 0.0 <= self.delay_min_s <= self.delay_max_s, (self.delay_min_s, self.delay_max_s)


@dataclass(frozen=True, slots=True)
class Delivery:
    """One copy of a datagram on its way to one receiver."""

    source: Address
    destination: Address
    payload: bytes
    multicast: bool = False


@dataclass(slots=True)
class NetworkStats:
    datagrams_sent: int = 0
    copies_queued: int = 0
    copies_delivered: int = 0
    dropped_loss: int = 0
    dropped_cut: int = 0
    dropped_down: int = 0
    dropped_no_multicast: int = 0
    duplicated: int = 0


@dataclass(slots=True)
class Network:
    """All datagrams in flight and the faults of every link."""

    rng: random.Random
    default: LinkFaults = field(default_factory=LinkFaults)
    links: dict[Link, LinkFaults] = field(default_factory=dict)
    cut_links: dict[Link, None] = field(default_factory=dict)
    clogged_until: dict[Link, float] = field(default_factory=dict)
    no_multicast: dict[Address, None] = field(default_factory=dict)
    """Addresses whose multicast neither leaves nor arrives (unicast still passes)."""
    stats: NetworkStats = field(default_factory=NetworkStats)
    _attached: dict[Address, None] = field(default_factory=dict)
    _receivers: list[Address] = field(default_factory=list)
    _heap: list[tuple[float, int, Delivery]] = field(default_factory=list)
    _seq: int = 0

    # membership ---------------------------------------------------------
    def attach(self, address: Address) -> None:
        """*address* is listening from now on (a node started or restarted)."""
        self._attached[address] = None
        self._receivers = sorted(self._attached)

    def detach(self, address: Address) -> None:
        """*address* stops listening (its node crashed); copies to it are dropped."""
        self._attached.pop(address, None)
        self._receivers = sorted(self._attached)

    def is_attached(self, address: Address) -> bool:
        return address in self._attached

    # faults -------------------------------------------------------------
    def link(self, source: Address, destination: Address) -> LinkFaults:
        return self.links.get((source, destination), self.default)

    def set_link(self, source: Address, destination: Address, faults: LinkFaults) -> None:
        self.links[(source, destination)] = faults

    def cut_one_way(self, source: Address, destination: Address) -> None:
        """Datagrams from *source* to *destination* are lost until `heal_cuts`."""
        self.cut_links[(source, destination)] = None

    def cut(self, a: Address, b: Address) -> None:
        """Neither of *a* and *b* hears the other until `heal_cuts`."""
        self.cut_one_way(a, b)
        self.cut_one_way(b, a)

    def partition(self, groups: list[list[Address]]) -> None:
        """Cut every link between different *groups* (links inside a group stay)."""
        for i, group in enumerate(groups):
            for other in groups[i + 1 :]:
                for a in group:
                    for b in other:
                        self.cut(a, b)

    def heal_cuts(self) -> None:
        self.cut_links.clear()

    def clog(self, source: Address, destination: Address, until: float) -> None:
        """Hold everything sent from *source* to *destination* until *until*."""
        link = (source, destination)
        self.clogged_until[link] = max(until, self.clogged_until.get(link, until))

    def heal(self) -> None:
        """End every fault that can lose or hold a datagram: loss, cuts and clogs.

        Duplication and the delay range (reordering) stay: they lose nothing.
        """
        self.default = replace(self.default, loss=0.0)
        self.links = {link: replace(f, loss=0.0) for link, f in self.links.items()}
        self.cut_links.clear()
        self.clogged_until.clear()

    # traffic ------------------------------------------------------------
    def send(
        self, source: Address, payload: bytes, destination: Address | None, now: float
    ) -> None:
        """Queue the copies of one datagram; a None *destination* is the multicast group."""
        if len(payload) > DATAGRAM_BYTES_MAX:
            raise InvariantViolation(
                f"datagram bytes: {source[0]} sent {len(payload)} bytes to "
                f"{destination[0] if destination else 'multicast'}, "
                f"expected at most {DATAGRAM_BYTES_MAX}"
            )
        self.stats.datagrams_sent += 1
        if destination is None:
            if source in self.no_multicast:
                self.stats.dropped_no_multicast += 1
                return
            for receiver in self._receivers:
                if receiver != source:
                    if receiver in self.no_multicast:
                        self.stats.dropped_no_multicast += 1
                        continue
                    self._transmit(source, receiver, payload, now, multicast=True)
        elif destination != source:
            self._transmit(source, destination, payload, now)

    def _transmit(
        self,
        source: Address,
        destination: Address,
        payload: bytes,
        now: float,
        multicast: bool = False,
    ) -> None:
        link = (source, destination)
        if link in self.cut_links:
            self.stats.dropped_cut += 1
            return
        faults = self.links.get(link, self.default)
        rng = self.rng
        if faults.loss and rng.random() < faults.loss:
            self.stats.dropped_loss += 1
            return
        copies = 2 if faults.duplicate and rng.random() < faults.duplicate else 1
        if copies == 2:
            self.stats.duplicated += 1
        start = now
        if self.clogged_until:
            until = self.clogged_until.get(link)
            if until is not None:
                if until > now:
                    start = until
                else:
                    del self.clogged_until[link]
        delivery = Delivery(source, destination, payload, multicast)
        for _ in range(copies):
            deliver_at = start + rng.uniform(faults.delay_min_s, faults.delay_max_s)
            self._seq += 1
            heapq.heappush(self._heap, (deliver_at, self._seq, delivery))
            self.stats.copies_queued += 1

    def next_time(self) -> float | None:
        """When the next copy arrives, or None when nothing is in flight."""
        return self._heap[0][0] if self._heap else None

    def pop(self) -> tuple[float, Delivery] | None:
        """Take the next copy off the wire; None when it was dropped (receiver down)."""
        deliver_at, _, delivery = heapq.heappop(self._heap)
        if delivery.destination not in self._attached:
            self.stats.dropped_down += 1
            return None
        self.stats.copies_delivered += 1
        return deliver_at, delivery

    def in_flight(self) -> int:
        return len(self._heap)
