"""The node's way out: datagrams queued in the order they were asked for, encoded once.

Sub-machines ask to send with effects (`SendNack`, `SendOps`, ...); `Outbox.send`
encodes each one with the node's one `crdtd.core.wire.Encoder`, whose sequence numbers
the replay windows of the receivers depend on. Local ops are not sent one by one: they
gather per variable until the flush and leave as one op batch (`Outbox.drain`), the
step's one multicast of fresh ops. With unicast fan-out (networks where multicast does
not pass) every multicast datagram is also sent to each fan-out address.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import dataclass

from crdtd.core import wire
from crdtd.core.barrier_io import Send
from crdtd.core.ids import Address, Origin
from crdtd.core.messages import OpGroup
from crdtd.core.repair import SendBases, SendGraves, SendNack, SendOps
from crdtd.core.verify import AskReports, SendReports

Sending = SendNack | SendOps | SendBases | SendGraves | AskReports | SendReports | Send
"""The effects that only put datagrams on the queue."""


@dataclass(frozen=True, slots=True)
class Datagram:
    """A payload to send; ``destination`` None means the multicast group."""

    payload: bytes
    destination: Address | None


class Outbox:
    __slots__ = ("_fresh", "_origin", "_queued", "encoder")

    def __init__(self, origin: Origin, encoder: wire.Encoder) -> None:
        self._origin = origin
        self.encoder = encoder
        self._queued: list[Datagram] = []
        self._fresh: dict[str, list[tuple[int, int]]] = {}

    def unicast(self, payloads: Sequence[bytes], address: Address) -> None:
        self._queued.extend(Datagram(payload, address) for payload in payloads)

    def multicast(self, payloads: Sequence[bytes]) -> None:
        self._queued.extend(Datagram(payload, None) for payload in payloads)

    def fresh(self, variable: str, first: int = 0, deltas: Sequence[int] = ()) -> None:
        """Send the ops ``first, first + 1, ...`` of *variable* (their *deltas*) in this
        flush's batch; without them, still name *variable* there (a new variable is
        announced by its first batch)."""
        self._fresh.setdefault(variable, []).extend(zip(itertools.count(first), deltas))

    def send(self, effect: Sending) -> None:
        encoder = self.encoder
        match effect:
            case SendNack(ranges, address):
                self.unicast(encoder.nack(ranges), address)
            case SendOps(groups, address):
                self.unicast(encoder.op_batch(groups), address)
            case SendBases(entries, address):
                self.unicast(encoder.bases(entries), address)
            case SendGraves(graves, address):
                self.unicast(encoder.graves(graves), address)
            case AskReports(token, addresses):
                request = encoder.digest_request(token)
                self._queued.extend(Datagram(request, address) for address in addresses)
            case SendReports(token, reports, address):
                self.unicast(encoder.digest_reply(token, reports), address)
            case Send(message, address):
                self._queued.append(Datagram(encoder.sync(message), address))

    def drain(self, fanout: Sequence[Address]) -> tuple[list[Datagram], bool]:
        """Everything queued, the fresh ops' batch last, each multicast datagram copied
        to every *fanout* address; and whether there was such a batch."""
        batched = bool(self._fresh)
        if batched:
            groups = [
                OpGroup(variable, self._origin, tuple(ops)) for variable, ops in self._fresh.items()
            ]
            self._fresh = {}
            self.multicast(self.encoder.op_batch(groups))
        out, self._queued = self._queued, []
        if fanout:
            out += [
                Datagram(datagram.payload, address)
                for datagram in out
                if datagram.destination is None
                for address in fanout
            ]
        return out, batched
