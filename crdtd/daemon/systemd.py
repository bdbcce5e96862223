"""systemd without libsystemd: sd_notify, and the sockets of socket activation.

``READY=1`` once sockets are bound and state is loaded, ``WATCHDOG=1`` from the event
loop every half ``WATCHDOG_USEC``, ``STATUS=`` on changes, ``STOPPING=1`` on the way
out. Outside systemd (no NOTIFY_SOCKET) every call is a no-op.

`listen_fds` takes the sockets systemd opened for us (sd_listen_fds(3): fds from 3 on,
named by ``FileDescriptorName=``): the read-only control socket comes that way, because
only systemd, outside our sandbox, can give it a group the daemon is not in.
"""

from __future__ import annotations

import contextlib
import os
import socket
from collections.abc import MutableMapping

LISTEN_FDS_START = 3


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


class ListenFdsError(Exception):
    """systemd passed a socket we cannot use; the message names it."""


def listen_fds(environ: MutableMapping[str, str] | None = None) -> dict[str, socket.socket]:
    """The listening Unix stream sockets systemd passed to this process, by name; empty
    without socket activation. Removes the variables, so no child takes them too."""
    env = os.environ if environ is None else environ
    pid, count = env.pop("LISTEN_PID", ""), env.pop("LISTEN_FDS", "")
    names = env.pop("LISTEN_FDNAMES", "").split(":")
    if pid != str(os.getpid()) or not count.isdigit():
        return {}
    sockets: dict[str, socket.socket] = {}
    for index in range(int(count)):
        fd = LISTEN_FDS_START + index
        name = names[index] if index < len(names) and names[index] else f"fd{fd}"
        try:
            sock = socket.socket(fileno=fd)
        except OSError as error:
            raise ListenFdsError(f"socket {name!r} (fd {fd}): {error.strerror}") from error
        sock.set_inheritable(False)
        listening = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN)
        if (sock.family, sock.type, listening) != (socket.AF_UNIX, socket.SOCK_STREAM, 1):
            sock.close()
            raise ListenFdsError(
                f"socket {name!r} (fd {fd}) is not a listening Unix stream socket: "
                "use ListenStream=/path in the .socket unit"
            )
        sockets[name] = sock
    return sockets
