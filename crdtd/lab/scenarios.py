"""Fault scenarios on a running lab, shared by the tests (tests/lan) and the soak.

Each scenario is a function ``(lab, work, rng, scale, **params) -> facts``: writers
(``work``, a `Workload`) are running on the nodes when it starts; it injects its fault,
lets adds flow through it for a while (durations are multiplied by ``scale``), removes
the fault, and returns a dict of what happened (for the test's assertions and the soak's
log). It leaves every node running and every fault healed; checking convergence is the
caller's job (`crdtd.lab.checks`), after pausing the writers.
"""

from __future__ import annotations

import collections
import json
import random
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from typing import Any

from crdtd.control.client import Client, DaemonUnreachable
from crdtd.control.protocol import ControlError
from crdtd.core.settings import pace
from crdtd.lab.checks import await_convergence
from crdtd.lab.lab import Lab, Node
from crdtd.lab.workload import Outcome, Workload

SYNC_TIMEOUT_S = 30.0
PEER_TIMEOUT_S = 10.0  # the daemon's default network.peer_timeout_s

Facts = dict[str, Any]
Scenario = Callable[..., Facts]


def cluster_stats(lab: Lab, names: Sequence[str] = ()) -> dict[str, int]:
    """The running nodes' ``status`` stats, summed (only *names*, if given)."""
    total: collections.Counter[str] = collections.Counter()
    for node in lab.running():
        try:
            stats = node.status()["stats"]
        except (DaemonUnreachable, ControlError):
            continue
        total.update({k: v for k, v in stats.items() if not names or k in names})
    return dict(sorted(total.items()))


REPAIR_STATS = ("gaps_detected", "gaps_repaired", "nacks_sent", "repairs_served")
BARRIER_STATS = ("barriers_started", "barriers_completed", "barriers_aborted")


def _peer_timeout_s(lab: Lab) -> float:
    """How long the lab's nodes wait before they forget a silent peer: the setting
    times the announce pace of a cluster of the lab's size (`crdtd.core.settings.pace`)."""
    configured = float(lab.config.get("network", {}).get("peer_timeout_s", PEER_TIMEOUT_S))
    return configured * pace(len(lab.nodes))


def _acked(work: Workload, names: Sequence[str]) -> int:
    by_node = work.ledger.summary()["by_node"]
    return sum(by_node.get(name, {}).get(Outcome.ACKED.value, 0) for name in names)


def loss(
    lab: Lab,
    work: Workload,
    rng: random.Random,
    scale: float = 1.0,
    *,
    probability: float = 0.3,
    duration_s: float = 20.0,
) -> Facts:
    """Every node drops *probability* of the UDP datagrams it receives."""
    before = cluster_stats(lab, REPAIR_STATS)
    lab.loss(probability)
    try:
        time.sleep(duration_s * scale)
    finally:
        lab.heal()
    after = cluster_stats(lab, REPAIR_STATS)
    return {
        "loss": probability,
        "repairs": {k: after.get(k, 0) - before.get(k, 0) for k in REPAIR_STATS},
    }


def partition(
    lab: Lab,
    work: Workload,
    rng: random.Random,
    scale: float = 1.0,
    *,
    sides: tuple[Sequence[Node], Sequence[Node]] | None = None,
    duration_s: float | None = None,
) -> Facts:
    """Split the nodes in two (default: two random nodes against the rest), keep
    adding on both sides for longer than peer_timeout_s, then heal.

    Facts: ``separated`` is True when, at the end, no node listed a peer of the other
    side (proof that the partition was real); ``acked`` per side during the split."""
    if sides is None:
        shuffled = rng.sample(lab.running(), len(lab.running()))
        sides = (shuffled[:2], shuffled[2:])
    left, right = list(sides[0]), list(sides[1])
    duration = (_peer_timeout_s(lab) + 4.0) if duration_s is None else duration_s
    names = ([n.name for n in left], [n.name for n in right])
    acked = (_acked(work, names[0]), _acked(work, names[1]))
    lab.partition(left, right)
    try:
        time.sleep(duration * max(scale, 1.0))
        crossing = _crossing_peers(left, right)
        acked = (_acked(work, names[0]) - acked[0], _acked(work, names[1]) - acked[1])
    finally:
        lab.heal()
    return {
        "sides": names,
        "separated": not crossing,
        "crossing_peers": crossing,
        "acked_during": acked,
    }


