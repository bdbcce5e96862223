"""sd_notify without libsystemd: a datagram to $NOTIFY_SOCKET.

``READY=1`` once sockets are bound and state is loaded, ``WATCHDOG=1`` from the event
loop every half ``WATCHDOG_USEC``, ``STATUS=`` on changes, ``STOPPING=1`` on the way
out. Outside systemd (no NOTIFY_SOCKET) every call is a no-op.
"""

from __future__ import annotations

import contextlib
import os
import socket


class Notifier:
    def __init__(self, environ: dict[str, str] | None = None) -> None:
        env = os.environ if environ is None else environ
        path = env.get("NOTIFY_SOCKET", "")
        self._address = "\0" + path[1:] if path.startswith("@") else path
        usec = env.get("WATCHDOG_USEC", "")
        pid = env.get("WATCHDOG_PID", "")
        mine = not pid or pid == str(os.getpid())
        self._watchdog_s = int(usec) / 2_000_000 if usec.isdigit() and mine else None
        self._sock: socket.socket | None = None
        if self._address:
            self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)

    @property
    def watchdog_interval_s(self) -> float | None:
        return self._watchdog_s

    def notify(self, **fields: str) -> None:
        if self._sock is None:
            return
        message = "\n".join(f"{key}={value}" for key, value in fields.items())
        # systemd went away (or never listened): there is nobody to tell.
        with contextlib.suppress(OSError):
            self._sock.sendto(message.encode(), self._address)
