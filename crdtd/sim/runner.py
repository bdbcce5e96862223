"""One simulation run: plan a scenario's faults and workload from a seed, play, heal, check.

Theory of operation: actions (adds, creates, deletes, crashes, restarts, cuts, clogs,
joins, sync starts) sit on a heap of ``(time, seq, action)``. The run steps the cluster
up to the next action's time, applies it (an action may schedule more, e.g. a crash
schedules its restart), and repeats until the fault phase ends. Then it heals the
cluster and waits for convergence. Random choices made while planning come from the
``workload`` and ``faults`` streams; choices that depend on who is alive at the moment
(which node gets the add, which node crashes) are drawn when the action runs, from the
same streams, so the run stays a pure function of ``(scenario, seed, nodes)``.
"""

from __future__ import annotations

import heapq
import random
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field

from crdtd.core.node import Node
from crdtd.core.settings import pace
from crdtd.sim.cluster import Cluster, NodeFactory
from crdtd.sim.failures import InvariantViolation
from crdtd.sim.network import LinkFaults
from crdtd.sim.rng import stream
from crdtd.sim.scenarios import Scenario
from crdtd.sim.trace import Trace

NODES_MIN = 3
NODES_MAX = 20
BIG_DELTA = 2**62
BIG_TOTAL_LIMIT = 2**61
"""Past this running total a big delta is drawn towards zero, to stay within int64."""

Action = Callable[[Cluster], None]
WRITE_S = (0.0002, 0.002)
"""How long a node's disk takes to write and sync one flush, seconds (an SSD's
fdatasync, roughly): while it writes, inputs queue, and the next step is a batch."""
FORGERIES = ("base", "op", "mark", "impersonate", "barrier")


def nodes_for(scenario: str, seed: int) -> int:
    """The node count a seed runs with when none is given: 3..20."""
    return stream(seed, f"{scenario}/nodes").randint(NODES_MIN, NODES_MAX)


def replay_command(scenario: str, seed: int, nodes: int) -> str:
    return f"python -m crdtd.sim --scenario {scenario} --seed {seed} --nodes {nodes} --trace"


@dataclass(slots=True)
class RunResult:
    scenario: str
    seed: int
    nodes: int
    ok: bool
    reason: str
    digest: str
    steps: int
    virtual_s: float
    heal_s: float
    """Virtual time from the heal to convergence (-1 when it did not converge)."""
    settle_s: float
    """Virtual time from the last acknowledged add to convergence (-1 likewise)."""
    adds_acked: int
    datagrams_sent: int
    barriers_completed: int
    barriers_aborted: int
    log_len_max: int
    crashes: int
    crashes_mid_flush: int
    deletes: int
    wipes: int
    steps_batched: int
    """Node steps that took several inputs at once: the driver's batching, exercised."""
    step_inputs_max: int
    trace: list[str] = field(default_factory=list)

    @property
    def replay(self) -> str:
        return replay_command(self.scenario, self.seed, self.nodes)


class _Plan:
    """The action heap of one run."""

    def __init__(self) -> None:
        self.heap: list[tuple[float, int, str, Action]] = []
        self.seq = 0

    def at(self, time: float, label: str, action: Action) -> None:
        self.seq += 1
        heapq.heappush(self.heap, (time, self.seq, label, action))


