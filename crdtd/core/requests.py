"""The requests an owner hands a node, typed, and the one place that applies them.

A request is a frozen value, not a closure: it can be queued, traced and replayed,
and what the control side may ask of a node is this list and nothing else. Writes
that complete later (an add is answered once its op is durable, a sync once its
barrier ended, a verify once the peers answered) return a `Ticket`; the event that
carries the ticket's number answers them (`crdtd.core.events`). Reads return a frozen
view (`crdtd.core.view`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from crdtd.core.settings import Key
from crdtd.core.view import history_page, node_state, variable_view

if TYPE_CHECKING:
    from crdtd.core.node import Node


@dataclass(frozen=True, slots=True)
class Ticket:
    """Answered later, by the event whose ``ticket`` (or ``tickets``) has this number."""

    number: int


@dataclass(frozen=True, slots=True)
class Create:
    variable: str


@dataclass(frozen=True, slots=True)
class Delete:
    variable: str


@dataclass(frozen=True, slots=True)
class Add:
    """One add, or several on one variable applied as one (*request_id*: one add only)."""

    variable: str
    deltas: tuple[int, ...]
    request_id: str | None = None


@dataclass(frozen=True, slots=True)
class StartSync:
    pass


@dataclass(frozen=True, slots=True)
class StartVerify:
    pass


@dataclass(frozen=True, slots=True)
class SetKeys:
    keys: tuple[Key, ...]


@dataclass(frozen=True, slots=True)
class ReadVariable:
    variable: str


@dataclass(frozen=True, slots=True)
class ReadHistory:
    variable: str
    after: str | None
    limit: int


@dataclass(frozen=True, slots=True)
class ReadVariables:
    pass


@dataclass(frozen=True, slots=True)
class ReadNode:
    """The node's `NodeState`; *values* adds every variable's value, read in the same
    step as the rest."""

    values: bool = False


Request = (
    Create
    | Delete
    | Add
    | StartSync
    | StartVerify
    | SetKeys
    | ReadVariable
    | ReadHistory
    | ReadVariables
    | ReadNode
)


def apply(node: Node, request: Request, now: float) -> object:
    """Apply *request* to *node* at *now*; its result (a value, a view or a `Ticket`)."""
    match request:
        case Add(variable, deltas, request_id) if len(deltas) == 1:
            return Ticket(node.add(variable, deltas[0], now, request_id))
        case Add(variable, deltas, None):
            return Ticket(node.add_many(variable, deltas, now))
        case Add():
            raise ValueError("a request id names one add, not a batch")
        case Create(variable):
            return node.create(variable, now)
        case Delete(variable):
            return node.delete(variable, now)
        case StartSync():
            return Ticket(node.start_sync(now))
        case StartVerify():
            return Ticket(node.start_verify(now))
        case SetKeys(keys):
            node.set_keys(keys)
            return None
        case ReadVariable(variable):
            return variable_view(node, variable)
        case ReadHistory(variable, after, limit):
            return history_page(node, variable, after, limit)
        case ReadVariables():
            return tuple(node.variables())
        case ReadNode(values):
            return node_state(node, now, values)
