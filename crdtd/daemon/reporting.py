"""What the daemon makes of a node's events: log lines, watchers, barrier numbers.

The driver hands every event of a flush here, after it persisted, answered and sent
(`crdtd.core.step`), with the loop's time. What deserves a line is logged, and the
noisy ones are rate-limited: rejected datagrams at most once per reason per
`REJECT_LOG_EVERY_S`, a key mismatch (`KEY_MISMATCH_HINTS`) once a minute with the key
id the sender named and what to do (`RejectLog`), so a flood of bad datagrams never
floods the log. ``watch`` subscribers get every value change of their variable, and
None when it is deleted (a slow one sees the latest of these, not all), and
`BarrierStats` counts the barriers for ``stats`` and the metrics.
"""

from __future__ import annotations

import asyncio
from typing import Any

from crdtd.core.events import (
    ClaimRefused,
    DatagramRejected,
    Event,
    GapRepaired,
    IdentityConflict,
    PeerJoined,
    PeerLost,
    StateRewound,
    SyncFinished,
    SyncStarted,
    ValueChanged,
    VariableAdded,
    VariableDeleted,
    VariablesOverLimit,
)

WATCH_QUEUE_MAX = 1024
REJECT_LOG_EVERY_S = 10.0
KEY_MISMATCH_LOG_EVERY_S = 60.0
KEY_MISMATCH_HINTS = {
    "unknown_key": "the sender signs with a key id this node's key file lacks: every node "
    "needs the same cluster key file (security.key_file); during a rotation, add the new "
    "key to this node's file and reload",
    "unexpected_mac": "the sender signs its datagrams and this node has no key: copy the "
    "cluster key file to this node (mode 0600), set security.key_file and restart crdtd",
    "unauthenticated": "the sender does not sign its datagrams and this node requires keys: "
    "copy the cluster key file to the sender (mode 0600), set security.key_file there and "
    "restart crdtd there",
}
"""What to do about a rejection that means a node lacks the cluster key (or has one
the others lack), by reason; these stay until someone acts, so once a minute is enough."""
BARRIER_BUCKETS_S = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)
"""Upper bounds of the barrier duration histogram (`BarrierStats`), seconds."""


class BarrierStats:
    """Barriers this node took part in, from `SyncFinished`: counts by result, and the
    durations of completed ones as last/sum/max and a cumulative histogram."""

    def __init__(self) -> None:
        self.completed = 0
        self.aborted = 0
        self.last_s: float | None = None
        self.sum_s = 0.0
        self.max_s = 0.0
        self.buckets = [0] * len(BARRIER_BUCKETS_S)  # cumulative: count <= bound

    def record(self, result: str, duration_s: float) -> None:
        if result != "completed":
            self.aborted += 1
            return
        self.completed += 1
        self.last_s = duration_s
        self.sum_s += duration_s
        self.max_s = max(self.max_s, duration_s)
        for index, bound in enumerate(BARRIER_BUCKETS_S):
            if duration_s <= bound:
                self.buckets[index] += 1

    def snapshot(self) -> dict[str, Any]:
        def ms(seconds: float | None) -> float | None:
            return None if seconds is None else round(seconds * 1000, 1)

        average = self.sum_s / self.completed if self.completed else None
        return {
            "completed": self.completed,
            "aborted": self.aborted,
            "duration_ms": {
                "last": ms(self.last_s),
                "avg": ms(average),
                "max": ms(self.max_s if self.completed else None),
            },
            "duration_sum_s": self.sum_s,
            "histogram_s": [
                [bound, count] for bound, count in zip(BARRIER_BUCKETS_S, self.buckets, strict=True)
            ],
        }


class RejectLog:
    """Which rejected datagrams get a log line: the first of a reason, then at most one
    per interval, carrying how many were left out since. Pure: the caller passes *now*."""

    def __init__(self) -> None:
        self._last: dict[str, tuple[float, int]] = {}  # reason -> (logged at, left out)

    def line(self, event: DatagramRejected, now: float) -> dict[str, Any] | None:
        """The fields of the ``datagram_rejected`` line for *event*, or None to skip it."""
        hint = KEY_MISMATCH_HINTS.get(event.reason)
        every = KEY_MISMATCH_LOG_EVERY_S if hint else REJECT_LOG_EVERY_S
        last = self._last.get(event.reason)
        if last is not None and now - last[0] < every:
            self._last[event.reason] = (last[0], last[1] + 1)
            return None
        self._last[event.reason] = (now, 0)
        fields: dict[str, Any] = {
            "reason": event.reason,
            "source": f"{event.address[0]}:{event.address[1]}",
            "suppressed": last[1] if last is not None else 0,
        }
        if hint or event.key_id is not None:
            fields["key_id"] = event.key_id
        if hint:
            fields["hint"] = hint
        return fields


