"""Seeded randomness for the simulator: one independent stream per purpose.

Rules:
- every random choice the simulator makes comes from a stream made here, never from the
  ``random`` module's global state, so a run is a pure function of its seed;
- one stream per purpose (``network``, ``workload``, ``faults``, ``node/<id>/<boot>``):
  adding a draw to one purpose does not shift the draws of the others, so a change to the
  workload generator leaves the network's fault pattern of a seed unchanged;
- ``random.Random`` seeded with a ``str`` hashes it with SHA-512, which does not depend on
  ``PYTHONHASHSEED``.
"""

from __future__ import annotations

import random


def stream(seed: int, purpose: str) -> random.Random:
    """The random stream of *seed* for *purpose* (``"network"``, ``"node/n03/1"``...)."""
    return random.Random(f"{seed}/{purpose}")
