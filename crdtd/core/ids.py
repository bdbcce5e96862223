"""Names, origins and the validation every value from outside passes first.

Rules:
- a node id and a variable name are 1-64 characters of ``[A-Za-z0-9_.-]``;
- an origin is ``(node_id, incarnation)``: a node that lost its state comes back with a
  new incarnation, so the nonces it hands out again can never collide with old ones;
- a delta is an ``int`` (not a ``bool``) in the signed 64-bit range. Floats and numeric
  strings are refused, because the seed project lost days to ints arriving as strings.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import NamedTuple, cast

NAME_MAX = 64
_NAME = re.compile(r"[A-Za-z0-9_.-]{1,64}\Z")
INT64_MIN = -(2**63)
INT64_MAX = 2**63 - 1
UINT64_MAX = 2**64 - 1
NONCE_MAX = INT64_MAX
"""The largest nonce, base ``upto`` or watermark a datagram may carry: more ops than any
origin can issue, and low enough that no next nonce (+1) leaves 64 bits."""

Address = tuple[str, int]
"""Where a datagram came from or goes to: ``(host, port)``."""


class InvalidInput(ValueError):
    """A value from a user or a peer broke a rule; the message says which and why."""


class Origin(NamedTuple):
    """Who issued an op: a node id and the incarnation of that node's state."""

    node_id: str
    incarnation: int

    def __str__(self) -> str:
        return f"{self.node_id}/{self.incarnation}"


def is_name(value: object) -> bool:
    """True when *value* is a valid node id or variable name."""
    return isinstance(value, str) and _NAME.match(value) is not None


def check_name(value: object, what: str = "variable name") -> str:
    """Return *value* if it is a valid name, else raise `InvalidInput` saying why."""
    if not isinstance(value, str):
        raise InvalidInput(f"{what}: expected a string, got {type(value).__name__}")
    if not _NAME.match(value):
        raise InvalidInput(
            f"{what}: expected 1-{NAME_MAX} characters of [A-Za-z0-9_.-], got {value!r}"
        )
    return value


def check_delta(value: object) -> int:
    """Return *value* if it is a signed 64-bit integer, else raise `InvalidInput`."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise InvalidInput(f"delta: expected an integer, got {type(value).__name__} {value!r}")
    if not INT64_MIN <= value <= INT64_MAX:
        raise InvalidInput(f"delta: expected a signed 64-bit integer, got {value}")
    return value


def check_deltas(values: Sequence[object]) -> None:
    """`check_delta` each of *values*: a batch's check in C (types, then the range),
    with `check_delta`'s error for the first bad one."""
    ints = cast("Sequence[int]", values)
    if (
        values
        and set(map(type, values)) == {int}
        and INT64_MIN <= min(ints) <= max(ints) <= INT64_MAX
    ):
        return
    for value in values:
        check_delta(value)