def _crossing_peers(left: Sequence[Node], right: Sequence[Node]) -> list[str]:
    """``a sees b`` for each node that still lists a peer of the other side."""
    crossing = []
    for side, other in ((left, right), (right, left)):
        other_names = {node.name for node in other}
        for node in side:
            try:
                peers = node.status()["peers"]
            except (DaemonUnreachable, ControlError) as error:
                crossing.append(f"{node.name}: no status ({error})")
                continue
            crossing += [
                f"{node.name} sees {p['node_id']}" for p in peers if p["node_id"] in other_names
            ]
    return crossing


def one_way(
    lab: Lab,
    work: Workload,
    rng: random.Random,
    scale: float = 1.0,
    *,
    duration_s: float | None = None,
) -> Facts:
    """Two nodes stop hearing the others, who still hear them; then heal."""
    nodes = lab.running()
    chosen = rng.sample(nodes, len(nodes))
    deaf, heard = chosen[:2], chosen[2:]
    lab.one_way(senders=heard, receivers=deaf)
    try:
        time.sleep((_peer_timeout_s(lab) + 2.0 if duration_s is None else duration_s) * scale)
    finally:
        lab.heal()
    return {"deaf": [n.name for n in deaf], "heard": [n.name for n in heard]}


def kill_restart(
    lab: Lab,
    work: Workload,
    rng: random.Random,
    scale: float = 1.0,
    *,
    every_s: float = 3.0,
    duration_s: float = 24.0,
    down_s: tuple[float, float] = (0.2, 1.5),
) -> Facts:
    """``kill -9`` a random node every *every_s*, restart it *down_s* later."""
    kills = []
    end = time.monotonic() + duration_s * scale
    while time.monotonic() < end:
        down = rng.uniform(*down_s)
        time.sleep(max(every_s - down, 0.0))
        victim = rng.choice(lab.running())
        victim.kill()
        kills.append(victim.name)
        time.sleep(down)
        victim.start(wait=True)
    return {"kills": kills, "maybe": work.ledger.total(Outcome.MAYBE)}


def freeze(
    lab: Lab,
    work: Workload,
    rng: random.Random,
    scale: float = 1.0,
    *,
    duration_s: float = 24.0,
    frozen_s: tuple[float, float] = (1.0, 14.0),
) -> Facts:
    """SIGSTOP a random node for 1-14 s (past peer_timeout_s at times), then SIGCONT,
    over and over, with barriers running: a stalled peer, initiator or participant
    wakes up with every timer overdue and stale views of the others."""
    frozen = []
    syncs = SyncLoop(lab, None, gap_s=(0.5, 2.0), rng=random.Random(rng.random()))
    syncs.start()
    end = time.monotonic() + duration_s * scale
    try:
        while time.monotonic() < end:
            victim = rng.choice(lab.running())
            pause = rng.uniform(*frozen_s)
            victim.freeze()
            try:
                time.sleep(pause)
            finally:
                victim.thaw()
            frozen.append(f"{victim.name} {pause:.1f}s")
            time.sleep(rng.uniform(0.5, 2.0))
    finally:
        syncs.stop()
    return {
        "frozen": frozen,
        "syncs": dict(syncs.results),
        "maybe": work.ledger.total(Outcome.MAYBE),
    }


