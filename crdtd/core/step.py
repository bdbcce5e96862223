"""One step of a node's owner: the inputs it takes, and the flush it gives back.

Theory of operation. Whoever owns a `Node` - the daemon's driver, the simulator, a
test - queues inputs on a `Stepper` as they arrive: datagrams, and typed requests
(`crdtd.core.requests`) each with a token of the owner's (a future, a number). Then
`Stepper.step` takes, in this order:

1. the queued requests, up to `STEP_REQUESTS_MAX` and the owner's time budget (each
   request is short itself; the rest wait for the next step). Adds of one variable
   queued one after another, each a single delta without a request id (64 clients
   adding to one counter), are applied as one run (`Node.add_each`): one record, one
   op run in the datagram, one `ValueChanged`, and each add answered with its own op;
   if the run is refused (a bad name or delta, a full node), each is applied alone,
   so that only the bad one fails;
2. at most `STEP_DATAGRAMS_MAX` queued datagrams;
3. the node's timer, if it is due;

and returns one `Flush`. The owner acts on it in its fixed order, and only in it:

1. persist ``records`` (one transaction: group commit) and sync them;
2. hand out ``answers`` (a `Ticket` result is answered by the event carrying it);
3. send ``datagrams``;
4. report ``events``.

So nothing is acknowledged, sent or shown before the state it depends on is on disk.
While the owner writes one flush, inputs keep queuing here, and the next step takes
them all: that is what batches ops into few commits and few datagrams. The daemon and
the simulator both step through this class, so the batching runs under seeded faults.
"""

from __future__ import annotations

import collections
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Generic, TypeGuard, TypeVar

from crdtd.core.events import Event
from crdtd.core.ids import Address, InvalidInput
from crdtd.core.records import Record
from crdtd.core.requests import Add, Request, Ticket, apply
from crdtd.core.settings import DATAGRAM_BYTES_MAX

if TYPE_CHECKING:
    from crdtd.core.node import Node
    from crdtd.core.outbox import Datagram

T = TypeVar("T")

INBOX_MAX = 8192
STEP_DATAGRAMS_MAX = 256  # keep one step short so that timers and requests stay timely
STEP_REQUESTS_MAX = 4096
DROPPED_OVERSIZED = "dropped_oversized"
DROPPED_INBOX_FULL = "dropped_inbox_full"


@dataclass(frozen=True, slots=True)
class Answer(Generic[T]):
    """What a request came to: *result*, or the *error* it raised (for its caller)."""

    token: T
    result: object
    error: Exception | None = None


@dataclass(frozen=True, slots=True)
class Flush(Generic[T]):
    """A step's outputs, in the order the owner must act on them."""

    records: list[Record]
    answers: list[Answer[T]]
    datagrams: list[Datagram]
    events: list[Event]

    @property
    def idle(self) -> bool:
        return not (self.records or self.answers or self.datagrams or self.events)


class Stepper(Generic[T]):
    """The inbox, the request queue and the step of one node."""

    def __init__(self, node: Node, inbox_max: int = INBOX_MAX) -> None:
        self.node = node
        self._inbox_max = inbox_max
        self._inbox: collections.deque[tuple[bytes, Address, bool]] = collections.deque()
        self._requests: collections.deque[tuple[Request, T]] = collections.deque()
        self._answers: list[Answer[T]] = []

    def offer_datagram(self, data: bytes, address: Address, multicast: bool) -> str | None:
        """Queue a datagram; or drop it, before any parsing, and say why (a counter)."""
        if len(data) > DATAGRAM_BYTES_MAX:
            return DROPPED_OVERSIZED
        if len(self._inbox) >= self._inbox_max:
            return DROPPED_INBOX_FULL
        self._inbox.append((data, address, multicast))
        return None

    def offer(self, request: Request, token: T) -> None:
        self._requests.append((request, token))

    @property
    def waiting(self) -> tuple[int, int]:
        """How many requests and datagrams are queued."""
        return len(self._requests), len(self._inbox)

    @property
    def queued(self) -> bool:
        """Inputs wait: step now, without waiting for the timer."""
        return bool(self._inbox or self._requests)

    def step(self, now: float, more: Callable[[], bool] | None = None) -> Flush[T]:
        """Take the queued inputs (requests while *more* says so, at least one) and a
        due timer; return the flush. A request that raises is answered with its error;
        a datagram or a timer that raises is a bug, and propagates."""
        node = self.node
        taken = 0
        requests = self._requests
        while requests and taken < STEP_REQUESTS_MAX:
            request, token = requests.popleft()
            if _single_add(request) and requests and _joins(requests[0][0], request):
                run = [token]
                deltas = [request.deltas[0]]
                while requests and len(run) < STEP_REQUESTS_MAX - taken:
                    following = requests[0][0]
                    if not _joins(following, request):
                        break
                    deltas.append(following.deltas[0])
                    run.append(requests.popleft()[1])
                self._add_each(request.variable, deltas, run, now)
                taken += len(run)
            else:
                self._apply(request, token, now)
                taken += 1
            if more is not None and not more():
                break
        for _ in range(min(len(self._inbox), STEP_DATAGRAMS_MAX)):
            data, address, multicast = self._inbox.popleft()
            node.receive_datagram(data, address, now, multicast)
        if node.get_timer() <= now:
            node.handle_timer(now)
        return self.flush()

    def _apply(self, request: Request, token: T, now: float) -> None:
        try:
            self._answers.append(Answer(token, apply(self.node, request, now)))
        except Exception as error:  # the caller's to report: bad input, a full node
            self._answers.append(Answer(token, None, error))

    def _add_each(self, variable: str, deltas: list[int], tokens: list[T], now: float) -> None:
        """Single adds of one variable as one run; refused, each alone."""
        try:
            tickets = self.node.add_each(variable, deltas, now)
        except InvalidInput:  # raised before anything changed: each alone is safe
            for delta, token in zip(deltas, tokens, strict=True):
                self._apply(Add(variable, (delta,)), token, now)
            return
        except Exception as error:  # as `_apply` does: the callers' to report
            self._answers.extend(Answer(token, None, error) for token in tokens)
            return
        answers = self._answers
        for token, ticket in zip(tokens, tickets, strict=True):
            answers.append(Answer(token, Ticket(ticket)))

    def flush(self) -> Flush[T]:
        """What the node has produced since the last flush (`step` ends with this; call
        it alone after `Node.checkpoint`)."""
        node = self.node
        answers, self._answers = self._answers, []
        return Flush(node.records_to_persist(), answers, node.datagrams_to_send(), node.events())


def _single_add(request: Request) -> TypeGuard[Add]:
    """An add of one delta without a request id: one that may join a run."""
    return type(request) is Add and request.request_id is None and len(request.deltas) == 1


def _joins(request: Request, first: Add) -> TypeGuard[Add]:
    return _single_add(request) and request.variable == first.variable
