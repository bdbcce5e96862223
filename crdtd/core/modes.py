"""A node's barrier mode: one enum, from the wire to the control answers.

Work: adds apply at once. Sync and Ready: the node is in a barrier (frozen; adds are
held). `crdtd.core.sync` moves it; the wire carries it as an index (`wire.MODES`);
everything outside the core renders ``mode.value``.
"""

from __future__ import annotations

import enum


class Mode(enum.Enum):
    WORK = "work"
    SYNC = "sync"
    READY = "ready"
