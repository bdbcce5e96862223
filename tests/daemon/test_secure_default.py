"""Secure by default: a node without a cluster key starts only on loopback (or when the
config says the network is an isolated test network), and `crdtd keygen` makes the key.

The refusal is checked in-process with `resolve_interface` replaced, so no test needs an
interface other than loopback and nothing is ever bound; the LAN lab checks the same on
a real namespace address (tests/lan/test_secure_default.py).
"""

from __future__ import annotations

import datetime
import json
import os
import re
import stat
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import structlog

from crdtd.daemon import logs
from crdtd.daemon import preflight as daemon_preflight
from crdtd.daemon.config import Config, SecurityConfig, load_config
from crdtd.daemon.keys import SECRET_BYTES_MIN, load_keys, new_key, write_new_key_file
from crdtd.daemon.main import EXIT_CONFIG, main
from crdtd.daemon.preflight import unauthenticated_refusal
from crdtd.net.sockets import Interface
from tests.daemon.loopback import Cluster

LAN = Interface("eth1", "192.0.2.10")  # TEST-NET-1: never bound, only resolved to
LOOPBACK = Interface("lo", "127.0.0.1")
OPERATIONS = (Path(__file__).resolve().parents[2] / "docs" / "operations.md").read_text()


@pytest.fixture(autouse=True)
def restore_structlog() -> Iterator[None]:
    """`main` configures logging for the process (onto a stream capsys closes later)."""
    yield
    structlog.reset_defaults()
    logs.set_level("info")


@pytest.fixture
def on_lan(monkeypatch: pytest.MonkeyPatch) -> None:
    """network.interface resolves to a LAN address (the daemon must refuse before it
    binds anything there)."""
    monkeypatch.setattr(daemon_preflight, "resolve_interface", lambda spec: LAN)


def write_config(tmp_path: Path, text: str = "") -> Path:
    path = tmp_path / "crdtd.yaml"
    path.write_text(
        f"node: {{state_dir: {tmp_path / 'state'}}}\n"
        f"control: {{socket: {tmp_path / 'crdtd.sock'}}}\n"
        "log: {format: json}\n" + text
    )
    return path


# --- who may run without keys -----------------------------------------------------


def test_a_keyless_node_on_a_lan_is_refused_with_the_steps_to_fix_it() -> None:
    refusal = unauthenticated_refusal(Config(), Path("/etc/crdtd/crdtd.yaml"), LAN)
    assert refusal is not None
    assert refusal.startswith(
        "/etc/crdtd/crdtd.yaml: security.key_file is not set, and network.interface auto"
        " is eth1 (192.0.2.10), not loopback"
    )
    for step in (
        "`crdtd keygen /etc/crdtd/cluster.key`",
        "mode 0600",
        "every node",
        "security.key_file",
        "security.allow_unauthenticated: true",
    ):
        assert step in refusal


def test_the_docs_quote_the_refusal_verbatim() -> None:
    refusal = unauthenticated_refusal(Config(), Path("/etc/crdtd/crdtd.yaml"), LAN)
    assert refusal is not None
    assert f"crdtd: {refusal}" in OPERATIONS.replace("\n", " ")


@pytest.mark.parametrize(
    ("security", "interface"),
    [
        (SecurityConfig(), LOOPBACK),
        (SecurityConfig(), Interface("lo", "127.0.0.53")),
        (SecurityConfig(key_file=Path("/etc/crdtd/cluster.key")), LAN),
        (SecurityConfig(allow_unauthenticated=True), LAN),
    ],
    ids=["loopback", "loopback-other-address", "keyed", "allowed"],
)
def test_loopback_keyed_or_explicitly_allowed_nodes_may_start(
    security: SecurityConfig, interface: Interface
) -> None:
    assert unauthenticated_refusal(Config(security=security), None, interface) is None


def test_the_daemon_exits_78_and_says_why_on_stderr_and_as_a_json_log_line(
    tmp_path: Path, on_lan: None, capsys: pytest.CaptureFixture[str]
) -> None:
    config = write_config(tmp_path)
    assert main(["--config", str(config)]) == EXIT_CONFIG == 78
    out, err = capsys.readouterr()
    refusal = unauthenticated_refusal(load_config(config), config, LAN)
    assert err == f"crdtd: {refusal}\n"
    [line] = out.splitlines()
    event = json.loads(line)
    assert (event["event"], event["level"], event["error"]) == ("startup_failed", "error", refusal)
    assert event["exit_status"] == 78
    assert not (tmp_path / "state").exists(), "refused before the state was touched"


