"""The node: one replica's whole protocol state, driven by its caller.

Theory of operation. Inputs are method calls that each carry ``now``:
``receive_datagram``, ``handle_timer``, and the local commands ``create``, ``add``,
``add_many``, ``add_each``, ``start_verify`` and ``start_sync``. Outputs are pulled, in the order of
a `crdtd.core.step.Flush`: ``records_to_persist`` (write and sync them first),
``datagrams_to_send``, ``events``; then one timer is re-armed at ``get_timer()``.

The node routes; its sub-machines hold the protocol, each with its own state, each
returning effects that `Node._apply` carries out in one place:

- `crdtd.core.membership.Membership`: peers, identity conflicts, welcomes, and the
  unicast fan-out for networks where multicast does not pass;
- `crdtd.core.writes.Writes`: local adds, named adds, deletes, and the adds held in a
  barrier;
- `crdtd.core.replication.Replication`: peers' ops, bases, graves and digests, and gap
  repair (`crdtd.core.repair.Repairs`: a hole in an origin's nonces becomes a unicast
  ``Nack`` to one holder, retried until it is filled; a new node is just a node with
  every hole);
- `crdtd.core.announcer.Announcer`: our announce (a delta and a `Summary`, or
  everything), the summary exchange with peers, and the tail digests after a burst;
- `crdtd.core.verify.Verifier`: ``crdtctl verify``'s comparison with every peer;
- `crdtd.core.sync.Syncer`: the full sync (barriers), which owns the node's ``mode``
  and reads the node through `crdtd.core.barrier_io.NodeView`;
- `crdtd.core.replica.Replica`: the counters and the epoch, their restore and folds;
- `crdtd.core.replay.Replays`: each sender's replay window and its saved floor;
- `crdtd.core.outbox.Outbox`: the datagrams to send, encoded in the order asked for.

What stays here: the datagram's way in (verify, decode, replay window, peer, route),
the timer's, the local commands, and the records and events queued.

Rules:
- peer input never raises out of here: a bad datagram is dropped and counted in
  ``stats``; our own misuse (a bad name or delta from the local caller) raises
  `InvalidInput`;
- nothing here reads a clock or draws unseeded randomness: ``now`` comes in, and the
  random stream is the caller's;
- iteration is deterministic: dicts in insertion order or ``sorted``.
"""

from __future__ import annotations

import dataclasses
import random
from collections.abc import Iterable, Sequence

from crdtd.core import wire
from crdtd.core.announcer import Announcer, Multicast, Standing, Unicast
from crdtd.core.announcer import Effect as AnnounceEffect
from crdtd.core.effects import Count, Report
from crdtd.core.events import (
    ClaimRefused,
    DatagramRejected,
    Event,
    StateRewound,
    VariableAdded,
    VerifyFinished,
)
from crdtd.core.identity import SALT_BITS, choose_incarnation
from crdtd.core.ids import Address, Origin
from crdtd.core.membership import Effect as MemberEffect
from crdtd.core.membership import Forgotten, Joined, Membership, Welcome
from crdtd.core.messages import (
    Announce,
    Bases,
    DigestReply,
    DigestRequest,
    Graves,
    Message,
    Nack,
    OpBatch,
    PeerList,
    Summary,
    SummaryRequest,
    SyncStart,
)
from crdtd.core.modes import Mode
from crdtd.core.outbox import Datagram, Outbox
from crdtd.core.peers import Peer
from crdtd.core.records import (
    AddNamed,
    BaseFolded,
    Buried,
    EpochAdvanced,
    IncarnationStarted,
    OpRecorded,
    OpsRecorded,
    Record,
    ReplayFloor,
    VariableCreated,
)
from crdtd.core.repair import Effect as RepairEffect
from crdtd.core.repair import Repairs, SendBases, SendGraves, SendNack, SendOps
from crdtd.core.replay import Replays
from crdtd.core.replica import Replica
from crdtd.core.replication import (
    Created,
    NoteChange,
    Persist,
    Refused,
    Replication,
    Rewound,
)
from crdtd.core.replication import Effect as ReplicaEffect
from crdtd.core.settings import Key, Settings
from crdtd.core.sync import (
    AnnounceNow,
    Fold,
    Send,
    Syncer,
    Thaw,
    UseSerial,
)
from crdtd.core.sync import Effect as SyncEffect
from crdtd.core.verify import AskReports, Finished, SendReports, Verifier
from crdtd.core.verify import Effect as VerifyEffect
from crdtd.core.writes import Effect as WriteEffect
from crdtd.core.writes import Fresh, Spread, Writes

