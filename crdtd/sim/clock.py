"""Virtual time: a float that only the simulator advances.

Rules:
- time never goes backwards; ``advance_to`` refuses an earlier instant (a simulator bug);
- nothing reads a real clock: the simulator jumps straight to the next instant at which
  something can happen (a delivery, a node timer, a scheduled action), so ten minutes of
  protocol time cost only the steps that happen in them.
"""

from __future__ import annotations


class VirtualClock:
    """The simulator's notion of now, in seconds since the run began."""

    __slots__ = ("now",)

    def __init__(self, start: float = 0.0) -> None:
        self.now = start

    def advance_to(self, instant: float) -> float:
        """Move to *instant* (never backwards) and return the new now."""
        assert instant >= self.now, f"clock would go back from {self.now} to {instant}"
        self.now = instant
        return instant
