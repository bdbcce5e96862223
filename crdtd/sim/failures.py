"""What a failed simulation run raises.

A check that finds the protocol (or the simulated world) in a state that must never
happen raises `InvariantViolation` with a reason a person can act on: which invariant,
which node, which variable or op, and the values that disagree. The runner turns it into a
failed run with a replay command; it is never caught anywhere else.
"""

from __future__ import annotations


class InvariantViolation(AssertionError):
    """A safety or liveness invariant does not hold; ``str(error)`` is the reason."""