class SyncLoop(threading.Thread):
    """Runs ``sync`` on a node (or a random running node) back to back until stopped,
    through the control client, or (*cli*) the ``crdtctl --json sync`` command line;
    at most *limit* syncs.

    ``results`` counts outcomes: ``completed``, ``aborted``, ``error_<code>`` (the
    daemon refused or timed out), ``unreachable``; with *cli*, ``exit_<code>`` for an
    exit code that does not match the envelope."""

    def __init__(
        self,
        lab: Lab,
        node: Node | None = None,
        gap_s: tuple[float, float] = (0.0, 0.0),
        rng: random.Random | None = None,
        *,
        cli: bool = False,
        limit: int | None = None,
    ) -> None:
        super().__init__(name="crdtlab-sync", daemon=True)
        self.lab = lab
        self.node = node
        self.gap_s = gap_s
        self.rng = rng or random.Random(0)
        self.cli = cli
        self.limit = limit
        self.results: collections.Counter[str] = collections.Counter()
        self.errors: list[str] = []
        self._stopping = threading.Event()

    def run(self) -> None:
        while not self._stopping.is_set():
            if self.limit is not None and self.results.total() >= self.limit:
                return
            node = self.node or self.rng.choice(self.lab.running())
            outcome, error = self._crdtctl(node) if self.cli else self._call(node)
            self.results[outcome] += 1
            if error:
                self.errors.append(f"{node.name}: {error}")
            if outcome == "unreachable":
                self._stopping.wait(0.1)
            self._stopping.wait(self.rng.uniform(*self.gap_s))

    def _call(self, node: Node) -> tuple[str, str | None]:
        try:
            with Client(node.socket, timeout_s=SYNC_TIMEOUT_S) as client:
                return str(client.call("sync")["result"]), None
        except ControlError as error:
            return f"error_{error.code}", str(error)
        except DaemonUnreachable as error:
            return "unreachable", str(error)

    def _crdtctl(self, node: Node) -> tuple[str, str | None]:
        argv = [sys.executable, "-m", "crdtd.cli.main", "--socket", str(node.socket)]
        done = subprocess.run(
            [*argv, "--json", "--timeout", str(SYNC_TIMEOUT_S), "sync"],
            capture_output=True,
            text=True,
            env=self.lab.daemon_env,
            cwd=self.lab.directory,
            check=False,
        )
        try:
            envelope = json.loads(done.stdout)
        except ValueError:
            return f"exit_{done.returncode}", f"not JSON: {done.stdout!r} {done.stderr!r}"
        if envelope.get("ok"):
            result = str(envelope["data"]["result"])
            expected = 0 if result == "completed" else 1
            if done.returncode != expected:
                return f"exit_{done.returncode}", f"{result} but exit {done.returncode}"
            return result, None
        outcome = {3: "unreachable", 4: "error_timeout"}.get(done.returncode, "error")
        return outcome, f"exit {done.returncode}: {envelope.get('error')}"

    def stop(self) -> None:
        self._stopping.set()
        self.join()


def join_during_barrier(
    lab: Lab,
    work: Workload,
    rng: random.Random,
    scale: float = 1.0,
    *,
    syncs_for_s: float = 4.0,
) -> Facts:
    """A 6th node joins while a barrier is in progress, then syncs run back to back.

    The barrier is held open on purpose: the last node is stopped (SIGSTOP) so the
    initiator waits for its SyncJoin (up to freeze_max_s / 4), ``crdtctl sync`` runs on
    the first node, and once that node is in a barrier the joiner - started beforehand,
    with its UDP dropped both ways, adding on its own - is plugged in: its next op
    batch reaches the initiator mid-barrier, which must pull it in. Then the stopped
    node is resumed and ``sync`` runs back to back from the first node for a while.

    Facts: ``joined_in_barrier`` (from the logs: the joiner's first barrier is the one
    the initiator had started before the plug-in, and it entered it before it ended),
    ``first_sync`` (the crdtctl answer), ``syncs`` (the later ones), ``joiner``."""
    nodes = lab.running()
    initiator, stalled = nodes[0], nodes[-1]
    joiner = lab.add_node(start=False)
    joiner.set_rules("unplugged", ["-A INPUT -p udp -j DROP", "-A OUTPUT -p udp -j DROP"])
    joiner.start(wait=True)
    work.add(joiner)
    first = SyncLoop(lab, initiator, cli=True, limit=1)
    plugged_at = None
    stalled.freeze()
    try:
        first.start()
        deadline = time.monotonic() + 10.0
        while time.monotonic() < deadline and initiator.status()["mode"] == "work":
            time.sleep(0.005)
        time.sleep(0.05)
        plugged_at = datetime.now(UTC)
        joiner.clear_rules("unplugged")
        deadline = time.monotonic() + 30.0
        while time.monotonic() < deadline and not first.results:
            time.sleep(0.01)
    finally:
        first.stop()
        stalled.thaw()
    syncs = SyncLoop(lab, initiator)
    syncs.start()
    try:
        time.sleep(syncs_for_s * scale)
    finally:
        syncs.stop()
    return {
        "joiner": joiner.name,
        "joined_in_barrier": _joined_in_barrier(initiator, joiner, plugged_at),
        "first_sync": dict(first.results),
        "syncs": dict(syncs.results),
        "sync_errors": (first.errors + syncs.errors)[:5],
    }


