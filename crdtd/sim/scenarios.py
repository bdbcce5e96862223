"""The scenario table: each named scenario is one frozen set of knobs.

A run has two phases. The *fault phase* lasts ``fault_s`` virtual seconds: the workload
adds to random live nodes while the network and the nodes misbehave as the knobs say.
Then the *heal*: loss goes to zero, cuts and clogs end, every node is up, no more adds -
and within ``heal_bound_s`` every live node must hold the sum of the acknowledged ops.

The names are a contract (the CLI, CI and the bench use them). To add a scenario, add one
`Scenario(...)` to ``_SCENARIOS``; every knob has a quiet default, so a scenario names
only what it stresses, and the test suite sweeps every entry but ``quiet``. Rates are per
second of virtual time for the whole cluster. For example::

    Scenario("barrier-crash", "barriers while nodes crash", syncs_per_s=0.4,
             crashes_per_s=0.6, mid_flush_p=0.35, barrier_after_heal=True),
"""

from __future__ import annotations

from dataclasses import dataclass, field

from crdtd.core.settings import Settings
from crdtd.sim.cluster import address_of


@dataclass(frozen=True, slots=True)
class Scenario:
    name: str
    summary: str
    fault_s: float = 10.0
    heal_bound_s: float = 60.0
    # workload
    adds_per_s: float = 5.0
    variables: int = 3
    created: int = 1
    """How many of the variables are created explicitly with ``create()`` at the start."""
    big_delta_p: float = 0.03
    """Chance that a delta is +/- 2**62 instead of a small one."""
    burst_p: float = 0.03
    """Chance that an add is a burst: many adds at one node, flushed once (big batches)."""
    burst_max: int = 150
    deletes_per_s: float = 0.0
    """Rate of ``delete`` calls at random live nodes, each of a random variable."""
    # network
    loss_max: float = 0.0
    """Each run draws a loss level up to this; each link then loses level/2..level."""
    duplicate: float = 0.0
    delay_min_s: float = 0.0001
    delay_max_s: float = 0.002
    partitions_per_s: float = 0.0
    partition_s: tuple[float, float] = (0.5, 3.0)
    one_way_p: float = 0.3
    clogs_per_s: float = 0.0
    clog_s: tuple[float, float] = (0.1, 2.0)
    # nodes
    crashes_per_s: float = 0.0
    mid_flush_p: float = 0.3
    """Chance that a crash happens inside an add's flush, before its records are synced."""
    wipe_p: float = 0.0
    """Chance that a crashed node comes back with an empty disk and a new incarnation."""
    down_s: tuple[float, float] = (0.2, 3.0)
    no_multicast_p: float = 0.0
    """Chance that each node sits where multicast does not pass, for the whole run."""
    late_join_p: float = 0.0
    """Chance that each node (but n00) starts during the fault phase instead of at 0."""
    rewind_p: float = 0.0
    """Chance that a crashed node comes back from an older copy of its disk (a snapshot
    reverted), keeping a random prefix of its synced records."""
    clock_back_p: float = 0.0
    """Chance that a restart proposes its incarnation from a clock an hour behind."""
    clones_per_s: float = 0.0
    """Rate at which a live node's disk is copied to a new machine that boots beside it."""
    forgeries_per_s: float = 0.0
    """Rate of forged datagrams from a key holder: claims about the receiver's own origin,
    impersonations of its peers, barrier starts from a stranger."""
    # barriers
    syncs_per_s: float = 0.0
    """Rate of ``start_sync`` calls at random live nodes during the fault phase."""
    sync_at_s: tuple[float, ...] = ()
    """Fixed times (within the fault phase) of ``start_sync`` at a random live node."""
    barrier_after_heal: bool = False
    """After converging (and 2.5 announce intervals, so everyone knows everyone), a
    barrier must complete, leave every log empty and every node at one epoch."""
    settings: Settings = field(default_factory=Settings)

    def __post_init__(self) -> None:
        assert 0.0 <= self.loss_max <= 0.3, "loss beyond 30% is out of the brief"
        assert 0 <= self.created <= self.variables


SEEDED = Settings(seeds=(address_of(0), address_of(1)))
"""Default settings plus two seeds, for nodes that multicast cannot reach."""

