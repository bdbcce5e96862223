"""The daemon's YAML config (``crdtd --config FILE``), checked before anything starts.

Rules:
- the keys are a public contract; ``config/crdtd.yaml`` lists every one with its
  default, and loading that file gives exactly `Config()`;
- a missing key takes its default; an empty file, or a section left empty (all of its
  keys commented out), means defaults;
- an unknown or repeated key is an error, so a typo never silently becomes a default;
- types are strict: a string is not a number, and a YAML boolean (``yes``, ``on``) is not
  a number either; quote a node id that looks like a number;
- peer timing must be strictly increasing: announce_interval_s < peer_suspect_s <
  peer_timeout_s, whether the file sets one of them or all three;
- every duration is within sane bounds (`SECONDS_MIN` .. `SECONDS_MAX`; a day for the
  full-sync cadence), network.port differs from network.unicast_port, and the control
  socket's path fits a Unix socket address;
- what needs this host (the interface exists and has an IPv4 address, the key file can
  be read) is checked by `crdtd.daemon.preflight`, which runs after this;
- every error is one line ``FILE:LINE: dotted.key: expected WHAT, got FOUND`` (FILE as
  given), where LINE is the line of the offending value (of the key, for an unknown or
  repeated key), so the operator can fix the file without reading this code.

Theory of operation: the file is composed into a YAML node tree (which keeps line
numbers; `crdtd.daemon.yamlfile`, shared with the key file loader) rather than loaded
into plain dicts (which lose them). Each dataclass field carries the check for its key in
its metadata, so a key, its type, its default and its rule are written once. Each scalar
is constructed with PyYAML's safe constructor and handed to that check.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import operator
import os
import re
from collections.abc import Callable
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import yaml

from crdtd.core.ids import NAME_MAX, is_name
from crdtd.core.settings import DATAGRAM_BYTES_MAX, Key, Settings
from crdtd.daemon.logs import FORMATS, LEVELS
from crdtd.daemon.yamlfile import ConfigError, YamlFile, read_text, tag

__all__ = ["Config", "ConfigError", "default_config_path", "load_config"]

DEFAULT_CONFIG_PATH = Path("/etc/crdtd/crdtd.yaml")


@dataclass(frozen=True, slots=True)
class _Check:
    """How one key is checked: *convert* raises ValueError for a value that does not fit."""

    expected: str
    convert: Callable[[object], object]
    each: str | None = None  # the key holds a YAML list; each item is *each* (expected)


def _rule(check: _Check) -> dict[str, _Check]:
    """Field metadata for a key: the loader finds the key's check here."""
    return {"check": check}


def _integer(low: int, high: int | None = None) -> _Check:
    def convert(value: object) -> int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ValueError
        if value < low or (high is not None and value > high):
            raise ValueError
        return value

    span = f"{low}..{high}" if high is not None else f">= {low}"
    return _Check(f"an integer {span}", convert)


# Sane bounds of a duration: below 10 ms a timer spins the owner task; above an hour
# (a day for the full-sync cadence) a typo in the unit (ms for s) has slipped through.
SECONDS_MIN = 0.01
SECONDS_MAX = 3600.0
SYNC_SECONDS_MAX = 86400.0


def _seconds(*, high: float = SECONDS_MAX, zero_means: str | None = None) -> _Check:
    def convert(value: object) -> float:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ValueError
        if value == 0 and zero_means is not None:
            return 0.0
        if not SECONDS_MIN <= value <= high:  # also refuses nan
            raise ValueError
        return float(value)

    span = f"a number of seconds {SECONDS_MIN:g}..{high:g}"
    if zero_means is None:
        return _Check(span, convert)
    return _Check(f"0 ({zero_means}) or {span}", convert)


def _choice(*options: str) -> _Check:
    def convert(value: object) -> str:
        if value not in options:
            raise ValueError
        assert isinstance(value, str)
        return value

    return _Check(f"one of: {', '.join(options)}", convert)


def _to_path(value: object) -> Path:
    if not isinstance(value, str) or not value:
        raise ValueError
    return Path(value)


# A Unix socket's path is at most 107 bytes (sun_path is 108, with its NUL): a longer
# one would pass here and fail only when the daemon binds it.
SOCKET_PATH_BYTES_MAX = 107