def _joined_in_barrier(initiator: Node, joiner: Node, plugged_at: datetime | None) -> bool:
    """True when the joiner's first barrier is the one the initiator was running when
    the joiner was plugged in, and the joiner entered it before it ended."""
    if plugged_at is None:
        return False
    running: tuple[int, datetime] | None = None
    ended: datetime | None = None
    for event in initiator.events():
        name, when = event.get("event"), _when(event)
        if name not in ("sync_started", "sync_completed", "sync_aborted"):
            continue
        if when > plugged_at:
            if running is not None and name != "sync_started":
                ended = when
                break
            if running is None:
                break
            continue
        running = (event["epoch"], when) if name == "sync_started" else None
    entered = joiner.events("sync_started")
    if running is None or ended is None or not entered:
        return False
    first = entered[0]
    return (
        first["epoch"] == running[0]
        and first["initiator"] == initiator.name
        and _when(first) <= ended
    )


def _when(event: dict[str, Any]) -> datetime:
    return datetime.fromisoformat(event["timestamp"])


def barriers_under_loss(
    lab: Lab,
    work: Workload,
    rng: random.Random,
    scale: float = 1.0,
    *,
    probability: float = 0.1,
    duration_s: float = 20.0,
) -> Facts:
    """*probability* loss everywhere while random nodes run ``sync`` every 0.2-1 s."""
    before = cluster_stats(lab, BARRIER_STATS)
    lab.loss(probability)
    syncs = SyncLoop(lab, None, gap_s=(0.2, 1.0), rng=random.Random(rng.random()))
    syncs.start()
    try:
        time.sleep(duration_s * scale)
    finally:
        syncs.stop()
        lab.heal()
    after = cluster_stats(lab, BARRIER_STATS)
    return {
        "loss": probability,
        "syncs": dict(syncs.results),
        "sync_errors": syncs.errors[:5],
        "barriers": {k: after.get(k, 0) - before.get(k, 0) for k in BARRIER_STATS},
    }


def wipe(
    lab: Lab,
    work: Workload,
    rng: random.Random,
    scale: float = 1.0,
    *,
    before_s: float = 5.0,
    converge_s: float = 30.0,
    after_s: float = 5.0,
) -> Facts:
    """Quiesce and converge (so everything a node acked is held elsewhere), then kill a
    node, delete its state directory and restart it; adds resume at once.

    A node that loses its disk loses the acks it had not passed on yet: that is why the
    wipe waits for convergence, and not a bug."""
    time.sleep(before_s * scale)
    work.pause()
    try:
        await_convergence(lab, work.ledger, timeout_s=converge_s)
        victim = rng.choice(lab.running())
        old = victim.status()["incarnation"]
        victim.kill()
        victim.wipe()
        victim.start(wait=True)
        new = victim.status()["incarnation"]
    finally:
        work.resume()
    time.sleep(after_s * scale)
    return {"wiped": victim.name, "incarnation_before": old, "incarnation_after": new}


