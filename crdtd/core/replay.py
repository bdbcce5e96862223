"""Replay protection: a sliding window over each sender's datagram sequence numbers.

Every datagram carries its sender's sequence number, which only grows within one boot
(the driver seeds it from the wall clock in microseconds); every boot is a new origin
(`crdtd.core.identity`) with its own window at each receiver, so a datagram captured and
replayed later, also after the sender restarted, is either at or below its origin's
window or already marked in it. The window
tolerates reordering of up to ``WINDOW`` datagrams, as IPsec's anti-replay window does.
It is enforced only with a cluster key: without authentication anyone can forge a fresh
datagram anyway.

The windows live in memory, so a node that restarts would forget them and accept, once,
every datagram captured before. `ReplayFloor` records carry each window's high-water mark
across the restart: the node writes them in the same transaction as any record a
datagram caused (so whatever changed durable state is refused after a crash), and the
rest at least every `FLOOR_SAVE_INTERVAL_S` and on a clean stop. What is left after a
``kill -9``: datagrams that changed nothing durable (announces, repair requests) in the
last interval can be replayed once (docs/protocol.md says what that can do).
"""

from __future__ import annotations

from crdtd.core.ids import Origin
from crdtd.core.records import ReplayFloor

WINDOW = 1024
FLOOR_SAVE_INTERVAL_S = 30.0
_ALL_SEEN = (1 << WINDOW) - 1


class ReplayWindow:
    __slots__ = ("highest", "seen")

    def __init__(self) -> None:
        self.highest = 0
        self.seen = 0  # bit i set: highest - i was accepted

    def accept(self, seq: int) -> bool:
        """True (and remember it) the first time *seq* is offered inside the window."""
        if seq > self.highest:
            shift = seq - self.highest
            self.seen = ((self.seen << shift) | 1) & _ALL_SEEN if shift < WINDOW else 1
            self.highest = seq
            return True
        offset = self.highest - seq
        if offset >= WINDOW or self.seen >> offset & 1:
            return False
        self.seen |= 1 << offset
        return True

    def raise_floor(self, seq: int) -> None:
        """Refuse every sequence number up to *seq* (restored from a `ReplayFloor`)."""
        if seq > self.highest:
            self.highest = seq
            self.seen = _ALL_SEEN


class Replays:
    """Every sender's window, and the floors already saved of them.

    Windows outlive their peers (an old datagram captured before a long silence is
    still refused) but not without bound: past *senders_max* the least recently heard
    sender's window goes, with its saved floor.
    """

    __slots__ = ("_next_save", "_saved", "_senders_max", "_windows")

    def __init__(self, senders_max: int, now: float) -> None:
        self._senders_max = senders_max
        self._windows: dict[Origin, ReplayWindow] = {}  # least recently heard first
        self._saved: dict[Origin, int] = {}
        self._next_save = now + FLOOR_SAVE_INTERVAL_S

    def accept(self, sender: Origin, seq: int) -> bool:
        """True the first time *sender*'s *seq* is offered inside its window."""
        return self._window(sender).accept(seq)

    def restore(self, floor: ReplayFloor) -> None:
        self._window(floor.sender).raise_floor(floor.seq)
        self._saved[floor.sender] = floor.seq

    @property
    def deadline(self) -> float:
        """When the floors are next saved even if nothing else is written."""
        return self._next_save

    def floors(self, now: float | None = None) -> list[ReplayFloor]:
        """The floors that rose since they were last saved; with *now*, only once the
        save is due (and then the next one is scheduled)."""
        if now is not None:
            if now < self._next_save:
                return []
            self._next_save = now + FLOOR_SAVE_INTERVAL_S
        floors = []
        for sender, window in self._windows.items():
            if window.highest > self._saved.get(sender, 0):
                floors.append(ReplayFloor(sender, window.highest))
                self._saved[sender] = window.highest
        return floors

    def _window(self, sender: Origin) -> ReplayWindow:
        window = self._windows.pop(sender, None) or ReplayWindow()
        self._windows[sender] = window
        while len(self._windows) > self._senders_max:
            oldest = next(iter(self._windows))
            del self._windows[oldest]
            self._saved.pop(oldest, None)
        return window