class Reporter:
    """The daemon's side of the events: logging, watchers and barrier statistics."""

    def __init__(self, log: Any) -> None:
        self._log = log
        self._watchers: dict[str, list[asyncio.Queue[int | None]]] = {}
        self._reject_log = RejectLog()
        self.barriers = BarrierStats()

    def watch(self, variable: str) -> asyncio.Queue[int | None]:
        """A queue of *variable*'s values from now on, None when it is deleted; hand it
        back to `unwatch`."""
        queue: asyncio.Queue[int | None] = asyncio.Queue(WATCH_QUEUE_MAX)
        self._watchers.setdefault(variable, []).append(queue)
        return queue

    def unwatch(self, variable: str, queue: asyncio.Queue[int | None]) -> None:
        queues = self._watchers.get(variable, [])
        if queue in queues:
            queues.remove(queue)
        if not queues:
            self._watchers.pop(variable, None)

    def report(self, event: Event, now: float) -> None:
        """Log *event* if it is worth a line, feed watchers and the barrier numbers."""
        log = self._log
        if isinstance(event, ValueChanged):
            self._tell_watchers(event.variable, event.value)
        elif isinstance(event, VariableDeleted):
            log.info("variable_deleted", variable=event.variable)
            self._tell_watchers(event.variable, None)
        elif isinstance(event, SyncFinished):
            self.barriers.record(event.result, event.duration_s)
            log.info(
                f"sync_{event.result}",
                epoch=event.epoch,
                initiator=event.initiator,
                duration_ms=round(event.duration_s * 1000, 1),
                reason=event.reason or None,
            )
        elif isinstance(event, SyncStarted):
            log.info("sync_started", epoch=event.epoch, initiator=event.initiator)
        elif isinstance(event, PeerJoined):
            log.info(
                "peer_joined",
                peer=event.node_id,
                incarnation=event.incarnation,
                address=f"{event.address[0]}:{event.address[1]}",
            )
        elif isinstance(event, PeerLost):
            log.warning("peer_lost", peer=event.node_id, silent_s=round(event.silent_s, 1))
        elif isinstance(event, GapRepaired):
            log.debug(
                "gap_repaired",
                variable=event.variable,
                origin=str(event.origin),
                first=event.first,
                last=event.last,
            )
        elif isinstance(event, DatagramRejected):
            self._log_reject(event, now)
        elif isinstance(event, IdentityConflict):
            log.warning(
                "identity_conflict",
                peer=event.node_id,
                origins=[str(origin) for origin in event.origins],
                address=f"{event.address[0]}:{event.address[1]}",
                ours=event.ours,
                hint="two live daemons use this node id (a cloned state directory or one "
                "node.id set twice): stop one, give it a new node.id and an empty "
                "node.state_dir; meanwhile nothing is lost, each has its own incarnation",
            )
        elif isinstance(event, StateRewound):
            log.warning(
                "state_rewound",
                origin=str(event.origin),
                variable=event.variable,
                held=event.held,
                seen=event.seen,
                peer=event.peer,
                hint="this state directory is older than the one that issued these ops (a "
                "snapshot reverted, a lost WAL, a copy); peers are sending them back",
            )
        elif isinstance(event, ClaimRefused):
            log.warning(
                "claim_refused",
                kind=event.kind,
                variable=event.variable,
                nonce=event.nonce,
                peer=event.peer,
                address=f"{event.address[0]}:{event.address[1]}",
                hint="a key holder claimed ops of this node that it never issued: a forged "
                "datagram or a copy of this node's state running elsewhere",
            )
        elif isinstance(event, VariablesOverLimit):
            log.warning(
                "variables_over_limit",
                variables=event.variables,
                limit=event.limit,
                hard_limit=event.hard_limit,
                hint="peers hold more variables than limits.variables_max; this node keeps "
                "them up to the hard limit and refuses new local names: raise the limit "
                "on every node",
            )
        elif isinstance(event, VariableAdded):
            log.debug("variable_added", variable=event.variable)

    def _tell_watchers(self, variable: str, value: int | None) -> None:
        for queue in self._watchers.get(variable, []):
            if queue.full():
                queue.get_nowait()  # a slow watcher sees the latest values, not all
            queue.put_nowait(value)

    def _log_reject(self, event: DatagramRejected, now: float) -> None:
        fields = self._reject_log.line(event, now)
        if fields is not None:
            self._log.warning("datagram_rejected", **fields)
