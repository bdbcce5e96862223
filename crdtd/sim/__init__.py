"""Deterministic simulation of a crdtd cluster: one process, one virtual clock, a seed.

Modules, in dependency order:

- ``rng``: one seeded ``random.Random`` per purpose (network, workload, faults, links,
  ``node/<id>/<boot>``);
- ``clock``: virtual time, only ever moved forward by the cluster;
- ``failures``: `InvariantViolation`, what every failed check raises;
- ``trace``: the per-step trace and its SHA-256 digest;
- ``network``: datagrams in flight and per-link loss, duplication, delay, cuts, clogs;
- ``disk``: synced and unsynced records; a crash keeps only the synced ones;
- ``ledger``: the ground truth - every op issued and every op acknowledged;
- ``invariants``: the safety checks run after every step, and convergence;
- ``cluster``: nodes on disks on a network, driven in the fixed flush order;
- ``scenarios``: the table of named scenarios (frozen knobs);
- ``runner``: plans and plays one seed of a scenario, heals, checks convergence;
- ``cli`` / ``__main__``: ``python -m crdtd.sim --scenario NAME --seeds START:END``.

A run is a pure function of ``(scenario, seed, nodes)``: the same arguments give the same
trace digest in any process, whatever ``PYTHONHASHSEED`` is. A failed run prints the
command that replays it with its trace.
"""