__all__ = ["Datagram", "Mode", "Node"]

Effect = (
    MemberEffect
    | ReplicaEffect
    | WriteEffect
    | RepairEffect
    | VerifyEffect
    | SyncEffect
    | AnnounceEffect
)
"""Whatever a sub-machine may ask of the node (`Node._apply` carries it out)."""


class Node:
    """One replica. See the module docstring for how to drive it."""

    def __init__(
        self,
        origin: Origin,
        settings: Settings,
        rng: random.Random,
        now: float,
        records: Iterable[Record] = (),
        seq_start: int = 0,
    ) -> None:
        """*origin* names this node and proposes its incarnation: the node takes it
        unless *records* show that this state started that one or a later one, and then
        takes a larger one (`crdtd.core.identity`); ``self.origin`` is the one it took.
        *seq_start* must exceed every datagram sequence number this node id used before
        (the driver derives it from the wall clock): barrier ids are built from it."""
        self.node_id = origin.node_id
        self.settings = settings
        self.stats: dict[str, int] = {}
        self._replica = Replica()
        self.counters = self._replica.counters
        self._rng = rng
        self._members = Membership(self.node_id, settings, now)
        self._replays = Replays(4 * settings.peers_max, now)
        self._records: list[Record] = []
        self._events: list[Event] = []
        self._repairs = Repairs(settings, rng)
        self._replication = Replication(settings, self.counters, self.peers, self._repairs)
        self._tickets = 0
        self._writes = Writes(settings, self.counters)
        self._sync = Syncer(self, now)
        self._used_incarnation = 0
        for record in records:
            self._restore(record)
        self._records.clear()
        incarnation = choose_incarnation(
            origin.incarnation, self._used_incarnation, rng.getrandbits(SALT_BITS)
        )
        self.origin = Origin(self.node_id, incarnation)
        self._members.origin = self._replication.origin = self._writes.origin = self.origin
        self._verifier = Verifier(self.origin, settings.verify_timeout_s, now)
        self._outbox = Outbox(self.origin, wire.Encoder(self.origin, settings.keys, seq_start))
        self._announcer = Announcer(settings, rng, self._replica, self._current_encoder, now)
        self._announcer.restored()
        # On disk in the first flush, before the first datagram: the next boot of this
        # state, or of a copy of it, takes a larger incarnation.
        self._records.append(IncarnationStarted(incarnation))

    # --- inputs -------------------------------------------------------------------

    def receive_datagram(
        self, data: bytes, address: Address, now: float, via_multicast: bool = False
    ) -> None:
        """Take one datagram from the network. Never raises for bad input."""
        try:
            envelope = wire.decode(data, self.settings.keys)
        except wire.MalformedDatagram as error:
            self._reject(error.reason, address, error.key_id)
            return
        sender = envelope.sender
        if sender == self.origin:
            return  # our own multicast, looped back (a copy of us has another origin)
        if self.settings.keys and not self._replays.accept(sender, envelope.seq):
            self._reject("replayed", address)
            return
        peer = self._touch_peer(sender, address, now)
        if peer is None:
            return
        if via_multicast:
            peer.multicast_at = now
        elif isinstance(envelope.message, Announce | PeerList) and not self._asked(peer, now):
            peer.unicast_copies += 1
            peer.unicast_copy_at = now
        self._count("datagrams_received")
        self._dispatch(envelope.message, peer, now)
        self._apply(self._sync.progress(now), now)

    def handle_timer(self, now: float) -> None:
        """Do whatever is due: announce, ask for repairs, expire peers, drive barriers."""
        self._apply(self._members.expire(now), now)
        self._apply(self._repairs.ask(self.counters, self.peers, now), now)
        self._apply(self._announcer.tail(self._standing(), now), now)
        self._apply(self._sync.handle_timer(now), now)
        self._apply(self._verifier.handle_timer(self.counters, now), now)
        self._records.extend(self._replays.floors(now))
        if self._announcer.due(now):
            members = self._members
            members.plan_fanout(now)
            payloads = self._announce(now)
            if members.fanout or members.candidates:
                peer_list = self._outbox.encoder.peer_list(members.peer_list(now))
                for address in members.fanout:
                    self._outbox.unicast(peer_list, address)
                # Gossiped addresses get a probe, not a copy of everything: only once
                # one answers as a peer does it get more (a PeerList cannot aim us).
                limited: list[MemberEffect] = []
                for address in members.candidates:
                    if members.may_welcome(address, now, limited):
                        self._outbox.unicast([*payloads, *peer_list], address)
                self._apply(limited, now)

    def create(self, variable: str, now: float) -> bool:
        """Create *variable* here and everywhere; False (a no-op) if it exists.

        ``variables_max`` bounds the names made *here*: at the limit a new one raises
        `InvalidInput`. Names made elsewhere are kept up to
        `crdtd.core.replication.VARIABLES_HARD_FACTOR` times the limit, so two halves
        of a cluster that each stayed under it still merge into one set of variables.
        """
        created, effects = self._writes.create(variable, self.mode)
        self._apply(effects, now)
        return created

    def delete(self, variable: str, now: float) -> bool:
        """Delete *variable* here and everywhere; False (a no-op) if it is not shown.

        The ops this node holds of it in sequence count zero from now on, on every
        node that learns the grave (`crdtd.core.counters`); an add it had not seen yet,
        or any later one, shows the variable again, starting from zero.
        """
        deleted, effects = self._writes.delete(variable)
        self._apply(effects, now)
        return deleted

    def add(self, variable: str, delta: int, now: float, request_id: str | None = None) -> int:
        """Add *delta* to *variable* (created if new); `AddApplied` carries the ticket.

        During a barrier the add is held, and applied when this node is back in Work
        (at most ``sync_freeze_max_s`` later): never refused, never dropped. An add its
        client named with *request_id* is applied once (`crdtd.core.writes`).
        """
        ticket = self._tickets + 1
        effects = self._writes.add(ticket, variable, delta, request_id, self.mode)
        self._tickets = ticket
        self._apply(effects, now)
        return ticket

    def add_many(self, variable: str, deltas: Sequence[int], now: float) -> int:
        """Add each of *deltas* to *variable*, in order, as ops of their own; one ticket,
        whose `AddApplied` carries the last op (the others are durable with it).

        For bulk loads (``populate``): the name is checked once and one `AddApplied`
        and one `ValueChanged` stand for the whole batch. During a barrier each op is
        held like any `add`, with a ticket of its own; the last one is returned.
        """
        count = 1 if self.mode is Mode.WORK else len(deltas)
        tickets = range(self._tickets + 1, self._tickets + 1 + count)
        effects = self._writes.add_many(tickets, variable, deltas, self.mode)
        self._tickets = tickets[-1]
        self._apply(effects, now)
        return tickets[-1]

    def add_each(self, variable: str, deltas: Sequence[int], now: float) -> range:
        """Several adds of one variable, each of one delta and a ticket of its own, as
        one run: one record and one `ValueChanged` for them all, and an `AddApplied`
        per ticket with that add's op and the value after it. The same outcome as an
        `add` per delta, in order, at a fraction of the cost (`crdtd.core.step` takes
        a step's queued adds of one variable so). Raises `InvalidInput` before it
        changes anything."""
        tickets = range(self._tickets + 1, self._tickets + 1 + len(deltas))
        effects = self._writes.add_many(tickets, variable, deltas, self.mode)
        self._tickets = tickets[-1]
        self._apply(effects, now)
        return tickets

    def start_verify(self, now: float) -> int:
        """Ask every live peer for its reports; `VerifyFinished` carries the ticket."""
        self._tickets += 1
        effects = self._verifier.start(self._tickets, self.live_peers(), self.counters, now)
        self._apply(effects, now)
        return self._tickets

    def start_sync(self, now: float) -> int:
        """Run a full sync now; `SyncFinished` lists the returned ticket."""
        self._tickets += 1
        self._apply(self._sync.start(self._tickets, now), now)
        return self._tickets

    def set_keys(self, keys: tuple[Key, ...]) -> None:
        """Rotate cluster keys: sign with ``keys[0]`` from now on, accept any of them."""
        self.settings = dataclasses.replace(self.settings, keys=keys)
        self._members.settings = self._replication.settings = self.settings
        self._writes.settings = self.settings
        self._outbox.encoder = wire.Encoder(self.origin, keys, self._outbox.encoder.seq)

    # --- outputs ------------------------------------------------------------------

    def records_to_persist(self) -> list[Record]:
        if self._records:
            self._records.extend(self._replays.floors())  # one transaction either way
        records, self._records = self._records, []
        return records

    def checkpoint(self) -> None:
        """Ask for the records otherwise written lazily (the replay floors); call it
        before a clean stop, then flush once more."""
        self._records.extend(self._replays.floors())

    def datagrams_to_send(self) -> list[Datagram]:
        out, batched = self._outbox.drain(self._members.fanout)
        if batched:
            self._count("ops_batches_sent")
        self._count("datagrams_sent", len(out))
        return out

    def events(self) -> list[Event]:
        events, self._events = self._events, []
        return events

    def get_timer(self) -> float:
        """The one next deadline at which ``handle_timer`` must be called."""
        deadlines = self._announcer.deadlines()
        if self.settings.keys:
            deadlines.append(self._replays.deadline)
        deadlines.extend(self._repairs.deadlines())
        deadlines.extend(self._members.deadlines())
        deadlines.extend(self._sync.deadlines())
        deadlines.extend(self._verifier.deadlines())
        return min(deadlines)

    # --- queries ------------------------------------------------------------------

    @property
    def mode(self) -> Mode:
        """Work, or frozen in a barrier (Sync, then Ready); `crdtd.core.sync` moves it."""
        return self._sync.mode

    @property
    def epoch(self) -> int:
        return self._replica.epoch

    def variables(self) -> list[str]:
        return self._replica.variables()

    def value(self, variable: str) -> int | None:
        return self._replica.value(variable)

    def before(self, variable: str) -> int | None:
        return self._replica.before(variable)

    def history(self, variable: str) -> list[tuple[Origin, int, int]] | None:
        return self._replica.history(variable)

    def ops_in_log(self) -> int:
        return self._replica.ops_in_log()

    # --- local state changes ------------------------------------------------------

    def _restore(self, record: Record) -> None:
        if isinstance(
            record, VariableCreated | OpRecorded | OpsRecorded | BaseFolded | Buried | EpochAdvanced
        ):
            made = self._replica.restore(record)
            if made is not None:
                self._writes.counted(made)
        elif isinstance(record, AddNamed):
            self._writes.remember(record)
        elif isinstance(record, ReplayFloor):
            self._replays.restore(record)
        else:
            self._used_incarnation = max(self._used_incarnation, record.incarnation)

    def _created(self, variable: str, local: bool) -> None:
        """*variable*'s counter was just made (by a write, a peer, or the restore)."""
        self._writes.counted(variable)  # a held add's name now counts as a counter
        self._records.append(VariableCreated(variable))
        if not self.counters[variable].buried:  # (a grave of a name new here)
            self._events.append(VariableAdded(variable))
        if local:
            self._outbox.fresh(variable)

    # --- peers --------------------------------------------------------------------

    def _touch_peer(self, sender: Origin, address: Address, now: float) -> Peer | None:
        peer, effects = self._members.touch(sender, address, now)
        self._apply(effects, now)
        return peer

    def conflicts(self, now: float) -> list[str]:
        """Node ids that two live origins hold right now (ours included)."""
        return self._members.conflicts(now)

    def live_peers(self) -> list[Peer]:
        return self._members.live_peers()

    def pace(self) -> float:
        """Our announce pace for the cluster we know (`Membership.pace`)."""
        return self._members.pace()

    def forgotten_at(self, peer: Peer) -> float:
        """When *peer* is forgotten if it stays silent (`Membership.forgotten_at`)."""
        return self._members.forgotten_at(peer)

    @property
    def peers(self) -> dict[Origin, Peer]:
        return self._members.peers

    def _welcome(self, address: Address) -> None:
        """The first datagram of our announce, by unicast to *address*."""
        self._outbox.unicast(self._announcer.full(self._standing())[:1], address)

    # --- messages -----------------------------------------------------------------

    def _dispatch(self, message: Message, peer: Peer, now: float) -> None:
        if isinstance(message, OpBatch):
            self._apply(self._replication.on_ops(message, peer, now), now)
        elif isinstance(message, Announce):
            self._apply(self._replication.on_announce(message, peer, now), now)
        elif isinstance(message, Summary):
            self._members.heard_summary(peer, message.mode, now)
            self._apply(self._announcer.on_summary(message, peer, now), now)
        elif isinstance(message, SummaryRequest):
            self._apply(self._announcer.on_summary_request(self._standing(), peer, now), now)
        elif isinstance(message, Nack):
            self._apply(self._repairs.serve(message, peer.address, self.counters, now), now)
        elif isinstance(message, Bases):
            self._apply(self._replication.on_bases(message, peer, now), now)
        elif isinstance(message, Graves):
            self._apply(self._replication.on_graves(message, peer, now), now)
        elif isinstance(message, PeerList):
            self._apply(self._members.on_peer_list(message, peer, now), now)
        elif isinstance(message, DigestRequest):
            answer = self._verifier.on_request(message.token, peer, self.counters, now)
            self._apply(answer, now)
        elif isinstance(message, DigestReply):
            self._apply(self._verifier.on_reply(message, peer, now), now)
        elif isinstance(message, SyncStart) and (peer.announced_at is None or peer.suspected):
            self._count("barrier_start_from_stranger")  # only a live peer may freeze us
        elif isinstance(message, wire.SyncMessage):
            self._apply(self._sync.receive(message, peer, now), now)
        else:
            self._count("messages_unhandled")  # decodable but not ours to act on

    def _asked(self, peer: Peer, now: float) -> bool:
        """Did we ask *peer* for its full announce lately? Its unicast announces are
        the answer then, not the copies a peer sends where it hears no multicast."""
        asked = peer.summary_asked_at
        return asked is not None and now - asked < self.settings.announce_interval_s

    def summary_hash(self) -> bytes:
        """The hash our summary carries (`crdtd.core.announcer`)."""
        return self._announcer.summary_hash()

    def _standing(self) -> Standing:
        return Standing(
            self.origin,
            self.mode,
            self.epoch,
            self._sync.barrier,
            self.live_peers(),
            self.pace(),
        )

    def _current_encoder(self) -> wire.Encoder:
        return self._outbox.encoder

    def _announce(self, now: float) -> list[bytes]:
        """Our announce now (`crdtd.core.announcer`); its datagrams."""
        payloads, effects = self._announcer.announce(self._standing(), now)
        self._apply(effects, now)
        return payloads

    # --- for the barriers: what crdtd.core.sync reads, and its effects ------------

    @property
    def last_seq(self) -> int:
        """The latest datagram sequence number: it grows across restarts (*seq_start*)."""
        return self._outbox.encoder.seq

    def _apply(self, effects: Sequence[Effect], now: float) -> None:
        """Carry out what a sub-machine asked for, in its order: the one place where
        their effects become records, datagrams, events and calls on the others."""
        for effect in effects:
            match effect:
                case Persist(record):
                    self._records.append(record)
                case Report(event):
                    self._events.append(event)
                case Count(name, amount):
                    self._count(name, amount)
                case Created(variable, local):
                    self._announcer.touch(variable)
                    self._created(variable, local)
                    if local:
                        self._announcer.burst(variable, now)
                case NoteChange(variable):
                    self._sync.note_change()
                    if variable:
                        self._announcer.touch(variable)
                case Fresh(variable, first, deltas):
                    self._announcer.touch(variable)
                    self._outbox.fresh(variable, first, deltas)
                    self._announcer.burst(variable, now)
                case Multicast(payloads):
                    self._outbox.multicast(payloads)
                case Unicast(payloads, address):
                    self._outbox.unicast(payloads, address)
                case Spread(grave):
                    self._outbox.multicast(self._outbox.encoder.graves([grave]))
                case Refused(kind, variable, nonce, peer):
                    self._count("claims_refused")
                    if self._members.due_report("claim", peer.node_id, now):
                        event = ClaimRefused(kind, variable, nonce, peer.node_id, peer.address)
                        self._events.append(event)
                case Rewound(origin, variable, held, seen, peer):
                    # Our state is older than the one that issued those ops; repair
                    # brings them back: say so.
                    self._count("state_rewound")
                    if self._members.due_report("rewound", self.node_id, now):
                        event = StateRewound(origin, variable, held, seen, peer.node_id)
                        self._events.append(event)
                case Welcome(address):
                    self._welcome(address)
                case Joined(peer):
                    self._apply(self._sync.pull_in(peer, now), now)
                case Forgotten(origin, address, address_free):
                    self._verifier.forget(origin)
                    if address_free:
                        self._repairs.forget(address)
                    self._sync.drop_member(origin)
                case (
                    SendNack()
                    | SendOps()
                    | SendBases()
                    | SendGraves()
                    | AskReports()
                    | SendReports()
                    | Send()
                ):
                    self._outbox.send(effect)
                case Finished(ticket, reports, silent):
                    conflicts = tuple(self.conflicts(now))
                    self._events.append(VerifyFinished(ticket, reports, silent, conflicts))
                case AnnounceNow():
                    self._announce(now)
                case Fold(cut, epoch):
                    folded = self._replica.fold(cut, epoch)
                    if any(isinstance(record, BaseFolded) for record in folded):
                        self._sync.note_change()
                    self._records += folded
                case Thaw():
                    self._apply(self._writes.thaw(), now)
                case UseSerial(serial):
                    encoder = self._outbox.encoder
                    encoder.seq = max(encoder.seq, serial)

    # --- plumbing -----------------------------------------------------------------

    def _reject(self, reason: str, address: Address, key_id: str | None = None) -> None:
        self._count(f"rejected_{reason}")
        self._events.append(DatagramRejected(reason, address, key_id))

    def _count(self, name: str, amount: int = 1) -> None:
        self.stats[name] = self.stats.get(name, 0) + amount
