"""Frozen views of a node: what a reader outside the owner task may see.

The control side (crdtd.daemon) never touches a `Node`: a read request is answered,
inside the owner task, with one of these immutable snapshots, built here from the
node's public state. So a reader cannot race the protocol, and the node's fields can
change shape without the daemon noticing.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import TYPE_CHECKING

from crdtd.core.counters import Counter
from crdtd.core.ids import Address, InvalidInput, Origin
from crdtd.core.modes import Mode

if TYPE_CHECKING:
    from crdtd.core.node import Node


class UnknownVariable(InvalidInput):
    """A read named a variable this node does not hold."""


@dataclass(frozen=True, slots=True)
class VariableView:
    variable: str
    value: int
    before: int
    mode: Mode


@dataclass(frozen=True, slots=True)
class HistoryPage:
    """One page of a variable's log; ``next`` is the cursor of the page after (None on
    the last page), ``restarted`` says the cursor asked for predates a fold, so this is
    the first page again."""

    variable: str
    before: int
    ops: tuple[tuple[Origin, int, int], ...]
    next: str | None
    restarted: bool


@dataclass(frozen=True, slots=True)
class PeerState:
    """One peer as this node knows it; times are seconds before the snapshot (None:
    never), ``forgotten_in_s`` is how long until it is dropped if it stays silent."""

    node_id: str
    incarnation: int
    address: Address
    mode: Mode
    epoch: int
    suspected: bool
    superseded: bool
    last_seen_s: float
    known_s: float
    forgotten_in_s: float
    multicast_ago_s: float | None
    unicast_copies: int
    unicast_copy_ago_s: float | None


@dataclass(frozen=True, slots=True)
class NodeState:
    """The node as a whole: identity, barrier mode, peers, sizes, keys and counters;
    ``values`` (each variable's value) only when the read asked for them, since they
    are as many as the variables."""

    node_id: str
    incarnation: int
    mode: Mode
    epoch: int
    peers: tuple[PeerState, ...]
    ops_in_log: int
    variables: int
    stats: Mapping[str, int]
    key_ids: tuple[str, ...]
    seeds: tuple[Address, ...]
    multicast_quiet_s: float
    values: Mapping[str, int] | None


def variable_view(node: Node, variable: str) -> VariableView:
    counter = _counter(node, variable)
    return VariableView(variable, counter.value, counter.before, node.mode)


def history_page(node: Node, variable: str, after: str | None, limit: int) -> HistoryPage:
    """The page of *variable*'s log after the cursor *after* (a page's ``next``; None
    for the first). A cursor made before a fold would skip the ops the fold took, so
    the first page is answered instead, with ``restarted`` set."""
    counter = _counter(node, variable)
    folded = _folded(counter)
    start: tuple[Origin, int] | None = None
    restarted = False
    if after is not None:
        fold, incarnation, nonce, node_id = after.split(":", 3)
        if int(fold) == folded:
            start = (Origin(node_id, int(incarnation)), int(nonce))
        else:
            restarted = True
    page = counter.page(start, limit)
    cursor = None
    if len(page) == limit:
        origin, last, _ = page[-1]
        cursor = f"{folded}:{origin.incarnation}:{last}:{origin.node_id}"
    return HistoryPage(variable, counter.before, tuple(page), cursor, restarted)


def node_state(node: Node, now: float, values: bool = False) -> NodeState:
    settings = node.settings
    pace = node.pace()
    holders: dict[str, int] = {}
    for peer in node.peers.values():
        holders[peer.node_id] = holders.get(peer.node_id, 0) + 1
    peers = tuple(
        PeerState(
            node_id=peer.node_id,
            incarnation=peer.incarnation,
            address=peer.address,
            mode=peer.mode,
            epoch=peer.epoch,
            suspected=peer.suspected,
            # A restart's old self: silent because it is gone, not unheard.
            superseded=peer.suspected and holders[peer.node_id] > 1,
            last_seen_s=now - peer.last_seen,
            known_s=now - peer.first_seen,
            forgotten_in_s=node.forgotten_at(peer) - now,
            multicast_ago_s=None if peer.multicast_at is None else now - peer.multicast_at,
            unicast_copies=peer.unicast_copies,
            unicast_copy_ago_s=None if peer.unicast_copy_at is None else now - peer.unicast_copy_at,
        )
        for _, peer in sorted(node.peers.items())
    )
    return NodeState(
        node_id=node.node_id,
        incarnation=node.origin.incarnation,
        mode=node.mode,
        epoch=node.epoch,
        peers=peers,
        ops_in_log=node.ops_in_log(),
        variables=sum(1 for counter in node.counters.values() if not counter.buried),
        stats=MappingProxyType(dict(node.stats)),
        key_ids=tuple(key.key_id for key in settings.keys),
        seeds=tuple(settings.seeds),
        multicast_quiet_s=settings.multicast_quiet_s(pace),
        values=(
            MappingProxyType({name: c.value for name, c in node.counters.items() if not c.buried})
            if values
            else None
        ),
    )


def _counter(node: Node, variable: str) -> Counter:
    counter = node.counters.get(variable)
    if counter is None or counter.buried:
        raise UnknownVariable(f"no variable {variable!r} on {node.node_id}")
    return counter


def _folded(counter: Counter) -> int:
    """Grows with every fold into *counter*'s bases (a base's ``upto`` only rises):
    a history cursor made under another value may point into folded ops."""
    return sum(upto for upto, _ in counter.bases.values())
