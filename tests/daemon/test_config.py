"""The daemon config: defaults, a full round trip, and one exact message per kind of error."""

from __future__ import annotations

import dataclasses
import textwrap
from pathlib import Path

import pytest
import yaml

from crdtd.core.settings import Settings
from crdtd.daemon import config as config_module
from crdtd.daemon.config import (
    Config,
    ConfigError,
    ControlConfig,
    LimitsConfig,
    LogConfig,
    MetricsConfig,
    NetworkConfig,
    NodeConfig,
    SecurityConfig,
    SyncConfig,
    default_config_path,
    load_config,
)

EXAMPLE = Path(__file__).resolve().parents[2] / "config" / "crdtd.yaml"
DEFAULTS = Config()


@pytest.fixture
def write(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """Write a config in a fresh directory; messages then start with plain `crdtd.yaml`."""
    monkeypatch.chdir(tmp_path)

    def write(text: str) -> Path:
        path = Path("crdtd.yaml")
        path.write_text(textwrap.dedent(text), encoding="utf-8")
        return path

    return write


def load_error(path: Path) -> str:
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    return str(caught.value)


def test_example_file_loads_to_the_builtin_defaults() -> None:
    assert load_config(EXAMPLE) == Config()


def test_example_file_spells_out_every_key() -> None:
    written = yaml.safe_load(EXAMPLE.read_text(encoding="utf-8"))
    expected = {
        section.name: [key.name for key in dataclasses.fields(getattr(DEFAULTS, section.name))]
        for section in dataclasses.fields(Config)
    }
    assert {name: list(keys) for name, keys in written.items()} == expected


def test_no_path_gives_the_builtin_defaults() -> None:
    assert load_config(None) == Config()


@pytest.mark.parametrize(
    "text",
    ["", "# nothing but a comment\n", "node:\nsecurity:\n  # key_file: /etc/crdtd/keys\n"],
    ids=["empty", "comment-only", "empty-sections"],
)
def test_empty_file_or_empty_sections_mean_defaults(write, text: str) -> None:
    assert load_config(write(text)) == Config()


def test_every_key_round_trips(write) -> None:
    path = write(
        """\
        node: {id: kitchen-1, state_dir: /srv/crdtd}
        network:
          interface: 192.168.1.20
          group: 239.1.2.3
          port: 9000
          unicast_port: 9001
          ttl: 0
          announce_interval_s: 0.5
          peer_suspect_s: 2
          peer_timeout_s: 5
        control: {socket: /tmp/crdtd.sock}
        sync: {interval_s: 0, min_gap_s: 0, freeze_max_s: 1.5}
        security: {key_file: /etc/crdtd/keys, allow_unauthenticated: true}
        log: {level: debug, format: json}
        limits:
          variables_max: 5
          peers_max: 6
          control_connections_max: 7
          missing_ranges_max: 8
          repair_bytes_per_request: 1400
          repair_bytes_per_s: 100000
        metrics: {listen: '127.0.0.1:9477', variable_values: true}
        """
    )
    assert load_config(path) == Config(
        node=NodeConfig(id="kitchen-1", state_dir=Path("/srv/crdtd")),
        network=NetworkConfig(
            interface="192.168.1.20",
            group="239.1.2.3",
            port=9000,
            unicast_port=9001,
            ttl=0,
            announce_interval_s=0.5,
            peer_suspect_s=2.0,
            peer_timeout_s=5.0,
        ),
        control=ControlConfig(socket=Path("/tmp/crdtd.sock")),
        sync=SyncConfig(interval_s=0.0, min_gap_s=0.0, freeze_max_s=1.5),
        security=SecurityConfig(key_file=Path("/etc/crdtd/keys"), allow_unauthenticated=True),
        log=LogConfig(level="debug", format="json"),
        limits=LimitsConfig(
            variables_max=5,
            peers_max=6,
            control_connections_max=7,
            missing_ranges_max=8,
            repair_bytes_per_request=1400,
            repair_bytes_per_s=100_000,
        ),
        metrics=MetricsConfig(listen=("127.0.0.1", 9477), variable_values=True),
    )


def test_whole_seconds_become_floats(write) -> None:
    loaded = load_config(write("network: {peer_timeout_s: 20}\n"))
    assert type(loaded.network.peer_timeout_s) is float


def test_interface_may_be_auto_or_a_name(write) -> None:
    assert load_config(write("network: {interface: enp3s0}\n")).network.interface == "enp3s0"
    assert load_config(write("network: {interface: auto}\n")).network.interface == "auto"


def test_settings_carry_the_protocol_keys_and_keep_the_rest() -> None:
    config = Config(
        network=NetworkConfig(announce_interval_s=0.5, peer_suspect_s=2.0, peer_timeout_s=4.0),
        sync=SyncConfig(interval_s=60.0, min_gap_s=5.0, freeze_max_s=1.0),
        limits=LimitsConfig(
            variables_max=100,
            peers_max=8,
            missing_ranges_max=9,
            repair_bytes_per_request=2000,
            repair_bytes_per_s=3000,
        ),
    )
    assert config.settings() == Settings(
        announce_interval_s=0.5,
        peer_suspect_s=2.0,
        peer_timeout_s=4.0,
        sync_interval_s=60.0,
        sync_min_gap_s=5.0,
        sync_freeze_max_s=1.0,
        variables_max=100,
        peers_max=8,
        wants_max=9,
        repair_bytes_max=2000,
        repair_bytes_per_s=3000,
    )


def test_default_settings_are_the_protocol_defaults() -> None:
    assert Config().settings() == Settings()


def test_default_path_is_used_only_when_it_exists(tmp_path, monkeypatch) -> None:
    path = tmp_path / "crdtd.yaml"
    monkeypatch.setattr(config_module, "DEFAULT_CONFIG_PATH", path)
    assert default_config_path() is None
    path.write_text("", encoding="utf-8")
    assert default_config_path() == path


# (file text, the exact message). Line numbers point at the offending value.
ERRORS = {
    "string-for-integer": (
        "# padding so the value sits on line 14\n" * 12 + "network:\n  port: 80a\n",
        "crdtd.yaml:14: network.port: expected an integer 1..65535, got '80a'",
    ),
    "quoted-number": (
        'network:\n  port: "7777"\n',
        "crdtd.yaml:2: network.port: expected an integer 1..65535, got '7777'",
    ),
    "boolean-for-integer": (
        "network:\n  ttl: yes\n",
        "crdtd.yaml:2: network.ttl: expected an integer 0..255, got yes (a boolean)",
    ),
    "boolean-for-seconds": (
        "sync:\n  interval_s: on\n",
        "crdtd.yaml:2: sync.interval_s: expected 0 (manual only) or a number of seconds"
        " 0.01..86400, got on (a boolean)",
    ),
    "float-for-integer": (
        "limits:\n  peers_max: 2.5\n",
        "crdtd.yaml:2: limits.peers_max: expected an integer >= 1, got 2.5",
    ),
    "repair-budget-below-one-datagram": (
        "limits:\n  repair_bytes_per_request: 1000\n",
        "crdtd.yaml:2: limits.repair_bytes_per_request: expected an integer >= 1400, got 1000",
    ),
    "port-out-of-range": (
        "network:\n  unicast_port: 70000\n",
        "crdtd.yaml:2: network.unicast_port: expected an integer 1..65535, got 70000",
    ),
    "port-zero": (
        "network: {port: 0}\n",
        "crdtd.yaml:1: network.port: expected an integer 1..65535, got 0",
    ),
    "ttl-out-of-range": (
        "network:\n  ttl: 256\n",
        "crdtd.yaml:2: network.ttl: expected an integer 0..255, got 256",
    ),
    "limit-zero": (
        "limits:\n  control_connections_max: 0\n",
        "crdtd.yaml:2: limits.control_connections_max: expected an integer >= 1, got 0",
    ),
    "missing-value": (
        "network:\n  port:\n  ttl: 1\n",
        "crdtd.yaml:2: network.port: expected an integer 1..65535, got null",
    ),
    "list-for-scalar": (
        "network:\n  port: [7777]\n",
        "crdtd.yaml:2: network.port: expected an integer 1..65535, got a list",
    ),
    "mapping-for-scalar": (
        "log:\n  level: {name: info}\n",
        "crdtd.yaml:2: log.level: expected one of: debug, info, warning, error, got a mapping",
    ),
    "negative-seconds": (
        "sync:\n  min_gap_s: -1\n",
        "crdtd.yaml:2: sync.min_gap_s: expected 0 (no gap) or a number of seconds 0.01..86400,"
        " got -1",
    ),
    "zero-seconds": (
        "network:\n  announce_interval_s: 0\n",
        "crdtd.yaml:2: network.announce_interval_s: expected a number of seconds 0.01..3600, got 0",
    ),
    "not-a-number": (
        "sync:\n  freeze_max_s: .nan\n",
        "crdtd.yaml:2: sync.freeze_max_s: expected a number of seconds 0.01..3600, got .nan",
    ),
    "unit-in-seconds": (
        "sync:\n  interval_s: 5m\n",
        "crdtd.yaml:2: sync.interval_s: expected 0 (manual only) or a number of seconds"
        " 0.01..86400, got '5m'",
    ),
    "date-for-seconds": (
        "sync:\n  interval_s: 2024-01-01\n",
        "crdtd.yaml:2: sync.interval_s: expected 0 (manual only) or a number of seconds"
        " 0.01..86400, got 2024-01-01 (a date)",
    ),
    "seconds-too-short": (
        "network:\n  announce_interval_s: 1.0e-9\n",
        "crdtd.yaml:2: network.announce_interval_s: expected a number of seconds 0.01..3600,"
        " got 1.0e-9",
    ),
    "seconds-too-long": (
        "network:\n  peer_timeout_s: 1.0e+9\n",
        "crdtd.yaml:2: network.peer_timeout_s: expected a number of seconds 0.01..3600, got 1.0e+9",
    ),
    "sync-interval-too-long": (
        "sync:\n  interval_s: 1000000000\n",
        "crdtd.yaml:2: sync.interval_s: expected 0 (manual only) or a number of seconds"
        " 0.01..86400, got 1000000000",
    ),
    "infinite-seconds": (
        "sync:\n  freeze_max_s: .inf\n",
        "crdtd.yaml:2: sync.freeze_max_s: expected a number of seconds 0.01..3600, got .inf",
    ),
    "equal-ports": (
        "network:\n  port: 7000\n  unicast_port: 7000\n",
        "crdtd.yaml:3: network.unicast_port: expected a value other than network.port (7000),"
        " got 7000",
    ),
    "port-equal-to-default-unicast-port": (
        "network:\n  port: 7778\n",
        "crdtd.yaml:2: network.port: expected a value other than network.unicast_port (7778),"
        " got 7778",
    ),
    "socket-path-too-long": (
        f"control:\n  socket: /run/{'s' * 104}\n",
        "crdtd.yaml:2: control.socket: expected a non-empty path of at most 107 bytes"
        f" (a Unix socket's limit), got '/run/{'s' * 104}'",
    ),
    "group-not-multicast": (
        "network:\n  group: 192.168.1.1\n",
        "crdtd.yaml:2: network.group: expected an IPv4 multicast address (224.0.0.0/4),"
        " got '192.168.1.1'",
    ),
    "group-not-an-address": (
        "network:\n  group: lan\n",
        "crdtd.yaml:2: network.group: expected an IPv4 multicast address (224.0.0.0/4), got 'lan'",
    ),
    "interface-bad-address": (
        "network:\n  interface: 192.168.1.300\n",
        "crdtd.yaml:2: network.interface: expected 'auto', an interface name or an IPv4"
        " address, got '192.168.1.300'",
    ),
    "interface-name-too-long": (
        "network:\n  interface: a-very-long-interface\n",
        "crdtd.yaml:2: network.interface: expected 'auto', an interface name or an IPv4"
        " address, got 'a-very-long-interface'",
    ),
    "node-id-bad-characters": (
        "node:\n  id: kitchen 1\n",
        "crdtd.yaml:2: node.id: expected 'auto' or a name of 1-64 characters [A-Za-z0-9_.-],"
        " got 'kitchen 1'",
    ),
    "node-id-number": (
        "node:\n  id: 42\n",
        "crdtd.yaml:2: node.id: expected 'auto' or a name of 1-64 characters [A-Za-z0-9_.-],"
        " got 42",
    ),
    "log-level": (
        "log:\n  level: INFO\n",
        "crdtd.yaml:2: log.level: expected one of: debug, info, warning, error, got 'INFO'",
    ),
    "log-format": (
        "log:\n  format: text\n",
        "crdtd.yaml:2: log.format: expected one of: auto, json, console, got 'text'",
    ),
    "empty-path": (
        "node:\n  state_dir: ''\n",
        "crdtd.yaml:2: node.state_dir: expected a non-empty path, got ''",
    ),
    "number-for-path": (
        "security:\n  key_file: 5\n",
        "crdtd.yaml:2: security.key_file: expected a non-empty path or null, got 5",
    ),
    "allow-unauthenticated-not-a-bool": (
        "security:\n  allow_unauthenticated: 1\n",
        "crdtd.yaml:2: security.allow_unauthenticated: expected true or false, got 1",
    ),
    "allow-unauthenticated-a-string": (
        "security:\n  allow_unauthenticated: 'yes'\n",
        "crdtd.yaml:2: security.allow_unauthenticated: expected true or false, got 'yes'",
    ),
    "unsafe-tag": (
        "node:\n  state_dir: !!python/name:os.system x\n",
        "crdtd.yaml:2: node.state_dir: expected a non-empty path,"
        " got x (tagged tag:yaml.org,2002:python/name:os.system)",
    ),
    "timeout-not-after-suspect": (
        "network:\n  peer_suspect_s: 3\n  peer_timeout_s: 2\n",
        "crdtd.yaml:3: network.peer_timeout_s: expected a number of seconds greater than"
        " network.peer_suspect_s (3), got 2",
    ),
    "announce-not-before-default-suspect": (
        "network:\n  announce_interval_s: 5\n",
        "crdtd.yaml:2: network.announce_interval_s: expected a number of seconds less than"
        " network.peer_suspect_s (3), got 5",
    ),
    "unknown-key": (
        "network:\n  prot: 7777\n",
        "crdtd.yaml:2: network.prot: unknown key; expected one of: interface, group, port,"
        " unicast_port, ttl, announce_interval_s, peer_suspect_s, peer_timeout_s, peers",
    ),
    "unknown-section": (
        "netwrok:\n  port: 7777\n",
        "crdtd.yaml:1: netwrok: unknown key; expected one of: node, network, control, sync,"
        " security, log, limits, metrics",
    ),
    "peers-not-a-list": (
        "network:\n  peers: 10.0.0.1:7778\n",
        "crdtd.yaml:2: network.peers: expected a list of 'ADDRESS:PORT' strings,"
        " got '10.0.0.1:7778'",
    ),
    "peers-item-not-an-address": (
        "network:\n  peers:\n    - 10.0.0.1:7778\n    - db1:7778\n",
        "crdtd.yaml:4: network.peers[1]: expected 'ADDRESS:PORT' with an IPv4 address and a"
        " port 1..65535, got 'db1:7778'",
    ),
    "peers-item-bad-port": (
        "network: {peers: ['10.0.0.1:70000']}\n",
        "crdtd.yaml:1: network.peers[0]: expected 'ADDRESS:PORT' with an IPv4 address and a"
        " port 1..65535, got '10.0.0.1:70000'",
    ),
    "metrics-listen-port-only": (
        "metrics:\n  listen: 9477\n",
        "crdtd.yaml:2: metrics.listen: expected null or 'ADDRESS:PORT' with an IPv4 address,"
        " got 9477",
    ),
    "metrics-variable-values-not-a-bool": (
        "metrics:\n  variable_values: 1\n",
        "crdtd.yaml:2: metrics.variable_values: expected true or false, got 1",
    ),
    "metrics-variable-values-a-string": (
        "metrics:\n  variable_values: 'true'\n",
        "crdtd.yaml:2: metrics.variable_values: expected true or false, got 'true'",
    ),
    "key-given-twice": (
        "network:\n  port: 1\n  port: 2\n",
        "crdtd.yaml:3: network.port: key given twice",
    ),
    "section-not-a-mapping": (
        "node:\n  id: a\nnetwork: 7777\n",
        "crdtd.yaml:3: network: expected a mapping of keys to values, got 7777",
    ),
    "top-level-not-a-mapping": (
        "- node\n- network\n",
        "crdtd.yaml:1: top level: expected a mapping of keys to values, got a list",
    ),
    "yaml-syntax": (
        "network:\n  port: 1\n bad\n",
        "crdtd.yaml:3: invalid YAML: while parsing a block mapping, expected <block end>,"
        " but found '<scalar>'",
    ),
    "yaml-two-documents": (
        "node: {}\n---\nnetwork: {}\n",
        "crdtd.yaml:2: invalid YAML: expected a single document in the stream,"
        " but found another document",
    ),
    "yaml-control-character": (
        "node: {}\nnetwork: \x01\n",
        "crdtd.yaml:2: invalid YAML: non-printable character U+0001 not allowed",
    ),
}


@pytest.mark.parametrize(("text", "message"), ERRORS.values(), ids=ERRORS.keys())
def test_error_names_file_line_key_expected_and_found(write, text: str, message: str) -> None:
    assert load_error(write(text)) == message


NUMERIC_KEYS = [
    (section.name, key.name)
    for section in dataclasses.fields(Config)
    for key in dataclasses.fields(getattr(DEFAULTS, section.name))
    if isinstance(value := getattr(getattr(DEFAULTS, section.name), key.name), int | float)
    and not isinstance(value, bool)  # a boolean key takes true and false, of course
]


@pytest.mark.parametrize(("section", "key"), NUMERIC_KEYS)
def test_booleans_never_pass_as_numbers(write, section: str, key: str) -> None:
    message = load_error(write(f"{section}:\n  {key}: true\n"))
    assert message.startswith(f"crdtd.yaml:2: {section}.{key}: expected ")
    assert message.endswith(", got true (a boolean)")


def test_missing_file_is_an_error(tmp_path: Path) -> None:
    path = tmp_path / "absent.yaml"
    assert load_error(path) == f"{path}: cannot read: No such file or directory"


def test_file_that_is_not_utf8_is_an_error(tmp_path: Path) -> None:
    path = tmp_path / "crdtd.yaml"
    path.write_bytes(b"node: {id: caf\xe9}\n")
    assert load_error(path).startswith(f"{path}: not UTF-8 text: ")


def test_message_names_the_path_as_given(tmp_path: Path) -> None:
    path = tmp_path / "site.yaml"
    path.write_text("network: {port: 80a}\n", encoding="utf-8")
    assert load_error(path).startswith(f"{path}:1: network.port: ")


def test_peers_and_metrics_listen_reach_the_settings(write) -> None:
    config = load_config(
        write(
            "network:\n  peers: ['10.0.0.1:7778', '10.0.0.2:7000']\n"
            "metrics: {listen: '127.0.0.1:9477'}\n"
        )
    )
    assert config.network.peers == (("10.0.0.1", 7778), ("10.0.0.2", 7000))
    assert config.settings().seeds == (("10.0.0.1", 7778), ("10.0.0.2", 7000))
    assert config.metrics.listen == ("127.0.0.1", 9477)
    assert Config().settings().seeds == ()