class _Run:
    def __init__(self, scenario: Scenario, seed: int, nodes: int, cluster: Cluster) -> None:
        self.scenario = scenario
        self.cluster = cluster
        self.plan = _Plan()
        self.workload = stream(seed, "workload")
        self.faults = stream(seed, "faults")
        self.nodes = nodes
        self.variables = [f"v{i}" for i in range(scenario.variables)]
        self.big_total: dict[str, int] = {}
        self.fault_end = scenario.fault_s

    # planning -----------------------------------------------------------
    def plan_all(self) -> None:
        s = self.scenario
        cluster = self.cluster
        faults = self.faults
        if s.no_multicast_p:
            for slot in cluster.slots:
                if faults.random() < s.no_multicast_p:
                    cluster.network.no_multicast[slot.address] = None
        late: dict[int, float] = {}
        for index in range(1, self.nodes):
            if s.late_join_p and faults.random() < s.late_join_p:
                late[index] = faults.uniform(0.2, self.fault_end * 0.9)
        for index in range(self.nodes):
            if index in late:
                self.plan.at(late[index], "join", _start(index))
            else:
                cluster.start(index)
        for variable in self.variables[: s.created]:
            self.plan.at(self.workload.uniform(0.0, 0.5), "create", self._create(variable))
        for time in _poisson(self.workload, s.adds_per_s, 0.05, self.fault_end):
            self.plan.at(time, "add", self._add)
        for time in _poisson(faults, s.crashes_per_s, 0.3, self.fault_end):
            self.plan.at(time, "crash", self._crash)
        for time in _poisson(faults, s.clogs_per_s, 0.1, self.fault_end):
            self.plan.at(time, "clog", self._clog)
        for time in _poisson(faults, s.syncs_per_s, 0.5, self.fault_end):
            self.plan.at(time, "sync", self._sync)
        for time in _poisson(self.workload, s.deletes_per_s, 0.3, self.fault_end):
            self.plan.at(time, "delete", self._delete)
        for time in _poisson(faults, s.clones_per_s, 0.5, self.fault_end * 0.8):
            self.plan.at(time, "clone", self._clone)
        for time in _poisson(faults, s.forgeries_per_s, 0.3, self.fault_end):
            self.plan.at(time, "forge", self._forge)
        for time in s.sync_at_s:
            self.plan.at(time, "sync", self._sync)
        self._plan_partitions()

    def _plan_partitions(self) -> None:
        s = self.scenario
        if not s.partitions_per_s:
            return
        faults = self.faults
        time = 0.2
        while True:
            time += faults.expovariate(s.partitions_per_s)
            if time >= self.fault_end:
                return
            length = faults.uniform(*s.partition_s)
            one_way = faults.random() < s.one_way_p
            self.plan.at(time, "partition", self._partition(one_way))
            time = min(time + length, self.fault_end)
            self.plan.at(time, "unpartition", _heal_cuts)

    # actions ------------------------------------------------------------
    def _live_index(self, rng: random.Random) -> int | None:
        live = self.cluster.live()
        return rng.choice(live).index if live else None

    def _create(self, variable: str) -> Action:
        def create(cluster: Cluster) -> None:
            index = self._live_index(self.workload)
            if index is not None:
                cluster.create(index, variable)

        return create

    def _add(self, cluster: Cluster) -> None:
        rng = self.workload
        index = self._live_index(rng)
        if index is None:
            return
        count = 1
        if rng.random() < self.scenario.burst_p:
            count = rng.randint(2, self.scenario.burst_max)
        totals = dict(cluster.ledger.acked_total)
        adds = [self._op(totals, rng) for _ in range(count)]
        cluster.add_batch(index, adds)

    def _op(self, totals: dict[str, int], rng: random.Random) -> tuple[str, int]:
        """One ``(variable, delta)``; *totals* (running sums) keeps values within int64."""
        variable = rng.choice(self.variables)
        if rng.random() < self.scenario.big_delta_p:
            total = totals.get(variable, 0)
            if total > BIG_TOTAL_LIMIT:
                delta = -BIG_DELTA
            elif total < -BIG_TOTAL_LIMIT:
                delta = BIG_DELTA
            else:
                delta = rng.choice((BIG_DELTA, -BIG_DELTA))
        else:
            delta = rng.randint(-9, 9)
        totals[variable] = totals.get(variable, 0) + delta
        return variable, delta

    def _delete(self, cluster: Cluster) -> None:
        index = self._live_index(self.workload)
        if index is not None:
            cluster.delete(index, self.workload.choice(self.variables))

    def _crash(self, cluster: Cluster) -> None:
        s = self.scenario
        rng = self.faults
        live = cluster.live()
        if len(live) <= 1:
            return
        index = rng.choice(live).index
        down = rng.uniform(*s.down_s)
        wipe = rng.random() < s.wipe_p
        keep: float | None = None
        if s.rewind_p and rng.random() < s.rewind_p:
            keep = rng.random()
        clock_back_ms = 3_600_000 if s.clock_back_p and rng.random() < s.clock_back_p else 0
        if rng.random() < s.mid_flush_p:
            cluster.crash_in_next_flush(index)
            if rng.random() < 0.5:
                # inside an add's flush: between taking a nonce and writing it down
                cluster.add(index, rng.choice(self.variables), rng.randint(-9, 9))
                if cluster.slots[index].node is not None:  # the add wrote nothing
                    cluster.slots[index].crash_mid_flush = False
                    cluster.crash(index)
            # else: inside the next step that writes (a received op, a repair, a base)
        else:
            cluster.crash(index)
        restart = _start(index, wipe, keep, clock_back_ms)
        self.plan.at(min(cluster.now + down, self.fault_end), "restart", restart)

    def _clog(self, cluster: Cluster) -> None:
        rng = self.faults
        if len(cluster.slots) < 2:
            return
        a, b = rng.sample(cluster.slots, 2)
        until = cluster.now + rng.uniform(*self.scenario.clog_s)
        cluster.network.clog(a.address, b.address, until)
        if rng.random() < 0.5:
            cluster.network.clog(b.address, a.address, until)
        cluster.trace.step(cluster.now, "sim", f"clog {a.node_id}-{b.node_id} until {until!r}")

    def _partition(self, one_way: bool) -> Action:
        def partition(cluster: Cluster) -> None:
            rng = self.faults
            slots = list(cluster.slots)
            rng.shuffle(slots)
            cut = rng.randint(1, len(slots) - 1) if len(slots) > 1 else 0
            side_a, side_b = slots[:cut], slots[cut:]
            network = cluster.network
            for a in side_a:
                for b in side_b:
                    network.cut_one_way(a.address, b.address)
                    if not one_way:
                        network.cut_one_way(b.address, a.address)
            names = ",".join(sorted(s.node_id for s in side_a))
            kind = "one-way" if one_way else "symmetric"
            cluster.trace.step(cluster.now, "sim", f"partition {kind} [{names}] | rest")

        return partition

    def _clone(self, cluster: Cluster) -> None:
        index = self._live_index(self.faults)
        if index is not None and len(cluster.slots) < NODES_MAX + 4:
            cluster.clone(index)

    def _forge(self, cluster: Cluster) -> None:
        index = self._live_index(self.faults)
        if index is not None:
            kind = self.faults.choice(FORGERIES)
            cluster.forge(index, kind, self.faults.choice(self.variables))

    def _sync(self, cluster: Cluster) -> None:
        index = self._live_index(self.faults)
        if index is not None:
            cluster.start_sync(index)

    # playing ------------------------------------------------------------
    def play(self) -> tuple[float, float]:
        """Play the fault phase, heal, converge; return (heal_s, settle_s)."""
        cluster = self.cluster
        heap = self.plan.heap
        while heap:
            time, _, _, action = heapq.heappop(heap)
            if time > self.fault_end:
                continue
            cluster.run_until(time)
            action(cluster)
        cluster.run_until(self.fault_end)
        healed_at = cluster.now
        cluster.heal()
        converged_at = cluster.await_convergence(self.scenario.heal_bound_s)
        last_ack = cluster.ledger.last_ack_s
        if self.scenario.barrier_after_heal:
            self._barrier_after_heal()
        return converged_at - healed_at, converged_at - last_ack

    def _barrier_after_heal(self) -> None:
        """A barrier in a healed, quiet cluster completes and folds every log away.

        It starts once every node has had time to announce itself twice, so that the
        initiator knows the whole cluster.
        """
        cluster = self.cluster
        interval = self.scenario.settings.announce_interval_s * pace(len(cluster.slots))
        cluster.run_until(cluster.now + 2.5 * interval)
        index = self.faults.choice(cluster.live()).index
        cluster.await_barrier(index, self.scenario.heal_bound_s)
        cluster.await_convergence(self.scenario.heal_bound_s)
        live = cluster.live()
        unfolded = [
            (s.node_id, n) for s in live if s.node is not None and (n := s.node.ops_in_log())
        ]
        if unfolded:
            raise InvariantViolation(
                f"ops left in the log after a completed barrier in a quiet cluster: {unfolded[:6]}"
            )
        epochs = {s.node_id: s.node.epoch for s in live if s.node is not None}
        if len(set(epochs.values())) > 1:
            raise InvariantViolation(f"epochs differ after a completed barrier: {epochs}")


