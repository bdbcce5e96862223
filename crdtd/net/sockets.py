"""UDP sockets for crdtd: one joined to the multicast group, one for unicast and sending.

Every datagram we send leaves from the unicast socket, multicast included, so a peer's
source address is always its unicast address: that is how peers learn where to send
repairs. The multicast socket binds the group address (not 0.0.0.0) so it only sees
group traffic, with SO_REUSEADDR/SO_REUSEPORT so several daemons on one host share it.
Each setup step is an explicit setsockopt; a failure says what to check.
"""

from __future__ import annotations

import errno
import ipaddress
import socket
from dataclasses import dataclass

import netifaces


class NetworkSetupError(Exception):
    """The network could not be set up; the message says what an operator can do."""


@dataclass(frozen=True, slots=True)
class Interface:
    name: str
    address: str


def resolve_interface(spec: str) -> Interface:
    """Find the interface to use: ``auto`` (the default route's), a name, or an IPv4 address."""
    if spec == "auto":
        default = netifaces.gateways().get("default", {}).get(netifaces.AF_INET)
        if not default:
            raise NetworkSetupError(
                "network.interface is auto but this host has no IPv4 default route; "
                "set network.interface to an interface name or address (e.g. eth0)"
            )
        return _by_name(default[1])
    try:
        ipaddress.IPv4Address(spec)
    except ValueError:
        return _by_name(spec)
    for name in netifaces.interfaces():
        for entry in netifaces.ifaddresses(name).get(netifaces.AF_INET, []):
            if entry.get("addr") == spec:
                return Interface(name, spec)
    raise NetworkSetupError(
        f"network.interface: no interface has the address {spec}; "
        f"addresses here: {', '.join(_all_addresses()) or 'none'}"
    )


def _by_name(name: str) -> Interface:
    if name not in netifaces.interfaces():
        raise NetworkSetupError(
            f"network.interface: no interface named {name!r}; "
            f"interfaces here: {', '.join(netifaces.interfaces())}"
        )
    entries = netifaces.ifaddresses(name).get(netifaces.AF_INET, [])
    if not entries:
        raise NetworkSetupError(f"network.interface: {name} has no IPv4 address")
    return Interface(name, entries[0]["addr"])


def _all_addresses() -> list[str]:
    return [
        entry["addr"]
        for name in netifaces.interfaces()
        for entry in netifaces.ifaddresses(name).get(netifaces.AF_INET, [])
    ]


def multicast_socket(group: str, port: int, interface: Interface) -> socket.socket:
    """A socket bound to the group and joined on *interface*, ready for asyncio."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM, socket.IPPROTO_UDP)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        _step(sock.bind, (group, port), what=f"binding the multicast port {group}:{port}")
        membership = socket.inet_aton(group) + socket.inet_aton(interface.address)
        _step(
            sock.setsockopt,
            socket.IPPROTO_IP,
            socket.IP_ADD_MEMBERSHIP,
            membership,
            what=f"joining {group} on {interface.name} ({interface.address})",
        )
        sock.setblocking(False)
    except BaseException:
        sock.close()
        raise
    return sock


def unicast_socket(port: int, interface: Interface, ttl: int) -> socket.socket:
    """The socket we receive unicast on and send everything from."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM, socket.IPPROTO_UDP)
    try:
        _step(
            sock.bind,
            (interface.address, port),
            what=f"binding the unicast port {interface.address}:{port}",
        )
        address = socket.inet_aton(interface.address)
        _step(
            sock.setsockopt,
            socket.IPPROTO_IP,
            socket.IP_MULTICAST_IF,
            address,
            what=f"choosing {interface.name} for multicast",
        )
        _step(
            sock.setsockopt,
            socket.IPPROTO_IP,
            socket.IP_MULTICAST_TTL,
            ttl,
            what="setting the multicast TTL",
        )
        # Loop on: other daemons on this host (the demo, the tests) must hear us; the
        # core ignores its own datagrams.
        _step(
            sock.setsockopt,
            socket.IPPROTO_IP,
            socket.IP_MULTICAST_LOOP,
            1,
            what="enabling multicast loopback",
        )
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 * 1024 * 1024)
        sock.setblocking(False)
    except BaseException:
        sock.close()
        raise
    return sock


_HINTS = {
    errno.EADDRINUSE: "another process uses this port; give each daemon its own "
    "network.unicast_port (several daemons on one host share only the multicast port)",
    errno.EADDRNOTAVAIL: "the address is not on this host; check network.interface",
    errno.ENODEV: "the interface cannot do multicast; check `ip link` shows MULTICAST "
    "or pick another network.interface",
    errno.EACCES: "ports below 1024 need privileges; pick a higher port",
    errno.ENOBUFS: "the kernel limits group memberships (net.ipv4.igmp_max_memberships)",
    errno.EINVAL: "check network.group is a multicast address and network.interface is up",
}


def _step(call: object, *args: object, what: str) -> None:
    try:
        call(*args)  # type: ignore[operator]
    except OSError as error:
        hint = _HINTS.get(error.errno or 0, "check the network settings in the config")
        raise NetworkSetupError(f"{what} failed: {error.strerror}; {hint}") from error
