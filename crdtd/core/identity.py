"""Who a node is, and how a copy of its state is kept from reusing its nonces.

The rule (docs/protocol.md, "Identity"): **every boot is a new incarnation.** An op is
named by ``(node_id, incarnation, nonce)``, and a node hands out nonces 1, 2, 3, ... per
variable under its current incarnation only. A node cannot tell from its own disk that
its state is the latest: a VM snapshot reverted, a WAL lost after ``kill -9``, or a
state directory copied to a second machine all look like an ordinary restart. So it
never continues an old incarnation: it starts one that no copy of its state can have
started, and the ops of its earlier incarnations become ordinary ops of other origins,
which peers hand back to it like any missing op (Riak's kv679 fix: a new actor id
whenever a node cannot prove its state is the latest).

How an incarnation is chosen (`choose_incarnation`):
- the caller proposes one: the wall clock in milliseconds, shifted left by
  `SALT_BITS`, with random low bits (`propose_incarnation`). Two copies of one state
  booting in the same millisecond still differ in the salt;
- the node takes the proposal unless its records show it started that one or a larger
  one before (the clock went back), and then takes the last one plus one plus a fresh
  salt. So incarnations of one state only grow, whatever the wall clock does. Only the
  node's own `IncarnationStarted` records count: an op of its node id with some other
  incarnation came from a copy of it, or from a liar, and must not steer its identity
  (one forged op with incarnation 2**64 - 1 would otherwise leave no room to boot);
- the choice is written down (`IncarnationStarted`) in the node's first flush, before
  its first datagram.

Two live holders of one node id (clones, or one id configured twice) therefore have two
origins, and nothing is lost or counted twice between them. They are still a fault to
report: `overlapping` says when two origins of one node id have both been heard for
longer than `OVERLAP_S` since the later one appeared, which a restart (the old one falls
silent before the new one starts) never is.
"""

from __future__ import annotations

SALT_BITS = 20
SALT_MASK = (1 << SALT_BITS) - 1
OVERLAP_S = 1.0
"""Two origins of one node id heard together this long are two live holders, not a
restart whose last datagrams arrived late."""
REPORT_INTERVAL_S = 60.0
"""An identity conflict or a rewound state is reported at most this often per node id."""


def propose_incarnation(clock_ms: int, salt: int) -> int:
    """The incarnation a boot proposes: *clock_ms* in the high bits, *salt* below."""
    return (max(clock_ms, 1) << SALT_BITS) | (salt & SALT_MASK)


INCARNATION_MAX = 2**64 - 1
"""Incarnations travel as u64; ``propose_incarnation`` stays below 2**63 until 2248."""


def choose_incarnation(proposal: int, used: int, salt: int) -> int:
    """The incarnation to start: *proposal*, unless this state already started *used*
    >= proposal; then one above it with a fresh *salt* (never 0)."""
    chosen = proposal if proposal > used else used + 1 + (salt & SALT_MASK)
    assert chosen <= INCARNATION_MAX, "only the node's own records raise *used*"
    return chosen


def overlapping(first_a: float, last_a: float, first_b: float, last_b: float) -> bool:
    """True when two origins, each heard from *first* to *last*, were both heard for
    more than `OVERLAP_S` after the later of them appeared."""
    later = max(first_a, first_b)
    return min(last_a, last_b) - later > OVERLAP_S