def multicast_blocked(
    lab: Lab,
    work: Workload,
    rng: random.Random,
    scale: float = 1.0,
    *,
    duration_s: float = 15.0,
    outbound: bool = False,
) -> Facts:
    """One node stops receiving the group (unicast still works), then heals.

    Facts: what the cut-off node saw at the end of the cut (``peers_at_end``) and how
    far behind another node it was (``lag``: their value minus its, per counter)."""
    nodes = lab.running()
    victim = rng.choice(nodes)
    witness = next(node for node in nodes if node is not victim)
    victim.block_multicast(outbound=outbound)
    try:
        time.sleep(duration_s * scale)
        work.pause()
        try:
            peers = [p["node_id"] for p in victim.status()["peers"] if not p["suspected"]]
            lag = {}
            for variable in work.variables:
                theirs, mine = witness.get(variable), victim.get(variable)
                lag[variable] = None if theirs is None or mine is None else theirs - mine
        finally:
            work.resume()
    finally:
        lab.heal()
    return {"cut_off": victim.name, "outbound": outbound, "peers_at_end": peers, "lag": lag}


CHAOS_ACTIONS = ("loss", "partition", "one_way", "multicast", "kill", "restart", "freeze", "heal")


def chaos(
    lab: Lab,
    work: Workload,
    rng: random.Random,
    scale: float = 1.0,
    *,
    duration_s: float = 30.0,
    step_s: tuple[float, float] = (0.5, 2.5),
    down_max: int = 2,
) -> Facts:
    """Faults piled on each other: every *step_s*, one of loss on some nodes (5-30%), a
    random split, a one-way cut, a node cut off from the group, a ``kill -9`` (at most
    *down_max* nodes down at once), a restart of a killed node, a SIGSTOP of 0.5-4 s,
    or a heal; while random
    nodes run ``sync`` every 0.5-2 s. At the end, every node is restarted and healed."""
    actions: list[str] = []
    down: list[Node] = []
    syncs = SyncLoop(lab, None, gap_s=(0.5, 2.0), rng=random.Random(rng.random()))
    syncs.start()
    end = time.monotonic() + duration_s * scale
    try:
        while time.monotonic() < end:
            time.sleep(rng.uniform(*step_s))
            action = rng.choice(CHAOS_ACTIONS)
            nodes = lab.nodes
            if action == "loss":
                chosen = rng.sample(nodes, rng.randint(1, len(nodes)))
                probability = rng.choice((0.05, 0.1, 0.3))
                lab.loss(probability, chosen)
                action = f"loss {probability} on {','.join(n.name for n in chosen)}"
            elif action == "partition":
                shuffled = rng.sample(nodes, len(nodes))
                cut = rng.randint(1, len(nodes) - 1)
                lab.partition(shuffled[:cut], shuffled[cut:])
                action = f"partition {','.join(n.name for n in shuffled[:cut])}|rest"
            elif action == "one_way":
                deaf = rng.choice(nodes)
                lab.one_way([n for n in nodes if n is not deaf], [deaf])
                action = f"one_way {deaf.name} hears nobody"
            elif action == "multicast":
                victim = rng.choice(nodes)
                victim.block_multicast(outbound=rng.random() < 0.3)
                action = f"multicast cut at {victim.name}"
            elif action == "kill":
                running = lab.running()
                if len(down) >= down_max or len(running) <= 2:
                    continue
                victim = rng.choice(running)
                victim.kill()
                down.append(victim)
                action = f"kill {victim.name}"
            elif action == "freeze":
                victim = rng.choice(lab.running())
                pause = rng.uniform(0.5, 4.0)
                victim.freeze()
                try:
                    time.sleep(pause)
                finally:
                    victim.thaw()
                action = f"freeze {victim.name} {pause:.1f}s"
            elif action == "restart":
                if not down:
                    continue
                victim = down.pop(rng.randrange(len(down)))
                victim.start(wait=True)
                action = f"restart {victim.name}"
            else:
                lab.heal()
            actions.append(action)
    finally:
        syncs.stop()
        for victim in down:
            victim.start(wait=True)
        lab.heal()
    return {
        "actions": actions,
        "syncs": dict(syncs.results),
        "maybe": work.ledger.total(Outcome.MAYBE),
    }


SCENARIOS: dict[str, Scenario] = {
    "chaos": chaos,
    "loss": loss,
    "partition": partition,
    "one_way": one_way,
    "kill_restart": kill_restart,
    "freeze": freeze,
    "join_during_barrier": join_during_barrier,
    "barriers_under_loss": barriers_under_loss,
    "wipe": wipe,
    "multicast_blocked": multicast_blocked,
}
