"""Diagnosis: ``net-test``'s checks and the kernel's view of our sockets.

``net-test`` and ``stats`` read /proc/self/net/igmp and /proc/self/net/udp (the unit's
``ProcSubset=pid`` hides /proc/net, but not a process's own view of its network
namespace) and the interface's flags (by SIOCGIFFLAGS, since /sys/class/net need not
show our namespace); the handler does these reads outside the owner task, after it
answered. A check whose source cannot be read is ``UNKNOWN``, never ``OK``: a check
that could not look has seen nothing wrong, but it has not seen things right either.
Everything here is a pure function of what was read, so it is tested on sample text.
"""

from __future__ import annotations

import fcntl
import socket
import struct
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

PROC_NET = Path("/proc/self/net")
_SIOCGIFFLAGS = 0x8913  # linux/sockios.h
_IFREQ = struct.Struct("16sH22x")  # struct ifreq: the name, then ifr_flags (40 bytes)
_IFF_UP = 0x1
_IFF_MULTICAST = 0x1000
_UNICAST_COPIES_MIN = 2  # unicast announces from a peer before we say it cannot hear us


STATUSES = ("OK", "WARN", "FAIL", "UNKNOWN")
"""A net-test check's status; only OK counts as passed (UNKNOWN: its source could not
be read, so nothing was checked)."""


@dataclass(frozen=True, slots=True)
class Unreadable:
    """A kernel source that could not be read, and why, for the check's detail."""

    source: Path | str
    reason: str

    def __str__(self) -> str:
        return f"cannot read {self.source}: {self.reason}"


def _read(path: Path) -> str | Unreadable:
    try:
        return path.read_text()
    except OSError as error:
        return Unreadable(path, error.strerror or type(error).__name__)


@dataclass(frozen=True, slots=True)
class NetInfo:
    """What the daemon set its sockets up with, for ``net-test`` and ``stats``."""

    interface: str
    address: str
    group: str
    port: int
    unicast_port: int
    ttl: int
    socket_inodes: tuple[int, ...] = ()


def _check(name: str, status: str, detail: str, hint: str = "") -> dict[str, str]:
    return {"check": name, "status": status, "detail": detail, "hint": hint}