_SCENARIOS = (
    Scenario("quiet", "no faults at all: the baseline"),
    Scenario("lossy", "every link loses up to 30% of datagrams", loss_max=0.3),
    Scenario("duplicate", "every link duplicates 30% of datagrams", duplicate=0.3),
    Scenario(
        "reorder",
        "delays spread over 0.1-80 ms and clogged links: datagrams overtake each other",
        delay_min_s=0.0001,
        delay_max_s=0.08,
        clogs_per_s=1.0,
    ),
    Scenario(
        "partition",
        "symmetric and one-way splits, one at a time, some outlasting peer_timeout_s",
        fault_s=15.0,
        partitions_per_s=0.4,
        partition_s=(0.5, 12.0),
    ),
    Scenario(
        "crash",
        "nodes crash (some inside an add's flush, some lose their disk) and restart",
        crashes_per_s=0.6,
        mid_flush_p=0.35,
        wipe_p=0.2,
        down_s=(0.2, 11.0),
    ),
    Scenario("join", "a third of the nodes join late", late_join_p=0.35),
    Scenario(
        "no-multicast",
        "a third of the nodes neither send nor hear multicast; they know n00 and n01 as seeds",
        no_multicast_p=0.35,
        loss_max=0.1,
        late_join_p=0.2,
        settings=SEEDED,
    ),
    Scenario(
        "chaos",
        "loss, duplicates, reordering, clogs, partitions, crashes, late joins and nodes "
        "without multicast, together",
        loss_max=0.3,
        duplicate=0.1,
        delay_max_s=0.03,
        clogs_per_s=0.5,
        partitions_per_s=0.3,
        crashes_per_s=0.4,
        mid_flush_p=0.35,
        wipe_p=0.15,
        late_join_p=0.2,
        no_multicast_p=0.1,
        syncs_per_s=0.2,
        barrier_after_heal=True,
        settings=SEEDED,
    ),
    Scenario(
        "barrier",
        "barriers every two seconds or so under 10% loss and reordering, writes flowing",
        loss_max=0.1,
        delay_max_s=0.03,
        syncs_per_s=0.5,
        barrier_after_heal=True,
    ),
    Scenario(
        "barrier-crash",
        "barriers while participants and initiators crash (some mid-flush, some wiped)",
        syncs_per_s=0.5,
        crashes_per_s=0.6,
        mid_flush_p=0.35,
        wipe_p=0.1,
        down_s=(0.2, 6.0),
        barrier_after_heal=True,
    ),
    Scenario(
        "barrier-join",
        "barriers while a third of the nodes join late, some in the middle of one",
        syncs_per_s=0.6,
        late_join_p=0.35,
        barrier_after_heal=True,
    ),
    Scenario(
        "barrier-partition",
        "barriers across symmetric and one-way splits: both halves compact, then merge",
        fault_s=15.0,
        syncs_per_s=0.6,
        partitions_per_s=0.4,
        partition_s=(0.5, 8.0),
        barrier_after_heal=True,
    ),
    Scenario(
        "clone",
        "a node's disk is copied to a new machine while both run and take writes; "
        "barriers keep completing",
        clones_per_s=0.2,
        crashes_per_s=0.2,
        syncs_per_s=0.3,
        loss_max=0.05,
        barrier_after_heal=True,
    ),
    Scenario(
        "rewind",
        "crashed nodes come back from older copies of their disks, some with the clock "
        "an hour behind",
        crashes_per_s=0.6,
        rewind_p=0.6,
        clock_back_p=0.3,
        mid_flush_p=0.2,
        down_s=(0.2, 5.0),
        syncs_per_s=0.3,
        barrier_after_heal=True,
    ),
    Scenario(
        "forged-claim",
        "a key holder claims ops, bases and watermarks of each node's own origin, "
        "impersonates peers and starts barriers as a stranger",
        forgeries_per_s=5.0,
        syncs_per_s=0.3,
        loss_max=0.05,
        barrier_after_heal=True,
    ),
    Scenario(
        "delete",
        "variables deleted and written again while nodes crash, split, lose datagrams "
        "and sync: a grave buries the same ops everywhere and nothing deleted comes back",
        fault_s=12.0,
        adds_per_s=8.0,
        big_delta_p=0.0,
        deletes_per_s=1.0,
        created=3,
        crashes_per_s=0.3,
        mid_flush_p=0.3,
        down_s=(0.2, 4.0),
        partitions_per_s=0.25,
        partition_s=(0.5, 6.0),
        loss_max=0.1,
        syncs_per_s=0.3,
        barrier_after_heal=True,
    ),
    Scenario(
        "barrier-storm",
        "many nodes start barriers at once, again and again: they resolve to one",
        syncs_per_s=4.0,
        loss_max=0.05,
        barrier_after_heal=True,
    ),
)

SCENARIOS: dict[str, Scenario] = {scenario.name: scenario for scenario in _SCENARIOS}
"""Every scenario by name, in a fixed order."""