def _to_socket_path(value: object) -> Path:
    path = _to_path(value)
    if len(os.fsencode(path)) > SOCKET_PATH_BYTES_MAX:
        raise ValueError
    return path


def _to_optional_path(value: object) -> Path | None:
    return None if value is None else _to_path(value)


def _to_bool(value: object) -> bool:
    if not isinstance(value, bool):
        raise ValueError
    return value


def _to_node_id(value: object) -> str | None:
    if value == "auto":
        return None
    if not is_name(value):
        raise ValueError
    assert isinstance(value, str)
    return value


# Linux interface names: at most 15 bytes (IFNAMSIZ - 1), no '/', ':' or whitespace.
_INTERFACE_NAME = re.compile(r"[^\s/:]{1,15}\Z")
# Digits and dots mean the user meant an IPv4 address, even if it is not a valid one.
_LOOKS_LIKE_IPV4 = re.compile(r"[0-9.]+\Z")


def _to_interface(value: object) -> str:
    if not isinstance(value, str):
        raise ValueError
    if _LOOKS_LIKE_IPV4.match(value):
        return str(ipaddress.IPv4Address(value))  # raises ValueError for 1.2.3.300
    if value in (".", "..") or not _INTERFACE_NAME.match(value):
        raise ValueError
    return value


def _to_multicast_group(value: object) -> str:
    if not isinstance(value, str):
        raise ValueError
    group = ipaddress.IPv4Address(value)
    if not group.is_multicast:
        raise ValueError
    return str(group)


def _to_host_port(value: object) -> tuple[str, int]:
    if not isinstance(value, str):
        raise ValueError
    host, colon, port = value.rpartition(":")
    if not colon or not port.isdecimal() or not 1 <= int(port) <= 65535:
        raise ValueError
    return str(ipaddress.IPv4Address(host)), int(port)  # raises ValueError for a name


def _to_optional_host_port(value: object) -> tuple[str, int] | None:
    return None if value is None else _to_host_port(value)


_PORT = _integer(1, 65535)
_COUNT = _integer(1)
_PATH = _Check("a non-empty path", _to_path)
_SOCKET_PATH = _Check(
    f"a non-empty path of at most {SOCKET_PATH_BYTES_MAX} bytes (a Unix socket's limit)",
    _to_socket_path,
)
_OPTIONAL_PATH = _Check("a non-empty path or null", _to_optional_path)
_BOOL = _Check("true or false", _to_bool)
_NODE_ID = _Check(f"'auto' or a name of 1-{NAME_MAX} characters [A-Za-z0-9_.-]", _to_node_id)
_INTERFACE = _Check("'auto', an interface name or an IPv4 address", _to_interface)
_GROUP = _Check("an IPv4 multicast address (224.0.0.0/4)", _to_multicast_group)
_PEERS = _Check(
    "a list of 'ADDRESS:PORT' strings",
    _to_host_port,
    each="'ADDRESS:PORT' with an IPv4 address and a port 1..65535",
)
_LISTEN = _Check("null or 'ADDRESS:PORT' with an IPv4 address", _to_optional_host_port)


@dataclass(frozen=True, slots=True)
class NodeConfig:
    """Who this node is and where it keeps its state."""

    id: str | None = field(default=None, metadata=_rule(_NODE_ID))
    state_dir: Path = field(default=Path("/var/lib/crdtd"), metadata=_rule(_PATH))


@dataclass(frozen=True, slots=True)
class NetworkConfig:
    """Where the node talks to its peers and how often it says it is alive."""

    interface: str = field(default="auto", metadata=_rule(_INTERFACE))
    group: str = field(default="239.255.77.77", metadata=_rule(_GROUP))
    port: int = field(default=7777, metadata=_rule(_PORT))
    unicast_port: int = field(default=7778, metadata=_rule(_PORT))
    ttl: int = field(default=1, metadata=_rule(_integer(0, 255)))
    announce_interval_s: float = field(default=1.0, metadata=_rule(_seconds()))
    peer_suspect_s: float = field(default=3.0, metadata=_rule(_seconds()))
    peer_timeout_s: float = field(default=10.0, metadata=_rule(_seconds()))
    peers: tuple[tuple[str, int], ...] = field(default=(), metadata=_rule(_PEERS))