def test_check_config_reports_the_same_refusal(
    tmp_path: Path, on_lan: None, capsys: pytest.CaptureFixture[str]
) -> None:
    config = write_config(tmp_path)
    assert main(["--config", str(config), "--check-config"]) == EXIT_CONFIG
    out, err = capsys.readouterr()
    assert out == ""
    assert err == f"crdtd: {unauthenticated_refusal(load_config(config), config, LAN)}\n"


def test_check_config_passes_a_keyless_lan_node_that_allows_it(
    tmp_path: Path, on_lan: None, capsys: pytest.CaptureFixture[str]
) -> None:
    config = write_config(tmp_path, "security: {allow_unauthenticated: true}\n")
    assert main(["--config", str(config), "--check-config"]) == 0
    assert capsys.readouterr().out == f"crdtd: {config}: ok\n"


def test_check_config_passes_a_keyed_lan_node(
    tmp_path: Path, on_lan: None, capsys: pytest.CaptureFixture[str]
) -> None:
    key_file = tmp_path / "cluster.key"
    key = write_new_key_file(key_file)
    config = write_config(tmp_path, f"security: {{key_file: {key_file}}}\n")
    assert main(["--config", str(config), "--check-config"]) == 0
    assert capsys.readouterr().out.splitlines() == [
        f"crdtd: {config}: ok",
        f"crdtd: {key_file}: ok (keys {key.key_id}; {key.key_id} signs)",
    ]


# --- crdtd keygen -----------------------------------------------------------------


@pytest.fixture
def open_umask() -> Iterator[None]:
    """A umask that would leave a file world-readable: keygen must not care."""
    previous = os.umask(0)
    try:
        yield
    finally:
        os.umask(previous)


def test_keygen_writes_a_0600_file_that_loads_and_says_what_comes_next(
    tmp_path: Path, open_umask: None, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "cluster.key"
    assert main(["keygen", str(path)]) == 0
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    [key] = load_keys(path)
    assert re.fullmatch(rf"k{datetime.date.today():%Y%m%d}-[0-9a-f]{{4}}", key.key_id)
    assert len(key.secret) == 32 >= SECRET_BYTES_MIN
    out = capsys.readouterr().out
    assert out.startswith(f"crdtd: wrote {path}: key {key.key_id}, mode 0600\n")
    assert "every node" in out and "security.key_file" in out
    assert "install -m 0600 -o crdtd -g crdtd" in out


def test_keygen_never_replaces_a_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "cluster.key"
    path.write_text("the cluster's key\n")
    assert main(["keygen", str(path)]) == 1
    assert path.read_text() == "the cluster's key\n"
    assert capsys.readouterr().err == (
        f"crdtd: {path}: exists already; crdtd keygen never replaces a key file (the"
        " cluster's nodes may be using it): give another path, or remove this file first\n"
    )


def test_keygen_does_not_follow_a_symlink_onto_another_file(tmp_path: Path) -> None:
    target = tmp_path / "elsewhere"
    target.write_text("keep\n")
    (tmp_path / "cluster.key").symlink_to(target)
    assert main(["keygen", str(tmp_path / "cluster.key")]) == 1
    assert target.read_text() == "keep\n"


def test_keygen_says_why_it_cannot_create(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "missing" / "cluster.key"
    assert main(["keygen", str(path)]) == 1
    assert capsys.readouterr().err == f"crdtd: {path}: cannot create: No such file or directory\n"


def test_each_new_key_has_a_secret_of_its_own() -> None:
    assert new_key().secret != new_key().secret


def test_a_keygen_key_runs_a_keyed_cluster(tmp_path: Path) -> None:
    """The round trip: the crdtd executable writes the key, daemons sign and accept with
    it (on loopback, which could run keyless: here it must not matter)."""
    key_file = tmp_path / "cluster.key"
    done = subprocess.run(
        [sys.executable, "-m", "crdtd.daemon.main", "keygen", str(key_file)],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert done.returncode == 0, done.stderr
    [key] = load_keys(key_file)
    cluster = Cluster.start(tmp_path, 2, extra_config="sync: {interval_s: 0}\n", key_file=key_file)
    try:
        first, second = cluster.daemons
        first.ctl("add", "x", "2")
        second.ctl("add", "x", "3")
        cluster.wait_agree("x", 5)
        for daemon in cluster.daemons:
            keys = daemon.data("keys")
            assert (keys["signing"], keys["accepted"]) == (key.key_id, [key.key_id])
            assert keys["rejected"] == {}
    finally:
        cluster.stop()
