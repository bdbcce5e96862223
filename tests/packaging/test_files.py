"""The packaging files agree with the code they ship: crdtctl's commands are in its
completion and man page, the config keys and log events are in the docs, the unit
runs the daemon where the config expects, and the versions match.

Fast and unprivileged: they read files. `test_boot` checks the package for real.
"""

from __future__ import annotations

import argparse
import configparser
import re
import subprocess
import tomllib
from pathlib import Path

import pytest
import yaml

from crdtd.cli.main import build_parser
from crdtd.daemon.main import EXIT_CONFIG, EXIT_USAGE
from crdtd.daemon.reporting import KEY_MISMATCH_HINTS

REPO = Path(__file__).resolve().parents[2]
PACKAGING = REPO / "packaging"
OPERATIONS = (REPO / "docs" / "operations.md").read_text()
CRDTD_MAN = (PACKAGING / "man" / "crdtd.8").read_text().replace("\\-", "-")
CRDTCTL_MAN = (PACKAGING / "man" / "crdtctl.1").read_text().replace("\\-", "-")
UNIT = PACKAGING / "systemd" / "crdtd.service"
# Levels an operator sees at the default log level; debug events are not documented.
_LOGGED = re.compile(r"\.(?:info|warning|error)\(\s*f?\"([a-z_{}.]+)\"")


def crdtctl_commands() -> list[str]:
    (commands,) = (
        action
        for action in build_parser()._actions
        if isinstance(action, argparse._SubParsersAction)
    )
    return sorted(commands.choices)


def config_keys() -> list[tuple[str, str]]:
    config = yaml.safe_load((REPO / "config" / "crdtd.yaml").read_text())
    return [(section, key) for section, keys in config.items() for key in keys]


def logged_events() -> list[str]:
    events = set()
    for path in (REPO / "crdtd").rglob("*.py"):
        if "sim" in path.parts or "lab" in path.parts:
            continue
        for name in _LOGGED.findall(path.read_text()):
            if name == "sync_{event.result}":  # SyncFinished.result: completed or aborted
                events |= {"sync_completed", "sync_aborted"}
            else:
                events.add(name)
    return sorted(events)


def unit() -> configparser.ConfigParser:
    parser = configparser.ConfigParser(strict=False, interpolation=None)
    parser.optionxform = str  # type: ignore[assignment,method-assign]
    parser.read(UNIT)
    return parser


def test_completion_offers_every_crdtctl_command() -> None:
    completion = (PACKAGING / "bash-completion" / "crdtctl").read_text()
    match = re.search(r'local commands="([^"]*)"', completion)
    assert match, "no commands list in the completion"
    assert sorted(match[1].split()) == crdtctl_commands()


@pytest.mark.parametrize("command", crdtctl_commands())
def test_crdtctl_man_page_describes_command(command: str) -> None:
    assert re.search(rf"^\.BI? {re.escape(command)}\b", CRDTCTL_MAN, re.MULTILINE), command


@pytest.mark.parametrize(("section", "key"), config_keys())
def test_every_config_key_is_in_the_docs_and_the_man_page(section: str, key: str) -> None:
    assert f"{section}.{key}" in OPERATIONS, f"docs/operations.md lacks {section}.{key}"
    assert key in CRDTD_MAN, f"crdtd.8 lacks {key}"


def test_the_docs_name_every_event_the_daemon_logs() -> None:
    events = logged_events()
    assert {"started", "peer_joined", "sync_completed"} <= set(events), events
    missing = [event for event in events if f"`{event}`" not in OPERATIONS]
    assert not missing, f"docs/operations.md lacks events {missing}"
    missing = [event for event in events if event not in CRDTD_MAN]
    assert not missing, f"crdtd.8 lacks events {missing}"


@pytest.mark.parametrize(("reason", "hint"), KEY_MISMATCH_HINTS.items())
def test_the_docs_quote_each_key_mismatch_hint_verbatim(reason: str, hint: str) -> None:
    assert f"| `{reason}` | {hint} |" in OPERATIONS


def test_unit_runs_the_daemon_where_the_default_config_points() -> None:
    config = yaml.safe_load((REPO / "config" / "crdtd.yaml").read_text())
    service = unit()["Service"]
    assert service["Type"] == "notify"
    assert service["Restart"] == "on-failure"
    # A bad config (2) and a refused one (78: no key on a LAN) must not restart in a loop.
    assert service["RestartPreventExitStatus"].split() == [str(EXIT_USAGE), str(EXIT_CONFIG)]
    assert service["WatchdogSec"]
    assert service["User"] == service["Group"] == "crdtd"
    assert service["ExecStart"] == "/usr/bin/crdtd --config /etc/crdtd/crdtd.yaml"
    assert service["ConfigurationDirectory"] == "crdtd"
    assert Path(config["node"]["state_dir"]) == Path("/var/lib") / service["StateDirectory"]
    socket = Path(config["control"]["socket"])
    assert socket.parent == Path("/run") / service["RuntimeDirectory"]
    assert service["RuntimeDirectoryMode"] == "0750"


def test_sysusers_declares_the_user_the_unit_runs_as() -> None:
    lines = (PACKAGING / "sysusers" / "crdtd.conf").read_text().splitlines()
    entries = [line.split()[:2] for line in lines if line.strip() and not line.startswith("#")]
    assert ["u", unit()["Service"]["User"]] in entries


@pytest.mark.parametrize("script", ["crdtd.postinst", "crdtd.postrm"])
def test_maintainer_script_has_one_debhelper_token(script: str) -> None:
    # debhelper replaces every occurrence, a comment's too, with shell code.
    assert (PACKAGING / "debian" / script).read_text().count("#DEBHELPER#") == 1


def test_changelog_has_an_entry_for_the_project_version() -> None:
    pyproject = tomllib.loads((REPO / "pyproject.toml").read_text())
    first = (PACKAGING / "debian" / "changelog").read_text().splitlines()[0]
    assert first.startswith(f"crdtd ({pyproject['project']['version']}) "), first


@pytest.mark.parametrize(
    "script",
    [
        "build-deb",
        "boot-test",
        "fresh-test",
        "ci-checks",
        "vagrant-box",
        "vagrant-test",
        "bash-completion/crdtctl",
        "debian/crdtd.postinst",
    ],
)
def test_shell_script_parses(script: str) -> None:
    subprocess.run(["bash", "-n", str(PACKAGING / script)], check=True)


def test_the_vagrant_box_has_every_dependency_of_the_package() -> None:
    # The test's VMs have no network: the box must hold what the package needs.
    pyproject = tomllib.loads((REPO / "pyproject.toml").read_text())
    names = [
        re.split(r"[<>=!~; ]", dep, maxsplit=1)[0] for dep in pyproject["project"]["dependencies"]
    ]
    debian = {"python3-" + name.lower().replace("_", "-").removeprefix("py") for name in names}
    match = re.search(r"^DEPENDS=\(([^)]*)\)", (PACKAGING / "vagrant-box").read_text(), re.M)
    assert match, "no DEPENDS=(...) in packaging/vagrant-box"
    assert set(match[1].split()) == {"python3", *debian}
