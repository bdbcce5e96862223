"""The trace of a run: one line per step, and a digest that pins the whole run down.

Rules:
- a line is ``<time> <node> <what>``; time is printed with ``repr`` precision so two runs
  that differ by one ulp differ in the digest;
- the digest is SHA-256 over every line (newline-terminated) and every payload sent, in
  order, so it changes if any step, any byte on the wire or any timing changes - the
  determinism test compares digests, not logs;
- lines are kept only when asked (``--trace``); hashing is always on, and cheap;
- detail lines (records, events, sends) are kept for a person reading a replay but are
  not hashed: the digest is the same with and without ``--trace``.
"""

from __future__ import annotations

import hashlib


class Trace:
    """Accumulates the canonical trace of a run."""

    __slots__ = ("_hash", "keep", "lines", "steps")

    def __init__(self, keep: bool = False) -> None:
        self._hash = hashlib.sha256()
        self.keep = keep
        self.lines: list[str] = []
        self.steps = 0

    def step(self, now: float, who: str, what: str) -> None:
        """Record one step: at *now*, *who* (a node id or ``sim``) did *what*."""
        line = f"{now!r} {who} {what}"
        self._hash.update(line.encode())
        self._hash.update(b"\n")
        self.steps += 1
        if self.keep:
            self.lines.append(line)

    def detail(self, text: str) -> None:
        """Keep an indented detail line for a person (not part of the digest)."""
        if self.keep:
            self.lines.append(text)

    def payload(self, data: bytes) -> None:
        """Fold the bytes of a sent datagram into the digest."""
        self._hash.update(data)

    def digest(self) -> str:
        return self._hash.hexdigest()
