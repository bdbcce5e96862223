"""Membership: who our peers are, who gets unicast copies, and who gets a welcome.

Theory of operation. A peer is an origin (a node id and an incarnation), created by
its first datagram that passed the wire checks (`Membership.touch`), suspected after
``peer_suspect_s`` and forgotten after ``peer_timeout_s`` of silence, both times the
slower of our announce pace (`Membership.pace`) and the pace we hear it announce at
(`Membership.heard_summary`, `Membership.expire`), or pushed out to make room. A
restarted node is a new peer; its old self is *superseded* (suspected, and its id held
by another origin) and goes first when room is needed. Two live origins of one node id
are an identity conflict, reported at most every ``REPORT_INTERVAL_S``.

Multicast-less networks: a peer we have not heard by multicast lately, one that told
us it does not hear ours, and a configured seed not yet heard from get unicast copies
of what we multicast (`Membership.plan_fanout`). Addresses gossiped in a `PeerList`
become *candidates*: they get a probe (our announce's first datagram) but no copies
until one answers as a peer. Welcomes and probes answer datagrams anybody can send,
so they are rate limited: once per announce interval per address, `WELCOMES_PER_S`
in all.

Every call returns effects for the node to carry out, in order: `Report`, `Count`,
`Welcome` (send our announce's first datagram to an address), `Joined` (a new peer,
for the barrier) and `Forgotten` (a peer gone, for verify, repair and the barrier).
"""

from __future__ import annotations

from dataclasses import dataclass

from crdtd.core.effects import Count, Report
from crdtd.core.events import DatagramRejected, IdentityConflict, PeerJoined, PeerLost
from crdtd.core.identity import REPORT_INTERVAL_S, overlapping
from crdtd.core.ids import Address, Origin
from crdtd.core.messages import PeerList
from crdtd.core.modes import Mode
from crdtd.core.peers import Peer
from crdtd.core.settings import Settings, pace

WELCOMES_PER_S = 32
"""Unicast announces to newcomers and probes of gossiped addresses, in total: each one
answers a datagram anybody can send, so they are a bucket, not a reflex."""
ORIGINS_PER_ID_MAX = 4
"""Origins of one node id kept as peers: a restart's old self, a clone or two; a sender
inventing more of one id pushes out its own least recently heard, not other nodes."""


@dataclass(frozen=True, slots=True)
class Welcome:
    """Send the first datagram of our announce to *address* by unicast."""

    address: Address


@dataclass(frozen=True, slots=True)
class Joined:
    """*peer* is new: a running barrier may pull it in."""

    peer: Peer


@dataclass(frozen=True, slots=True)
class Forgotten:
    """The peer *origin* is gone; *address_free*: no other peer uses its address."""

    origin: Origin
    address: Address
    address_free: bool


Effect = Report | Count | Welcome | Joined | Forgotten


