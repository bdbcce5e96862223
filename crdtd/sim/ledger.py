"""The simulator's ground truth: every op an origin issued, and every op acknowledged.

Rules:
- an op is *issued* when its origin's disk syncs the ``OpRecorded`` (or the run,
  ``OpsRecorded``) of its own origin; an op written but lost in a crash before the sync
  was never issued (its nonce may be handed out again, with another delta, and that is
  correct);
- an issued op never changes: an origin that syncs ``(variable, origin, nonce)`` again
  with a different delta reused a nonce - `InvariantViolation`;
- an op is *acknowledged* when its origin reports ``AddApplied``; at that moment it must
  be issued (synced on the origin's disk) with the delta the add was called with, and it
  must not have been acknowledged before;
- a delete buries, per origin, a prefix of the issued ops (`Ledger.bury`: every synced
  grave, joined); the expected final value of a variable is the sum of its acknowledged
  ops that no grave buries, and it is shown if any of them exists.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from crdtd.core.events import AddApplied
from crdtd.core.ids import Origin
from crdtd.sim.disk import Disk, OpKey
from crdtd.sim.failures import InvariantViolation


def describe(key: OpKey) -> str:
    variable, origin, nonce = key
    return f"op {variable}/{origin}#{nonce}"


@dataclass(slots=True)
class Ledger:
    issued: dict[OpKey, int] = field(default_factory=dict)
    by_origin: dict[tuple[str, Origin], dict[int, int]] = field(default_factory=dict)
    """``(variable, origin) -> {nonce: delta}`` of issued ops, for checking bases."""
    acked: dict[OpKey, int] = field(default_factory=dict)
    acked_total: dict[str, int] = field(default_factory=dict)
    last_ack_s: float = 0.0
    graves: dict[str, dict[Origin, int]] = field(default_factory=dict)
    """Per deleted variable, per origin: the highest nonce any synced grave buries."""
    allowed: dict[str, dict[Origin, int]] = field(default_factory=dict)
    """Per variable, per origin: the highest nonce a successful delete buried on the
    node that ran it (its cut then); no grave may bury more (`check_grave`)."""

    def allow(self, variable: str, marks: tuple[tuple[Origin, int, int], ...]) -> None:
        """A delete that succeeded wrote this grave on its own node."""
        allowed = self.allowed.setdefault(variable, {})
        for origin, upto, _ in marks:
            if upto > allowed.get(origin, 0):
                allowed[origin] = upto

    def check_grave(self, variable: str, origin: Origin, upto: int, holder: str) -> None:
        """A grave on *holder*'s disk buries *origin*'s ops of *variable* up to *upto*:
        some delete must have seen them all (the rule: a delete removes what its node
        held, nothing it had not seen)."""
        allowed = self.allowed.get(variable, {}).get(origin, 0)
        if upto > allowed:
            raise InvariantViolation(
                f"over-buried: {holder} synced a grave of {variable} burying {origin} up "
                f"to nonce {upto}, but no delete's node held more than {allowed} of them"
            )

    def bury(self, variable: str, marks: tuple[tuple[Origin, int, int], ...]) -> None:
        """A node synced this grave: join it into what every delete buried."""
        grave = self.graves.setdefault(variable, {})
        for origin, upto, _ in marks:
            if upto > grave.get(origin, 0):
                grave[origin] = upto

    def expected(self) -> dict[str, int]:
        """Per variable with an acknowledged op that no grave buries: their sum."""
        totals: dict[str, int] = {}
        graves = self.graves
        for (variable, origin, nonce), delta in self.acked.items():
            grave = graves.get(variable)
            if grave is None or nonce > grave.get(origin, 0):
                totals[variable] = totals.get(variable, 0) + delta
        return totals

    def issue(self, key: OpKey, delta: int, node_id: str) -> None:
        """The origin *node_id* made op *key* durable on its own disk."""
        held = self.issued.get(key)
        if held is None:
            self.issued[key] = delta
            self.by_origin.setdefault((key[0], key[1]), {})[key[2]] = delta
        elif held != delta:
            raise InvariantViolation(
                f"nonce reuse: {node_id} synced {describe(key)} with delta {delta}, "
                f"but it was issued before with delta {held}"
            )

    def check_held(self, key: OpKey, delta: int, holder: str, where: str) -> None:
        """*holder* holds op *key* with *delta*: it must be exactly the issued op."""
        issued = self.issued.get(key)
        if issued is None:
            raise InvariantViolation(
                f"invented op: {holder} holds {describe(key)} (delta {delta}) in its {where}, "
                "but its origin never made that op durable"
            )
        if issued != delta:
            raise InvariantViolation(
                f"altered op: {holder} holds {describe(key)} with delta {delta} in its "
                f"{where}, but its origin issued delta {issued}"
            )

    def base_total(self, variable: str, origin: Origin, upto: int) -> int:
        """The sum of the issued ops of *origin* on *variable* with nonce <= *upto*."""
        ops = self.by_origin.get((variable, origin))
        if not ops:
            return 0
        return sum(delta for nonce, delta in ops.items() if nonce <= upto)

    def acknowledge(
        self, event: AddApplied, variable: str, delta: int, disk: Disk, origin: Origin, now: float
    ) -> None:
        """The node of *origin* reported *event* for an ``add(variable, delta)``."""
        key = (event.variable, event.origin, event.nonce)
        node_id = origin.node_id
        if event.variable != variable or event.origin != origin:
            raise InvariantViolation(
                f"ack mismatch: {node_id} acknowledged {describe(key)} for an add of "
                f"{delta} to {variable!r}"
            )
        if key in self.acked:
            raise InvariantViolation(f"double ack: {node_id} acknowledged {describe(key)} twice")
        durable = disk.ops.get(key)
        if durable != delta:
            found = "nothing" if durable is None else f"delta {durable}"
            raise InvariantViolation(
                f"ack before durable: {node_id} acknowledged {describe(key)} (delta {delta}) "
                f"but its synced disk holds {found}"
            )
        self.acked[key] = delta
        self.acked_total[variable] = self.acked_total.get(variable, 0) + delta
        self.last_ack_s = now

    def undurable_acked(self, disks: list[Disk]) -> list[OpKey]:
        """The acknowledged ops held on none of *disks* (sorted, for a stable message)."""
        return sorted(
            (key for key in self.acked if not any(d.holds(key) for d in disks)),
            key=lambda k: (k[0], k[1], k[2]),
        )