def _start(
    index: int, wipe: bool = False, keep: float | None = None, clock_back_ms: int = 0
) -> Action:
    """Boot node *index*; *keep* rewinds its disk to that fraction of its records."""

    def start(cluster: Cluster) -> None:
        slot = cluster.slots[index]
        if slot.node is None:
            records = None if keep is None else int(keep * len(slot.disk.synced))
            cluster.start(index, wipe=wipe, keep=records, clock_back_ms=clock_back_ms)
        else:  # a mid-flush crash that never came (the node wrote nothing meanwhile)
            slot.crash_mid_flush = False

    return start


def _heal_cuts(cluster: Cluster) -> None:
    cluster.network.heal_cuts()
    cluster.trace.step(cluster.now, "sim", "partition healed")


def _poisson(rng: random.Random, rate: float, start: float, end: float) -> list[float]:
    """Event times of a Poisson process of *rate* per second in ``[start, end)``."""
    times: list[float] = []
    if rate <= 0:
        return times
    time = start
    while True:
        time += rng.expovariate(rate)
        if time >= end:
            return times
        times.append(time)


def link_faults(
    scenario: Scenario, seed: int, nodes: int
) -> tuple[LinkFaults, dict[tuple[int, int], LinkFaults]]:
    """The default link and the per-link faults of a run (loss varies by link)."""
    default = LinkFaults(
        loss=0.0,
        duplicate=scenario.duplicate,
        delay_min_s=scenario.delay_min_s,
        delay_max_s=scenario.delay_max_s,
    )
    per_link: dict[tuple[int, int], LinkFaults] = {}
    if scenario.loss_max > 0:
        rng = stream(seed, "links")
        level = rng.uniform(0.05, scenario.loss_max)
        for a in range(nodes):
            for b in range(nodes):
                if a != b:
                    loss = rng.uniform(level / 2, level)
                    per_link[(a, b)] = LinkFaults(
                        loss=loss,
                        duplicate=scenario.duplicate,
                        delay_min_s=scenario.delay_min_s,
                        delay_max_s=scenario.delay_max_s,
                    )
    return default, per_link


