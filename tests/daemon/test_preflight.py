"""A config the daemon cannot run is refused by ``--check-config`` and at start-up alike:
exit status 78 (which the unit does not restart), the same one-line reason, and at
start-up a ``startup_failed`` event in the configured log format."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import structlog

from crdtd.daemon import logs
from crdtd.daemon.main import EXIT_CONFIG, main
from crdtd.net import sockets

ABSENT = "nosuchif9"  # an interface name no test machine has


@pytest.fixture(autouse=True)
def restore_structlog() -> Iterator[None]:
    """`main` configures logging for the process (onto a stream capsys closes later)."""
    yield
    structlog.reset_defaults()
    logs.set_level("info")


def write_config(tmp_path: Path, text: str, log_format: str = "json") -> Path:
    path = tmp_path / "crdtd.yaml"
    path.write_text(
        f"node: {{state_dir: {tmp_path / 'state'}}}\n"
        f"control: {{socket: {tmp_path / 'crdtd.sock'}}}\n"
        f"log: {{format: {log_format}}}\n" + text
    )
    return path


BAD = {
    "missing-interface": (
        f"network: {{interface: {ABSENT}}}\n",
        f"network.interface: no interface named '{ABSENT}'; interfaces here: ",
    ),
    "address-of-no-interface": (
        "network: {interface: 192.0.2.77}\n",
        "network.interface: no interface has the address 192.0.2.77; addresses here: ",
    ),
    "equal-ports": (
        "network: {interface: 127.0.0.1, port: 7000, unicast_port: 7000}\n",
        "crdtd.yaml:4: network.unicast_port: expected a value other than network.port (7000)",
    ),
    "duration-too-short": (
        "network: {interface: 127.0.0.1, announce_interval_s: 1.0e-9}\n",
        "crdtd.yaml:4: network.announce_interval_s: expected a number of seconds 0.01..3600, "
        "got 1.0e-9",
    ),
    "duration-too-long": (
        "network: {interface: 127.0.0.1, peer_timeout_s: 1.0e+9}\n",
        "crdtd.yaml:4: network.peer_timeout_s: expected a number of seconds 0.01..3600, got 1.0e+9",
    ),
    "bad-yaml": ("network: {interface: [\n", "crdtd.yaml:5: invalid YAML: "),
    "unknown-key": ("network: {interfaces: lo}\n", "crdtd.yaml:4: network.interfaces: unknown key"),
    "unreadable-key-file": (
        "network: {interface: 127.0.0.1}\nsecurity: {key_file: /nonexistent/cluster.key}\n",
        "/nonexistent/cluster.key: cannot read: No such file or directory",
    ),
}


@pytest.mark.parametrize(("text", "reason"), BAD.values(), ids=BAD.keys())
def test_check_config_exits_78_with_the_reason(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], text: str, reason: str
) -> None:
    config = write_config(tmp_path, text)
    assert main(["--config", str(config), "--check-config"]) == EXIT_CONFIG
    out, err = capsys.readouterr()
    assert out == ""
    [line] = err.splitlines()
    assert line.startswith("crdtd: ") and reason in line


@pytest.mark.parametrize(("text", "reason"), BAD.values(), ids=BAD.keys())
def test_the_daemon_refuses_the_same_config_with_a_json_startup_failed(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], text: str, reason: str
) -> None:
    config = write_config(tmp_path, text)
    assert main(["--config", str(config), "--check-config"]) == EXIT_CONFIG
    checked = capsys.readouterr().err
    assert main(["--config", str(config)]) == EXIT_CONFIG
    out, err = capsys.readouterr()
    assert err == checked, "the same message as --check-config"
    [line] = out.splitlines()
    event = json.loads(line)
    assert event["event"] == "startup_failed" and event["level"] == "error"
    assert event["exit_status"] == EXIT_CONFIG
    assert f"crdtd: {event['error']}\n" == err
    assert not (tmp_path / "state").exists(), "refused before the state was touched"


def test_an_interface_without_ipv4_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(sockets.netifaces, "interfaces", lambda: ["lo", "dummy0"])
    monkeypatch.setattr(sockets.netifaces, "ifaddresses", lambda name: {})
    config = write_config(tmp_path, "network: {interface: dummy0}\n")
    assert main(["--config", str(config), "--check-config"]) == EXIT_CONFIG
    assert capsys.readouterr().err == (
        f"crdtd: {config}: network.interface: dummy0 has no IPv4 address\n"
    )


def test_a_console_config_gets_its_error_in_console_format(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = write_config(tmp_path, "network: {port: 80a}\n", log_format="console")
    assert main(["--config", str(config)]) == EXIT_CONFIG
    out, _ = capsys.readouterr()
    assert "startup_failed" in out and not out.startswith("{")


def test_a_good_loopback_config_passes(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = write_config(tmp_path, "network: {interface: 127.0.0.1}\n")
    assert main(["--config", str(config), "--check-config"]) == 0
    assert capsys.readouterr().out == f"crdtd: {config}: ok\n"


def test_the_daemon_process_exits_78_on_a_config_error(tmp_path: Path) -> None:
    config = write_config(tmp_path, f"network: {{interface: {ABSENT}}}\n")
    done = subprocess.run(
        [sys.executable, "-m", "crdtd.daemon.main", "--config", str(config)],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert done.returncode == 78, done.stderr
    assert f"no interface named '{ABSENT}'" in done.stderr
    assert json.loads(done.stdout)["event"] == "startup_failed"


def test_a_port_in_use_is_not_a_config_error_and_exits_1(tmp_path: Path) -> None:
    """It may pass (the other program stops): exit 1, which the unit restarts."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as taken:
        taken.bind(("127.0.0.1", 0))
        port = taken.getsockname()[1]
        config = write_config(
            tmp_path, f"network: {{interface: 127.0.0.1, ttl: 0, unicast_port: {port}}}\n"
        )
        assert main(["--config", str(config), "--check-config"]) == 0
        done = subprocess.run(
            [sys.executable, "-m", "crdtd.daemon.main", "--config", str(config)],
            capture_output=True,
            text=True,
            timeout=30,
        )
    assert done.returncode == 1, done.stderr
    assert "already in use" in done.stderr
    assert json.loads(done.stdout.splitlines()[-1])["exit_status"] == 1