@dataclass(frozen=True, slots=True)
class ControlConfig:
    """Where crdtctl reaches the daemon."""

    socket: Path = field(default=Path("/run/crdtd/crdtd.sock"), metadata=_rule(_SOCKET_PATH))


@dataclass(frozen=True, slots=True)
class SyncConfig:
    """Full-state anti-entropy between peers."""

    interval_s: float = field(
        default=300.0,
        metadata=_rule(_seconds(high=SYNC_SECONDS_MAX, zero_means="manual only")),
    )
    min_gap_s: float = field(
        default=10.0, metadata=_rule(_seconds(high=SYNC_SECONDS_MAX, zero_means="no gap"))
    )
    freeze_max_s: float = field(default=2.0, metadata=_rule(_seconds()))


@dataclass(frozen=True, slots=True)
class SecurityConfig:
    """Datagram authentication; the key file itself is read by the key loader.

    Without a key file the daemon starts only on loopback, unless
    ``allow_unauthenticated`` says the network is an isolated test network: anyone on
    a LAN could otherwise add to every counter (`crdtd.daemon.main` enforces it, since
    only it resolves the interface).
    """

    key_file: Path | None = field(default=None, metadata=_rule(_OPTIONAL_PATH))
    allow_unauthenticated: bool = field(default=False, metadata=_rule(_BOOL))


@dataclass(frozen=True, slots=True)
class LogConfig:
    """What the daemon logs and how it writes it."""

    level: str = field(default="info", metadata=_rule(_choice(*LEVELS)))
    format: str = field(default="auto", metadata=_rule(_choice(*FORMATS)))


@dataclass(frozen=True, slots=True)
class LimitsConfig:
    """Bounds on what peers and clients can make this node hold."""

    variables_max: int = field(default=10_000, metadata=_rule(_COUNT))
    peers_max: int = field(default=256, metadata=_rule(_COUNT))
    control_connections_max: int = field(default=64, metadata=_rule(_COUNT))
    missing_ranges_max: int = field(default=10_000, metadata=_rule(_COUNT))
    repair_bytes_per_request: int = field(
        default=64 * 1024, metadata=_rule(_integer(DATAGRAM_BYTES_MAX))
    )
    repair_bytes_per_s: int = field(
        default=4 * 1024 * 1024, metadata=_rule(_integer(DATAGRAM_BYTES_MAX))
    )


@dataclass(frozen=True, slots=True)
class MetricsConfig:
    """The Prometheus endpoint.

    ``variable_values`` is off by default: a series per counter is as many series as
    there are variables (up to ``limits.variables_max``), which a Prometheus server pays
    for whether anyone graphs them or not.
    """

    listen: tuple[str, int] | None = field(default=None, metadata=_rule(_LISTEN))
    variable_values: bool = field(default=False, metadata=_rule(_BOOL))


@dataclass(frozen=True, slots=True)
class Config:
    """The whole config file; `Config()` is the built-in defaults."""

    node: NodeConfig = field(default_factory=NodeConfig, metadata={"section": NodeConfig})
    network: NetworkConfig = field(
        default_factory=NetworkConfig, metadata={"section": NetworkConfig}
    )
    control: ControlConfig = field(
        default_factory=ControlConfig, metadata={"section": ControlConfig}
    )
    sync: SyncConfig = field(default_factory=SyncConfig, metadata={"section": SyncConfig})
    security: SecurityConfig = field(
        default_factory=SecurityConfig, metadata={"section": SecurityConfig}
    )
    log: LogConfig = field(default_factory=LogConfig, metadata={"section": LogConfig})
    limits: LimitsConfig = field(default_factory=LimitsConfig, metadata={"section": LimitsConfig})
    metrics: MetricsConfig = field(
        default_factory=MetricsConfig, metadata={"section": MetricsConfig}
    )

    def settings(self, keys: tuple[Key, ...] = ()) -> Settings:
        """The protocol tunables this config sets; the others keep their defaults.

        *keys* come from the key loader (`crdtd.daemon.keys`), which reads
        ``security.key_file``.
        """
        return Settings(
            keys=keys,
            announce_interval_s=self.network.announce_interval_s,
            peer_suspect_s=self.network.peer_suspect_s,
            peer_timeout_s=self.network.peer_timeout_s,
            sync_interval_s=self.sync.interval_s,
            sync_min_gap_s=self.sync.min_gap_s,
            sync_freeze_max_s=self.sync.freeze_max_s,
            variables_max=self.limits.variables_max,
            peers_max=self.limits.peers_max,
            wants_max=self.limits.missing_ranges_max,
            repair_bytes_max=self.limits.repair_bytes_per_request,
            repair_bytes_per_s=self.limits.repair_bytes_per_s,
            seeds=self.network.peers,
        )


