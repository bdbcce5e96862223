"""Protocol tunables. Every limit carries its unit last in its name.

The daemon fills these from the YAML config; the simulator from its scenario. Defaults
suit a LAN with sub-millisecond latency.
"""

from __future__ import annotations

from dataclasses import dataclass, field

DATAGRAM_BYTES_MAX = 1400
"""No datagram we send is larger, and a larger one is dropped before parsing."""

PACE_NODES = 5
"""Nodes a cluster may have before its announces slow down (`pace`)."""


def pace(nodes: int) -> float:
    """How many ``announce_interval_s`` a node of a cluster of *nodes* waits between its
    announces, and so how much longer its peers wait before they suspect it.

    Every node hears every other node's announce, so at a fixed interval each one
    handles ``nodes - 1`` announces an interval, and idle, each costs a wakeup (about
    0.4 ms of CPU measured: 0.36% of a core per daemon at 10 nodes, 0.18% at half the
    rate). As RTP's receiver reports do (RFC 3550, 6.2), the interval grows with the
    cluster instead, so a node hears about `PACE_NODES` announces an interval whatever
    the size. Up to `PACE_NODES` nodes nothing changes; 10 nodes announce every 2
    intervals and suspect a peer after twice ``peer_suspect_s``.
    """
    return max(1.0, nodes / PACE_NODES)


@dataclass(frozen=True, slots=True)
class Key:
    """A cluster key: datagrams carry an HMAC-SHA256 over their bytes under one of these."""

    key_id: str
    secret: bytes

    def __repr__(self) -> str:
        return f"Key(key_id={self.key_id!r}, secret=<{len(self.secret)} bytes>)"


@dataclass(frozen=True, slots=True)
class Settings:
    """How a node paces itself. See ``config/crdtd.yaml`` for the meaning of each."""

    announce_interval_s: float = 1.0
    peer_suspect_s: float = 3.0
    peer_timeout_s: float = 10.0
    nack_delay_min_s: float = 0.002
    nack_delay_max_s: float = 0.01
    nack_retry_s: float = 0.02
    nack_retries_flat: int = 8
    """Retries of a want at a flat ``nack_retry_s`` before they double (to the max)."""
    nack_retry_max_s: float = 0.5
    tail_digests_s: tuple[float, ...] = (0.01, 0.01, 0.02, 0.04)
    """After a burst of fresh ops, the gaps between the small digests that name them
    (a lost *last* op is then noticed in tens of ms, not at the next announce)."""
    nack_ranges_max: int = 64
    repair_bytes_max: int = 64 * 1024
    repair_bytes_per_s: int = 4 * 1024 * 1024
    wants_max: int = 10_000
    sync_interval_s: float = 300.0
    sync_min_gap_s: float = 10.0
    sync_freeze_max_s: float = 2.0
    sync_retry_s: float = 0.05
    variables_max: int = 10_000
    peers_max: int = 256
    seeds: tuple[tuple[str, int], ...] = ()
    """Unicast addresses to announce to, for networks where multicast does not pass."""
    verify_timeout_s: float = 1.0
    keys: tuple[Key, ...] = field(default=())

    def multicast_grace_s(self, pace: float) -> float:
        """How long a new peer may go unheard by multicast before we copy ours to it
        by unicast: two of its announce intervals, so one lost announce is not enough."""
        return 2 * self.announce_interval_s * pace

    def multicast_quiet_s(self, pace: float) -> float:
        """How long without a multicast from a peer we heard before (or since it said
        it does not hear ours) counts as "multicast does not pass": the grace and a
        second, for jitter."""
        return self.multicast_grace_s(pace) + 1.0