def net_checks(
    net: NetInfo,
    view: dict[str, Any],
    groups: list[str] | Unreadable,
    drops: dict[int, int] | Unreadable,
    flags: int | Unreadable,
) -> list[dict[str, str]]:
    """The ``net-test`` checklist from what the node saw (*view*, see `_cmd_net_test`),
    the groups the kernel joined on our interface, our sockets' drops and the
    interface's flags (each `Unreadable` when its source could not be read: that check
    is UNKNOWN)."""
    checks = [_interface_check(net, flags)]
    group = f"{net.group}:{net.port}"
    if isinstance(groups, Unreadable):
        checks.append(
            _check(
                "membership",
                "UNKNOWN",
                f"{groups}: whether {net.interface} joined {net.group} is not known",
                f"`ip maddr show dev {net.interface}` must list {net.group}",
            )
        )
    elif net.group in groups:
        checks.append(_check("membership", "OK", f"{net.interface} has joined {net.group}"))
    else:
        checks.append(
            _check(
                "membership",
                "FAIL",
                f"{net.interface} has not joined {net.group} "
                f"(joined: {', '.join(groups) or 'none'})",
                f"`ip maddr show dev {net.interface}` must list {net.group}; restart crdtd, "
                "and check network.interface is the LAN's",
            )
        )
    loopback = net.address.startswith("127.")
    if net.ttl == 0 and not loopback:
        checks.append(
            _check(
                "ttl",
                "WARN",
                "ttl 0: multicast never leaves this host",
                "set network.ttl: 1 for a LAN",
            )
        )
    else:
        checks.append(_check("ttl", "OK", f"ttl {net.ttl}"))
    quiet_s: float = view["quiet_s"]
    peers: list[dict[str, Any]] = view["peers"]
    if not peers:
        checks.append(
            _check(
                "peers",
                "WARN",
                "no peer heard, by multicast or unicast",
                f"check the other nodes run with group {group}; where multicast does not "
                "pass, list one node's ADDRESS:PORT in network.peers",
            )
        )
    for peer in peers:
        if peer["superseded"]:
            checks.append(_superseded_check(peer))
        else:
            checks.extend(_peer_checks(peer, group, quiet_s, net))
    known = {tuple(peer["address"]) for peer in peers}
    for host, port in view["seeds"]:
        if (host, port) not in known:
            checks.append(
                _check(
                    f"seed {host}:{port}",
                    "FAIL",
                    f"the seed {host}:{port} (network.peers) never answered",
                    "check crdtd runs there with that network.unicast_port, and that UDP to "
                    "it is not firewalled",
                )
            )
    inbox = view["inbox_dropped"]
    if isinstance(drops, Unreadable):
        checks.append(
            _check(
                "receive drops",
                "UNKNOWN" if not inbox else "WARN",
                f"{drops}: the kernel's drops are not known; {inbox} dropped by crdtd "
                "(inbox full) since start",
                "`ss -uamn` shows each socket's drops (d...) in skmem",
            )
        )
        return checks
    kernel = sum(drops.values())
    if kernel or inbox:
        checks.append(
            _check(
                "receive drops",
                "WARN",
                f"{kernel} datagrams dropped by the kernel (socket buffer full), "
                f"{inbox} by crdtd (inbox full), since start",
                "the daemon fell behind its traffic: check CPU and disk latency; raise "
                "net.core.rmem_max; repairs recover the ops, but watch the trend",
            )
        )
    else:
        checks.append(_check("receive drops", "OK", "no datagram dropped on receive"))
    return checks


def _interface_check(net: NetInfo, flags: int | Unreadable) -> dict[str, str]:
    detail = f"{net.interface} {net.address}"
    if isinstance(flags, Unreadable):
        return _check(
            "interface",
            "UNKNOWN",
            f"{detail}; whether it is up with multicast on is not known: {flags}",
            f"`ip link show {net.interface}` must say UP and MULTICAST",
        )
    if not flags & _IFF_UP:
        return _check(
            "interface",
            "FAIL",
            f"{detail} is down",
            f"bring it up (`ip link set {net.interface} up`) or set network.interface",
        )
    if not flags & _IFF_MULTICAST and not net.address.startswith("127."):
        return _check(
            "interface",
            "FAIL",
            f"{detail} has multicast off",
            f"`ip link set {net.interface} multicast on`, or pick another network.interface",
        )
    return _check(
        "interface", "OK", detail, "" if not net.address.startswith("127.") else "loopback"
    )


def _superseded_check(peer: dict[str, Any]) -> dict[str, str]:
    """A peer another origin of its node id replaced: nothing the network did, so OK."""
    name = peer["node_id"]
    return _check(
        f"{name} restarted",
        "OK",
        f"{name} came back as a new incarnation; the old one ({peer['incarnation']}), "
        f"silent for {peer['last_seen_s']:.0f} s, is forgotten in "
        f"{max(peer['forgotten_in_s'], 0):.0f} s",
    )