# Each pair must be strictly increasing: a peer suspected no sooner than it could have
# missed an announce, and declared gone no sooner than it was suspected.
_INCREASING = (
    ("network.announce_interval_s", "network.peer_suspect_s"),
    ("network.peer_suspect_s", "network.peer_timeout_s"),
)

# Each pair must differ: both ports are bound on the same address, and the group's
# socket would take the unicast datagrams (or the bind fail) if they were one port.
_DIFFERENT = (("network.port", "network.unicast_port"),)


def default_config_path() -> Path | None:
    """The file ``crdtd`` reads without ``--config``: /etc/crdtd/crdtd.yaml if present."""
    return DEFAULT_CONFIG_PATH if DEFAULT_CONFIG_PATH.is_file() else None


def load_config(path: Path | None) -> Config:
    """Read and check *path*; None gives the built-in defaults. Raises `ConfigError`."""
    if path is None:
        return Config()
    loader = _Loader(str(path))
    root = loader.compose(read_text(path))
    if root is None:
        return Config()
    config = loader.build(Config, root, "")
    assert isinstance(config, Config)
    loader.check_increasing(config)
    loader.check_different(config)
    return config


class _Loader(YamlFile):
    """Walks one file's node tree, remembering each key's value node for later errors."""

    def __init__(self, file: str) -> None:
        super().__init__(file, ConfigError)
        self.value_nodes: dict[str, yaml.Node] = {}

    def build(self, cls: type[Any], node: yaml.Node, path: str) -> object:
        """Make a *cls* (a section, or Config itself) from a mapping node."""
        if tag(node) == "null":
            return cls()
        if not isinstance(node, yaml.MappingNode):
            where = path or "top level"
            self.fail(node, where, "a mapping of keys to values")
        known = {f.name: f for f in fields(cls)}
        values: dict[str, object] = {}
        for key, _, value_node in self.items(node, path, list(known)):
            key_path = f"{path}.{key}" if path else key
            metadata = known[key].metadata
            if "section" in metadata:
                values[key] = self.build(metadata["section"], value_node, key_path)
            else:
                values[key] = self.convert(metadata["check"], value_node, key_path)
        return cls(**values)

    def convert(self, check: _Check, node: yaml.Node, path: str) -> object:
        self.value_nodes[path] = node
        if check.each is not None:
            if tag(node) == "null":
                return ()
            if not isinstance(node, yaml.SequenceNode):
                self.fail(node, path, check.expected)
            item = dataclasses.replace(check, expected=check.each, each=None)
            return tuple(
                self.convert(item, value, f"{path}[{index}]")
                for index, value in enumerate(node.value)
            )
        if not isinstance(node, yaml.ScalarNode):
            self.fail(node, path, check.expected)
        try:
            return check.convert(self.construct(node))
        except (ValueError, yaml.YAMLError):
            # YAMLError: a tag the safe constructor refuses, or `!!int abc`.
            self.fail(node, path, check.expected)

    def check_increasing(self, config: Config) -> None:
        for lower, higher in _INCREASING:
            low = operator.attrgetter(lower)(config)
            high = operator.attrgetter(higher)(config)
            if low < high:
                continue
            # Blame the key the file sets; when it sets both, the later one in the pair.
            if higher in self.value_nodes:
                self.fail(
                    self.value_nodes[higher],
                    higher,
                    f"a number of seconds greater than {lower} ({low:g})",
                )
            self.fail(
                self.value_nodes[lower],
                lower,
                f"a number of seconds less than {higher} ({high:g})",
            )

    def check_different(self, config: Config) -> None:
        for first, second in _DIFFERENT:
            value = operator.attrgetter(first)(config)
            if value != operator.attrgetter(second)(config):
                continue
            # Blame the key the file sets; when it sets both, the later one in the pair.
            blamed, other = (second, first) if second in self.value_nodes else (first, second)
            self.fail(self.value_nodes[blamed], blamed, f"a value other than {other} ({value})")
