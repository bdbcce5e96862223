"""What a config needs of this host, checked before the daemon starts anything.

`crdtd --check-config` and the daemon's start-up run the same checks, in this order, so
that a config the daemon would refuse is refused by ``--check-config`` first, with the
same message:

1. the file loads (`crdtd.daemon.config`: syntax, keys, types, bounds, ports differ);
2. the key file of ``security.key_file`` can be read, is private and holds keys
   (`crdtd.daemon.keys`);
3. ``network.interface`` exists on this host and has an IPv4 address;
4. a node without keys runs only on loopback, unless ``security.allow_unauthenticated``
   says the network is an isolated test network (`unauthenticated_refusal`).

Every failure is a `ConfigError`, on which the daemon exits with status 78 (EX_CONFIG),
a status the unit does not restart: starting again cannot fix a file or name an
interface that is not there, and a restart loop would only bury the reason in the
journal. What may change between two starts (a port in use, a full disk, a state
directory it cannot open) is not checked here: it fails at start with status 1 and the
unit tries again.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from pathlib import Path

from crdtd.core.settings import Key
from crdtd.daemon.config import Config, ConfigError
from crdtd.daemon.keys import load_keys
from crdtd.net.sockets import Interface, NetworkSetupError, resolve_interface

KEYGEN_EXAMPLE_PATH = "/etc/crdtd/cluster.key"


@dataclass(frozen=True, slots=True)
class Preflight:
    """What the checks found, and the daemon then starts with."""

    interface: Interface
    keys: tuple[Key, ...]


def preflight(config: Config, config_path: Path | None) -> Preflight:
    """Run checks 2-4 on a loaded *config*; raise `ConfigError` saying what to fix."""
    keys = load_keys(config.security.key_file) if config.security.key_file else ()
    source = config_path or "built-in defaults"
    try:
        interface = resolve_interface(config.network.interface)
    except NetworkSetupError as error:
        raise ConfigError(f"{source}: {error}") from None
    if refusal := unauthenticated_refusal(config, config_path, interface):
        raise ConfigError(refusal)
    return Preflight(interface, keys)


def unauthenticated_refusal(
    config: Config, config_path: Path | None, interface: Interface
) -> str | None:
    """Why the daemon must not start on *interface* with *config*, or None when it may:
    it has keys, runs on loopback, or ``security.allow_unauthenticated`` is true."""
    security = config.security
    if security.key_file is not None or security.allow_unauthenticated:
        return None
    if ipaddress.IPv4Address(interface.address).is_loopback:
        return None
    source = config_path or "built-in defaults"
    return (
        f"{source}: security.key_file is not set, and network.interface "
        f"{config.network.interface} is {interface.name} ({interface.address}), not "
        "loopback: crdtd does not run unauthenticated on a network. Run "
        f"`crdtd keygen {KEYGEN_EXAMPLE_PATH}` once, copy that file (mode 0600, owned by "
        "the daemon's user) to every node, and set security.key_file to its path; or, on "
        "an isolated test network only, set security.allow_unauthenticated: true"
    )