def _peer_checks(
    peer: dict[str, Any], group: str, quiet_s: float, net: NetInfo
) -> list[dict[str, str]]:
    name = peer["node_id"]
    host, port = peer["address"]
    checks = []
    heard = peer["multicast_ago_s"]
    if heard is not None and heard <= quiet_s:
        checks.append(_check(f"{name} multicast", "OK", f"we hear {name} by multicast"))
    elif heard is None and peer["known_s"] < quiet_s:
        checks.append(
            _check(f"{name} multicast", "WARN", f"{name} joined just now: too early to tell")
        )
    else:
        when = "never" if heard is None else f"not for {heard:.0f} s"
        how = "nothing at all" if peer["suspected"] else "only unicast"
        checks.append(
            _check(
                f"{name} multicast",
                "FAIL",
                f"multicast from {name} ({host}) to {group} reaches us {when}; we hear "
                f"{how} from it",
                "the network between drops multicast: a firewall dropping 224.0.0.0/4 "
                f"here or on {host} (iptables -S), IGMP snooping without a querier on the "
                f"switch, or {name} uses another group/interface. Replication still works "
                "by unicast copies",
            )
        )
    copies, copy_ago = peer["unicast_copies"], peer["unicast_copy_ago_s"]
    if copies >= _UNICAST_COPIES_MIN and copy_ago is not None and copy_ago <= quiet_s:
        checks.append(
            _check(
                f"{name} hears us",
                "FAIL",
                f"{name} sends us unicast copies of its announces: it does not hear our "
                f"multicast from {net.address}",
                f"check a firewall dropping multicast out of here or into {host}, and that "
                f"{name} joined {group} on the interface facing us",
            )
        )
    elif heard is not None and heard <= quiet_s:
        checks.append(
            _check(f"{name} hears us", "OK", f"probably: {name} sends us no unicast copies")
        )
    else:
        checks.append(
            _check(
                f"{name} hears us",
                "WARN",
                f"unknown: we cannot tell whether {name} hears our multicast",
                f"run crdtctl net-test on {name}",
            )
        )
    if peer["suspected"]:
        checks.append(
            _check(
                f"{name} unicast",
                "FAIL",
                f"nothing from {name} ({host}:{port}) for {peer['last_seen_s']:.1f} s",
                f"check {name} runs and UDP port {port} is reachable both ways",
            )
        )
    else:
        checks.append(
            _check(
                f"{name} unicast",
                "OK",
                f"last datagram from {host}:{port} {peer['last_seen_s'] * 1000:.0f} ms ago",
            )
        )
    return checks


def interface_flags(interface: str) -> int | Unreadable:
    """The interface's flags (IFF_UP, IFF_MULTICAST...), asked of the kernel with
    SIOCGIFFLAGS: /sys/class/net need not show this network namespace's interfaces
    (under the unit in a container it does not), an ioctl on a socket always does."""
    request = _IFREQ.pack(interface.encode(), 0)
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
            answer = fcntl.ioctl(sock.fileno(), _SIOCGIFFLAGS, request)
    except OSError as error:
        return Unreadable(f"the flags of {interface}", error.strerror or type(error).__name__)
    flags: int = _IFREQ.unpack(answer)[1]
    return flags


def igmp_groups(interface: str, proc_net: Path = PROC_NET) -> list[str] | Unreadable:
    """The IPv4 groups the kernel has joined on *interface* (``igmp``)."""
    text = _read(proc_net / "igmp")
    if isinstance(text, Unreadable):
        return text
    lines = text.splitlines()
    groups: list[str] = []
    current = None
    for line in lines[1:]:
        if not line.startswith(("\t", " ")):
            fields = line.split()
            current = fields[1] if len(fields) > 1 else None
        elif current == interface and line.split():
            value = int(line.split()[0], 16)
            groups.append(socket.inet_ntoa(struct.pack("<I", value)))
    return groups


def udp_drops(inodes: Iterable[int], proc_net: Path = PROC_NET) -> dict[int, int] | Unreadable:
    """The kernel's receive drops of the UDP sockets with *inodes* (``udp``)."""
    wanted = set(inodes)
    drops: dict[int, int] = {}
    if not wanted:
        return drops
    text = _read(proc_net / "udp")
    if isinstance(text, Unreadable):
        return text
    for line in text.splitlines()[1:]:
        fields = line.split()
        if len(fields) >= 13 and fields[9].isdecimal() and int(fields[9]) in wanted:
            drops[int(fields[9])] = int(fields[12])
    return drops
