"""One command table (crdtd.control.protocol.COMMANDS), and every place that must
follow it: the daemon's answers, crdtctl's runners, renderers and subcommands, the
read-only socket, and the rules shared with the core."""

from __future__ import annotations

import argparse

import pytest

from crdtd.cli import render
from crdtd.cli.main import RUNNERS, build_parser
from crdtd.control.protocol import COMMANDS, READS, WRITES, check_delta, check_variable
from crdtd.control.server import STARTED_AT_ONCE
from crdtd.core import ids
from crdtd.daemon.handler import ANSWERS


def _subcommands_of(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    [action] = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    return dict(action.choices)


SERVED_BY_THE_SERVER = {"watch", "ping"}  # the server streams or answers them itself
CRDTCTL_ONLY = {"wait-ready", "shell"}
RUN_BY_CRDTCTL_ITSELF = {"watch"}  # a stream: crdtctl prints it as it comes


def test_every_command_is_declared_with_its_help_and_class() -> None:
    for name, command in COMMANDS.items():
        assert command.name == name and command.summary, name
    assert set(COMMANDS) == READS | WRITES and not READS & WRITES
    assert set(COMMANDS) >= STARTED_AT_ONCE


def test_the_daemon_answers_exactly_the_declared_commands() -> None:
    assert set(ANSWERS) == set(COMMANDS) - SERVED_BY_THE_SERVER


def test_crdtctl_runs_renders_and_parses_exactly_the_declared_commands() -> None:
    protocol = set(COMMANDS) - {"ping"}
    assert set(RUNNERS) - CRDTCTL_ONLY == protocol - RUN_BY_CRDTCTL_ITSELF
    assert set(render._TEXT) - CRDTCTL_ONLY == protocol
    assert set(_subcommands_of(build_parser())) - CRDTCTL_ONLY == protocol


def test_crdtctl_takes_each_declared_positional_argument_with_the_tables_help() -> None:
    parsers = _subcommands_of(build_parser())
    for name in set(COMMANDS) - {"ping"}:
        parser = parsers[name]
        assert parser.description == COMMANDS[name].summary
        positional = [a.dest for a in parser._actions if not a.option_strings]
        declared = [a.name for a in COMMANDS[name].arguments if a.metavar is not None]
        assert positional == declared, name


NAMES = ["x", "a.b-c_9", "x" * 64, "x" * 65, "", " x", "x ", "x\n", "é", "a/b", 5, None]
DELTAS = [0, 1, -1, 2**63 - 1, -(2**63), 2**63, -(2**63) - 1, True, 5.0, "5", " 5", None]


def _accepts(check: object, value: object) -> bool:
    try:
        check(value)  # type: ignore[operator]
    except ValueError:
        return False
    return True


@pytest.mark.parametrize("name", NAMES)
def test_crdtctl_and_the_core_accept_the_same_names(name: object) -> None:
    assert _accepts(check_variable, name) == _accepts(ids.check_name, name)


@pytest.mark.parametrize("delta", DELTAS)
def test_crdtctl_and_the_core_accept_the_same_deltas(delta: object) -> None:
    assert _accepts(check_delta, delta) == _accepts(ids.check_delta, delta)