class Membership:
    """The peers table of one node, and the unicast fan-out that follows from it."""

    def __init__(self, node_id: str, settings: Settings, now: float) -> None:
        self.node_id = node_id
        self.origin = Origin(node_id, 0)  # set by the node once it chose its incarnation
        self.booted_at = now
        self.settings = settings
        self.peers: dict[Origin, Peer] = {}
        self.fanout: list[Address] = list(settings.seeds)
        self.candidates: dict[Address, float] = {}  # gossiped addresses -> expiry
        self._welcomed: dict[Address, float] = {}  # -> when we last sent it an announce
        self._welcome_tokens = (float(WELCOMES_PER_S), now)
        self._holders: dict[str, list[Origin]] = {}  # node id -> its origins in peers
        self._reported: dict[tuple[str, str], float] = {}  # (what, node id) -> when

    # --- peers come and go ------------------------------------------------------------

    def touch(
        self, sender: Origin, address: Address, now: float
    ) -> tuple[Peer | None, list[Effect]]:
        """The peer *sender* is, created on its first datagram (None: no room).

        Peers are origins, not node ids: a restarted node is a new peer (the old one
        is suspected at once and expires), and two live holders of one id are two
        peers, whose ops both count. No incarnation is ever refused for being lower.
        """
        effects: list[Effect] = []
        peer = self.peers.get(sender)
        if peer is None:
            if not self._room_for(sender, now, effects):
                rejected = DatagramRejected("peers_max_reached", address)
                effects += [Count("rejected_peers_max_reached"), Report(rejected)]
                return None, effects
            peer = Peer(sender.node_id, sender.incarnation, address, now, first_seen=now)
            for other in self._holders.get(sender.node_id, ()):
                self.peers[other].suspected = True  # superseded, unless it speaks again
            self._holders.setdefault(sender.node_id, []).append(sender)
            self.candidates.pop(address, None)
            self.peers[sender] = peer
            effects.append(Report(PeerJoined(sender.node_id, sender.incarnation, address)))
            # Tell the newcomer what we hold right away, by unicast: it may be joining.
            # One datagram of it: the rest comes with the next multicast announce, and
            # a spoofed newcomer gets no more out of us than it sent.
            if self.may_welcome(address, now, effects):
                effects.append(Welcome(address))
            effects.append(Joined(peer))
        peer.last_seen = now
        peer.address = address
        peer.suspected = False
        if sender.node_id == self.node_id or len(self._holders[sender.node_id]) > 1:
            self._check_identity(peer, address, now, effects)
        return peer, effects

    def pace(self) -> float:
        """Our announce pace (`crdtd.core.settings.pace`) for the cluster we know: us
        and every node id we hold a peer of, suspected ones too until they are
        forgotten, so that one silent node does not speed up the rest at once."""
        others = len(self._holders) - (self.node_id in self._holders)
        return pace(1 + others)

    def heard_summary(self, peer: Peer, mode: Mode, now: float) -> None:
        """*peer* sent a summary, one per announce round: the gap since its last one
        in Work is its pace as we hear it. Its table may name more nodes than ours (a
        one-way split, or ids only it hears), so we time its silence by the slower of
        the two paces, never ours alone. A gap that was a silence (a partition it came
        back from) counts too: it lasts only until its next summary."""
        interval = self.settings.announce_interval_s
        last = peer.summary_at
        if last is not None and now - last < interval / 2:
            return  # the same round's copy (multicast and unicast), or a barrier's
        peer.summary_at = now
        if last is None or mode is not Mode.WORK:
            return
        if now - last < self._silences(peer, self.pace())[1]:
            peer.pace_seen = (now - last) / interval

    def expire(self, now: float) -> list[Effect]:
        """Suspect the peers silent for ``peer_suspect_s``; forget those silent for
        ``peer_timeout_s``; both times the pace the peer announces at (`_silences`)."""
        # Compare deadlines exactly as the node's timer computes them, so float
        # rounding can never leave a deadline due but unhandled (a timer spin).
        # A peer forgotten lowers the pace, which can make others due: go again until
        # the pace holds (each round forgets one at least, so this ends).
        effects: list[Effect] = []
        while True:
            pace = self.pace()
            for origin, peer in list(self.peers.items()):
                suspect_s, timeout_s = self._silences(peer, pace)
                if now >= peer.last_seen + timeout_s:
                    self._forget(origin, now, effects)
                elif now >= peer.last_seen + suspect_s:
                    peer.suspected = True
            if self.pace() == pace:
                break
        if len(self._reported) > self.settings.peers_max:  # ids that came and went
            self._reported = {
                key: at for key, at in self._reported.items() if now < at + REPORT_INTERVAL_S
            }
        return effects

    def deadlines(self) -> list[float]:
        pace = self.pace()
        deadlines = []
        for peer in self.peers.values():
            suspect_s, timeout_s = self._silences(peer, pace)
            deadlines.append(peer.last_seen + (timeout_s if peer.suspected else suspect_s))
        return deadlines

    def forgotten_at(self, peer: Peer) -> float:
        """When *peer* is forgotten if it stays silent (`expire`)."""
        return peer.last_seen + self._silences(peer, self.pace())[1]

    def _silences(self, peer: Peer, pace: float) -> tuple[float, float]:
        """How long *peer* may be silent before it is suspected, and forgotten: the
        settings times the slower of our pace and the pace we hear it announce at."""
        factor = max(pace, peer.pace_seen)
        return self.settings.peer_suspect_s * factor, self.settings.peer_timeout_s * factor

    def live_peers(self) -> list[Peer]:
        return [peer for _, peer in sorted(self.peers.items()) if not peer.suspected]

    def _room_for(self, sender: Origin, now: float, effects: list[Effect]) -> bool:
        """Make room for a new peer *sender* if that is fair: at ``peers_max`` a
        superseded origin (a restart's old self) goes first; an id at
        `ORIGINS_PER_ID_MAX` loses its least recently heard origin."""
        same = self._holders.get(sender.node_id, [])
        if len(same) >= ORIGINS_PER_ID_MAX:
            self._forget(min(same, key=lambda o: self.peers[o].last_seen), now, effects)
        if len(self.peers) < self.settings.peers_max:
            return True
        superseded = [o for o, p in self.peers.items() if self.superseded(p)]
        if not superseded:
            return False
        self._forget(min(superseded, key=lambda o: self.peers[o].last_seen), now, effects)
        return True

    def _forget(self, origin: Origin, now: float, effects: list[Effect]) -> None:
        peer = self.peers.pop(origin)
        holders = self._holders[origin.node_id]
        holders.remove(origin)
        if not holders:
            del self._holders[origin.node_id]
        free = not any(p.address == peer.address for p in self.peers.values())
        effects.append(Forgotten(origin, peer.address, free))
        effects.append(Report(PeerLost(origin.node_id, now - peer.last_seen)))

    def superseded(self, peer: Peer) -> bool:
        """A suspected origin whose node id another origin holds: a restart's old self."""
        return peer.suspected and len(self._holders.get(peer.node_id, ())) > 1

    # --- identity ---------------------------------------------------------------------

    def _same_id(self, node_id: str, now: float) -> list[tuple[Origin, float, float]]:
        """Every origin of *node_id* we know: ``(origin, first heard, last heard)``."""
        known = [
            (origin, self.peers[origin].first_seen, self.peers[origin].last_seen)
            for origin in self._holders.get(node_id, ())
        ]
        if node_id == self.node_id:
            known.append((self.origin, self.booted_at, now))
        return known

    def _check_identity(
        self, peer: Peer, address: Address, now: float, effects: list[Effect]
    ) -> None:
        """Report two live holders of one node id (at most every REPORT_INTERVAL_S)."""
        me = peer.origin
        rivals = [
            origin
            for origin, first, last in self._same_id(peer.node_id, now)
            if origin != me and overlapping(first, last, peer.first_seen, now)
        ]
        if not rivals:
            return
        effects.append(Count("identity_conflicts"))
        if self.due_report("identity", peer.node_id, now):
            origins = tuple(sorted([me, *rivals]))
            ours = peer.node_id == self.node_id
            effects.append(Report(IdentityConflict(peer.node_id, origins, address, ours)))

    def conflicts(self, now: float) -> list[str]:
        """Node ids that two live origins hold right now (ours included)."""
        found = []
        for node_id in sorted(self._holders):
            live = [
                (first, last)
                for origin, first, last in self._same_id(node_id, now)
                if origin == self.origin or not self.peers[origin].suspected
            ]
            if any(overlapping(*a, *b) for i, a in enumerate(live) for b in live[i + 1 :]):
                found.append(node_id)
        return found

    def due_report(self, what: str, node_id: str, now: float) -> bool:
        """Whether a report of *what* about *node_id* is due (one per REPORT_INTERVAL_S)."""
        key = (what, node_id)
        if now < self._reported.get(key, -REPORT_INTERVAL_S) + REPORT_INTERVAL_S:
            return False
        self._reported[key] = now
        return True

    # --- welcomes, fan-out and gossip -------------------------------------------------

    def may_welcome(self, address: Address, now: float, effects: list[Effect]) -> bool:
        """Whether a unicast announce to *address* fits: once per announce interval per
        address, and `WELCOMES_PER_S` in all (a spoofed newcomer must not make us a
        reflector)."""
        if now - self._welcomed.get(address, -1e300) < self.settings.announce_interval_s:
            effects.append(Count("welcomes_limited"))
            return False
        tokens, then = self._welcome_tokens
        tokens = min(float(WELCOMES_PER_S), tokens + (now - then) * WELCOMES_PER_S)
        if tokens < 1.0:
            self._welcome_tokens = (tokens, now)
            effects.append(Count("welcomes_limited"))
            return False
        self._welcome_tokens = (tokens - 1.0, now)
        self._welcomed.pop(address, None)
        self._welcomed[address] = now
        while len(self._welcomed) > self.settings.peers_max:
            del self._welcomed[next(iter(self._welcomed))]
        return True

    def plan_fanout(self, now: float) -> None:
        """Who gets unicast copies of our multicast: peers we never (or no longer) hear
        by multicast, peers that told us they do not hear ours, and seeds not yet heard
        from. (Gossiped addresses only get probes: see `Node.handle_timer`.)"""
        deaf_s = self.settings.multicast_quiet_s(self.pace())
        known = {peer.address for peer in self.peers.values()}
        # Suspected peers too: they may be silent only because we stopped sending.
        targets = [
            peer.address
            for _, peer in sorted(self.peers.items())
            if not self.superseded(peer)
            and (
                self.quiet_multicast(peer, now)
                or (peer.deaf_at is not None and now - peer.deaf_at < deaf_s)
            )
        ]
        for address, expiry in list(self.candidates.items()):
            if now >= expiry:
                del self.candidates[address]
        targets += [a for a in self.settings.seeds if a not in known]
        self.fanout = list(dict.fromkeys(targets))

    def peer_list(self, now: float) -> list[tuple[str, str, int, bool]]:
        """What our `PeerList` says: every peer but superseded ones, and whether we
        hear it by multicast."""
        # Suspected peers too: a node that cannot hear a peer's multicast suspects it
        # just when it must tell that peer so.
        return [
            (p.node_id, p.address[0], p.address[1], not self.quiet_multicast(p, now))
            for _, p in sorted(self.peers.items())
            if not self.superseded(p)
        ]

    def quiet_multicast(self, peer: Peer, now: float) -> bool:
        """True when no multicast came from *peer* lately (or ever, after a grace)."""
        pace = max(self.pace(), peer.pace_seen)
        if peer.multicast_at is None:
            return now - peer.first_seen >= self.settings.multicast_grace_s(pace)
        return now - peer.multicast_at >= self.settings.multicast_quiet_s(pace)

    def on_peer_list(self, message: PeerList, peer: Peer, now: float) -> list[Effect]:
        """A peer's gossip: note whether it hears us; probe the addresses new to us."""
        effects: list[Effect] = []
        known = {peer.address for peer in self.peers.values()}
        for node_id, host, port, heard in message.peers:
            address = (host, port)
            if node_id == self.node_id and not heard:
                peer.deaf_at = now  # it does not hear our multicast: fan out to it
            if node_id == self.node_id or address in known or address in self.candidates:
                continue
            if len(self.candidates) >= self.settings.peers_max:
                effects.append(Count("candidates_max_reached"))
                return effects
            self.candidates[address] = now + self.settings.peer_timeout_s
            if self.may_welcome(address, now, effects):  # a probe: a joining node hears us
                effects.append(Welcome(address))
        return effects
