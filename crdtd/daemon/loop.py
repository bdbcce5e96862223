"""The event loop the daemon runs on: uvloop where it is installed, else asyncio's own.

bench/peers.py measured uvloop (Debian's python3-uvloop, which the package recommends)
at about a fifth less CPU per add with 256 adds in flight and the same answers; the
daemon needs nothing of it but a loop, so it stays optional. ``CRDTD_EVENT_LOOP``
chooses: ``auto`` (the default), ``uvloop`` (an error without it) or ``asyncio``.
"""

from __future__ import annotations

import asyncio
import importlib
import os
from collections.abc import Callable

ENV = "CRDTD_EVENT_LOOP"
CHOICES = ("auto", "uvloop", "asyncio")


class LoopUnavailable(Exception):
    pass


def loop_factory(
    choice: str | None = None,
) -> tuple[Callable[[], asyncio.AbstractEventLoop], str]:
    """The factory of the loop *choice* (default: ``$CRDTD_EVENT_LOOP``, else auto)
    names, and that loop's name for the log."""
    choice = (choice if choice is not None else os.environ.get(ENV, "")) or "auto"
    if choice not in CHOICES:
        raise LoopUnavailable(f"{ENV}={choice!r}: expected one of {', '.join(CHOICES)}")
    if choice != "asyncio":
        try:
            uvloop = importlib.import_module("uvloop")
        except ImportError:
            if choice == "uvloop":
                raise LoopUnavailable(
                    f"{ENV}=uvloop, but uvloop is not installed (apt install python3-uvloop)"
                ) from None
        else:
            return uvloop.new_event_loop, f"uvloop {uvloop.__version__}"
    return asyncio.new_event_loop, "asyncio"