def run(
    scenario: Scenario,
    seed: int,
    nodes: int | None = None,
    keep_trace: bool = False,
    node_factory: NodeFactory | None = None,
    full_check_every: int = 16,
) -> RunResult:
    """Play one seed of *scenario*; never raises for a protocol failure (see ``ok``)."""
    size = nodes if nodes is not None else nodes_for(scenario.name, seed)
    trace = Trace(keep=keep_trace)
    default, per_link = link_faults(scenario, seed, size)
    cluster = Cluster(
        seed,
        size,
        scenario.settings,
        default,
        trace=trace,
        node_factory=node_factory or Node,
        full_check_every=full_check_every,
        write_s=WRITE_S,
    )
    for (a, b), faults in per_link.items():
        cluster.network.set_link(cluster.slots[a].address, cluster.slots[b].address, faults)
    trace.step(0.0, "sim", f"run {scenario.name} seed {seed} nodes {size}")
    ok, reason, heal_s, settle_s = True, "", -1.0, -1.0
    try:
        the_run = _Run(scenario, seed, size, cluster)
        the_run.plan_all()
        heal_s, settle_s = the_run.play()
    except InvariantViolation as error:
        ok, reason = False, f"t={cluster.now:.6f}: {error}"
        trace.step(cluster.now, "sim", f"FAILED {error}")
        if error.__cause__ is not None:
            for line in traceback.format_exception(error.__cause__):
                trace.detail(line.rstrip())
    except Exception as error:  # a simulator bug: still a failed run with its replay
        ok, reason = False, f"t={cluster.now:.6f}: simulator error {type(error).__name__}: {error}"
        trace.step(cluster.now, "sim", f"SIMULATOR ERROR {error!r}")
        for line in traceback.format_exception(error):
            trace.detail(line.rstrip())
    stats = cluster.stats
    return RunResult(
        scenario=scenario.name,
        seed=seed,
        nodes=size,
        ok=ok,
        reason=reason,
        digest=trace.digest(),
        steps=trace.steps,
        virtual_s=cluster.now,
        heal_s=heal_s,
        settle_s=settle_s,
        adds_acked=stats.adds_acked,
        datagrams_sent=cluster.network.stats.datagrams_sent,
        barriers_completed=stats.barriers_completed,
        barriers_aborted=stats.barriers_aborted,
        log_len_max=stats.log_len_max,
        crashes=stats.crashes,
        crashes_mid_flush=stats.crashes_mid_flush,
        deletes=stats.deletes,
        wipes=stats.wipes,
        steps_batched=stats.steps_batched,
        step_inputs_max=stats.step_inputs_max,
        trace=trace.lines,
    )
