from __future__ import annotations

import io
import json
import os
import socket
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, NamedTuple

import pytest
import structlog.testing

from crdtd.cli import render
from crdtd.cli.main import UsageError, main, seed_syntax
from crdtd.control.client import DEFAULT_SOCKET, Client
from tests.control.fake import Daemon, daemon_in_thread

REPO = Path(__file__).resolve().parents[2]


class Run(NamedTuple):
    code: int
    out: str
    err: str

    def json(self) -> dict[str, Any]:
        lines = self.out.splitlines()
        assert len(lines) == 1, f"expected one JSON line, got {self.out!r}"
        return json.loads(lines[0])


@pytest.fixture
def daemon(tmp_path: Path) -> Iterator[Daemon]:
    with daemon_in_thread(tmp_path / "c.sock") as running:
        yield running


Crdtctl = Callable[..., Run]


@pytest.fixture
def crdtctl(daemon: Daemon, capsys: pytest.CaptureFixture[str]) -> Crdtctl:
    def run(*argv: str) -> Run:
        code = main(["--socket", str(daemon.path), *argv])
        captured = capsys.readouterr()
        return Run(code, captured.out, captured.err)

    return run


@pytest.fixture
def counter(daemon: Daemon) -> Daemon:
    daemon.handler.values["x"] = 5
    daemon.handler.befores["x"] = 0
    daemon.handler.ops["x"] = [{"node_id": "n1", "incarnation": 1, "nonce": 1, "delta": 5}]
    return daemon


# Exit code 0: results for people and for scripts


def test_get_prints_aligned_fields(crdtctl: Crdtctl, counter: Daemon) -> None:
    assert crdtctl("get", "x") == Run(
        0, "variable  x\nvalue     5\nbefore    0\nmode      work\n", ""
    )


def test_get_json_prints_one_versioned_envelope(crdtctl: Crdtctl, counter: Daemon) -> None:
    run = crdtctl("--json", "get", "x")
    assert run.code == 0
    assert run.json() == {
        "v": 1,
        "ok": True,
        "command": "get",
        "data": {"variable": "x", "value": 5, "before": 0, "mode": "work"},
    }


def test_create_then_variables(crdtctl: Crdtctl, daemon: Daemon) -> None:
    assert crdtctl("variables").out == "(no variables)\n"
    assert crdtctl("create", "x").out == "created x\n"
    assert crdtctl("create", "x").out == "x already exists\n"
    assert crdtctl("create", "a.b").code == 0
    assert crdtctl("variables").out == "a.b\nx\n"


def test_delete_says_what_it_did_and_exits_4_when_nothing_was_there(
    crdtctl: Crdtctl, counter: Daemon
) -> None:
    assert crdtctl("delete", "x") == Run(0, "deleted x\n", "")
    assert crdtctl("delete", "x") == Run(4, "x: no such variable (nothing deleted)\n", "")
    assert crdtctl("--json", "delete", "x").json()["data"] == {"variable": "x", "deleted": False}
    assert crdtctl("variables").out == "(no variables)\n"


@pytest.mark.parametrize(
    ("argv", "value"),
    [
        (["+5", "x"], 10),
        (["--", "-3", "x"], 2),
        (["-3", "x"], 2),
        (["add", "x", "7"], 12),
        (["add", "x", "-7"], -2),
        (["add", "x", "--", "-7"], -2),
    ],
)
def test_add_in_every_spelling(
    crdtctl: Crdtctl, counter: Daemon, argv: list[str], value: int
) -> None:
    run = crdtctl(*argv)
    assert run == Run(0, f"x = {value}  (node n1, nonce 1)\n", "")
    (request,) = counter.handler.requests
    assert request.cmd == "add"
    assert len(request.args["request_id"]) == 16


def test_seed_add_with_global_options_and_json(crdtctl: Crdtctl, counter: Daemon) -> None:
    run = crdtctl("--json", "--timeout", "5", "--", "-3", "x")
    assert run.json() == {
        "v": 1,
        "ok": True,
        "command": "add",
        "data": {"variable": "x", "node_id": "n1", "nonce": 1, "value": 2},
    }


def test_each_add_has_a_fresh_request_id(crdtctl: Crdtctl, counter: Daemon) -> None:
    crdtctl("+1", "x")
    crdtctl("+1", "x")
    first, second = (request.args["request_id"] for request in counter.handler.requests)
    assert first != second


def test_a_script_names_its_add_and_a_retry_counts_once(crdtctl: Crdtctl, counter: Daemon) -> None:
    first = crdtctl("--json", "add", "--request-id", "order-17", "x", "5")
    again = crdtctl("--json", "add", "--request-id", "order-17", "x", "5")
    assert first.code == again.code == 0 and first.out == again.out
    assert [r.args["request_id"] for r in counter.handler.requests] == ["order-17"] * 2
    assert json.loads(first.out)["data"]["nonce"] == json.loads(again.out)["data"]["nonce"]
    refused = crdtctl("add", "--request-id", "x" * 65, "x", "5")
    assert refused.code == 2 and "request_id" in refused.err


def test_history_is_a_table_with_signed_deltas(crdtctl: Crdtctl, counter: Daemon) -> None:
    crdtctl("--", "-12", "x")
    assert crdtctl("history", "x").out == (
        "x: before 0, 2 ops since the last full sync\n"
        "\n"
        "NODE  INCARNATION  NONCE  DELTA\n"
        "n1              1      1  +5\n"
        "n1              1      1  -12\n"
    )


def test_before(crdtctl: Crdtctl, counter: Daemon) -> None:
    assert crdtctl("before", "x").out == "variable  x\nbefore    0\n"


def test_populate_defaults_to_100_ops(crdtctl: Crdtctl, counter: Daemon) -> None:
    run = crdtctl("populate", "x")
    assert run.code == 0
    assert run.out.endswith("(100 random ops added)\n")
    assert counter.handler.requests[-1].args == {"variable": "x", "count": 100}
    assert crdtctl("populate", "x", "7").out.endswith("(7 random ops added)\n")


def test_status_and_peers_are_tables(crdtctl: Crdtctl, daemon: Daemon) -> None:
    peers = "NODE  ADDRESS        MODE  LAST SEEN\nn2    10.0.0.2:7946  work  1.5 s ago\n"
    assert crdtctl("peers").out == peers
    assert crdtctl("status").out == (
        "node        n1\nmode        work\nepoch       3\nops in log  0\npeers       1\n\n" + peers
    )


def test_a_suspected_peer_says_so_beside_a_restarts_new_incarnation() -> None:
    old = {"node_id": "n2", "address": "10.0.0.2:7946", "mode": "sync", "last_seen_ms": 8300}
    new = {**old, "mode": "work", "last_seen_ms": 170}
    assert render.peers_table([{**old, "suspected": True}, new]) == (
        "NODE  ADDRESS        MODE  LAST SEEN\n"
        "n2    10.0.0.2:7946  sync  8.3 s ago, suspected\n"
        "n2    10.0.0.2:7946  work  170 ms ago"
    )


def test_keys_is_a_table_of_ids_and_uses_then_rejections(crdtctl: Crdtctl, daemon: Daemon) -> None:
    assert crdtctl("keys") == Run(
        0,
        "KEY     USE\n"
        "k2026b  signs, accepts\n"
        "k2026a  accepts\n"
        "\n"
        "REJECTED     DATAGRAMS\n"
        "bad_mac             14\n"
        "unknown_key          2\n",
        "",
    )


def test_keys_json_is_the_daemons_answer_in_an_envelope(crdtctl: Crdtctl, daemon: Daemon) -> None:
    assert crdtctl("--json", "keys").json() == {
        "v": 1,
        "ok": True,
        "command": "keys",
        "data": daemon.handler.keys,
    }


def test_keys_without_keys_says_datagrams_are_not_authenticated(
    crdtctl: Crdtctl, daemon: Daemon
) -> None:
    daemon.handler.keys = {"signing": None, "accepted": [], "rejected": {}}
    assert crdtctl("keys").out == (
        "(no keys: datagrams are neither signed nor checked)\n\nno datagrams rejected\n"
    )


def test_sync_prints_its_outcome(crdtctl: Crdtctl, daemon: Daemon) -> None:
    assert crdtctl("sync") == Run(0, "sync completed after 42 ms; epoch 3\n", "")


def test_help_exits_0(crdtctl: Crdtctl) -> None:
    run = crdtctl("--help")
    assert run.code == 0
    assert "wait-ready" in run.out


# Exit code 1: the daemon refused


def test_an_aborted_sync_exits_1(crdtctl: Crdtctl, daemon: Daemon) -> None:
    daemon.handler.sync_result = "aborted"
    assert crdtctl("sync") == Run(1, "sync aborted after 42 ms; epoch 3\n", "")


def test_a_daemon_error_exits_1(crdtctl: Crdtctl, daemon: Daemon) -> None:
    # The in-process server logs the bug through structlog; keep that out of crdtctl's
    # captured output (a real daemon writes it to its own log).
    with structlog.testing.capture_logs():
        answered = crdtctl("get", "boom")
    assert answered == Run(1, "", "crdtctl: get: internal error in crdtd; see its log\n")
    with structlog.testing.capture_logs():
        run = crdtctl("--json", "get", "boom")
    assert run.code == 1
    assert run.json() == {
        "v": 1,
        "ok": False,
        "command": "get",
        "error": "internal error in crdtd; see its log",
    }


@pytest.mark.parametrize("write", [["add", "x", "1"], ["create", "y"], ["delete", "x"], ["sync"]])
def test_a_refusal_names_the_command_once(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], write: list[str]
) -> None:
    path = tmp_path / "ro.sock"
    with daemon_in_thread(path, read_only=True) as daemon:
        daemon.handler.values["x"] = 5
        assert main(["--socket", str(path), *write]) == 1
    assert capsys.readouterr().err == (
        f"crdtctl: {write[0]}: {path} is a read-only socket; writes go through the daemon's "
        "main control socket (control.socket)\n"
    )


def test_a_busy_daemon_exits_1(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with (
        daemon_in_thread(tmp_path / "c.sock", connections_max=1) as daemon,
        Client(daemon.path) as holder,
    ):
        holder.call("ping")
        assert main(["--socket", str(daemon.path), "status"]) == 1
    assert "too many control connections" in capsys.readouterr().err


# Exit code 2: usage, caught before anything is sent


@pytest.mark.parametrize(
    ("argv", "words"),
    [
        ([], "required: COMMAND"),
        (["launch"], "invalid choice: 'launch'"),
        (["get"], "required: VAR"),
        (["get", "a b"], "variable: expected 1-64 characters of [A-Za-z0-9_.-], got 'a b'"),
        (["get", "x" * 65], "variable: expected 1-64"),
        (["add", "x", "5.0"], "delta: expected an integer such as 5 or -3, got '5.0'"),
        (["add", "x", "0x5"], "delta: expected an integer"),
        (["add", "x", str(2**63)], "signed 64-bit"),
        (["+5"], "+5: which variable?"),
        (["+5", "a/b"], "variable: expected 1-64"),
        (["+5", "x", "y"], "unrecognized arguments: y"),
        (["populate", "x", "0"], "count: expected 1..1000000, got 0"),
        (["populate", "x", "many"], "count: expected an integer"),
        (["--timeout", "0", "status"], "timeout: expected seconds > 0"),
        (["--timeout", "soon", "status"], "timeout: expected a number of seconds"),
        (["wait-ready", "--timeout", "-1"], "timeout"),
        (["get", "x", "--bogus"], "unrecognized arguments: --bogus"),
    ],
)
def test_usage_errors_exit_2_and_send_nothing(
    crdtctl: Crdtctl,
    daemon: Daemon,
    argv: list[str],
    words: str,
) -> None:
    run = crdtctl(*argv)
    assert run.code == 2
    assert run.out == ""
    assert words in run.err
    assert "usage: crdtctl" in run.err
    assert daemon.handler.requests == []


def test_a_usage_error_with_json_is_an_envelope(crdtctl: Crdtctl) -> None:
    run = crdtctl("--json", "get", "a b")
    assert run.code == 2
    envelope = run.json()
    assert (envelope["ok"], envelope["command"]) == (False, None)
    assert "variable: expected" in envelope["error"]


# Exit code 3: the daemon cannot be reached


def test_a_missing_socket_exits_3_naming_the_path(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "none.sock"
    assert main(["--socket", str(path), "status"]) == 3
    assert capsys.readouterr().err == (
        f"crdtctl: status: cannot reach crdtd at {path}: "
        "socket missing (is crdtd running? set --socket or CRDTD_SOCKET)\n"
    )


def test_the_socket_comes_from_the_environment(
    daemon: Daemon, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("CRDTD_SOCKET", str(daemon.path))
    assert main(["variables"]) == 0
    assert capsys.readouterr().out == "(no variables)\n"


def test_the_default_socket_is_under_run(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    if os.path.exists(DEFAULT_SOCKET):
        pytest.skip(f"a crdtd may be running at {DEFAULT_SOCKET}")
    monkeypatch.delenv("CRDTD_SOCKET", raising=False)
    assert main(["--json", "status"]) == 3
    assert DEFAULT_SOCKET == "/run/crdtd/crdtd.sock"
    assert f"cannot reach crdtd at {DEFAULT_SOCKET}" in json.loads(capsys.readouterr().out)["error"]


def test_a_refused_connection_exits_3(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "stale.sock"
    stale = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    stale.bind(os.fspath(path))
    stale.close()
    assert main(["--socket", str(path), "get", "x"]) == 3
    assert "connection refused" in capsys.readouterr().err


# Exit code 4: timed out or not found


def test_not_found_exits_4(crdtctl: Crdtctl, daemon: Daemon) -> None:
    assert crdtctl("get", "x") == Run(4, "", "crdtctl: get: no variable named 'x'\n")
    assert crdtctl("--json", "history", "x").json() == {
        "v": 1,
        "ok": False,
        "command": "history",
        "error": "no variable named 'x'",
    }


def test_a_sync_that_outlasts_the_timeout_exits_4(crdtctl: Crdtctl, daemon: Daemon) -> None:
    daemon.handler.sync_hangs = True
    run = crdtctl("--timeout", "0.2", "sync")
    assert run.code == 4
    assert "no answer from crdtd" in run.err


# wait-ready


def test_wait_ready_polls_until_mode_is_work(crdtctl: Crdtctl, daemon: Daemon) -> None:
    daemon.handler.modes = ["sync", "ready"]
    run = crdtctl("wait-ready", "--timeout", "5")
    assert run == Run(0, "crdtd is ready: node n1, mode work\n", "")
    assert [request.cmd for request in daemon.handler.requests] == ["status"] * 3


def test_wait_ready_times_out_with_4(crdtctl: Crdtctl, daemon: Daemon) -> None:
    daemon.handler.mode = "sync"
    run = crdtctl("wait-ready", "--timeout", "1")
    assert run.code == 4
    assert "not ready after 1 s: crdtd answers but is in mode sync" in run.err


def test_wait_ready_without_a_daemon_times_out_with_4(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["--socket", str(tmp_path / "c.sock"), "--timeout", "0.2", "wait-ready"]) == 4
    assert "socket missing" in capsys.readouterr().err


# watch


def test_watch_prints_each_change(crdtctl: Crdtctl, counter: Daemon) -> None:
    counter.handler.scripted_changes = [6, 7, None]
    run = crdtctl("watch", "x")
    assert run.out == "x = 5\nx = 6\nx = 7\n"
    assert run.code == 3, "the daemon ended the watch"
    assert "connection closed by crdtd" in run.err


def test_watch_json_prints_one_envelope_per_change(crdtctl: Crdtctl, counter: Daemon) -> None:
    counter.handler.scripted_changes = [6, None]
    run = crdtctl("--json", "watch", "x")
    envelopes = [json.loads(line) for line in run.out.splitlines()]
    assert [envelope["data"]["value"] for envelope in envelopes[:2]] == [5, 6]
    assert envelopes[0]["command"] == "watch"
    assert envelopes[-1]["ok"] is False


def test_watch_says_when_the_variable_is_deleted() -> None:
    assert render.text("watch", {"variable": "x", "value": 0, "deleted": True}) == "x deleted"


def test_watch_of_an_unknown_variable_exits_4(crdtctl: Crdtctl, daemon: Daemon) -> None:
    assert crdtctl("watch", "x") == Run(4, "", "crdtctl: watch: no variable named 'x'\n")


# shell


def test_shell_reads_the_seed_syntax_from_piped_stdin(
    crdtctl: Crdtctl,
    daemon: Daemon,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    lines = [
        "create x",
        "+5 x",
        "",
        "-3 x",
        "get x",
        "bogus",
        "+5",
        "get 'unclosed",
        "get y",
        "populate x 2",
        "variables",
        "quit",
        "get x",
    ]
    monkeypatch.setattr(sys, "stdin", io.StringIO("\n".join(lines) + "\n"))
    run = crdtctl("shell")
    assert run.code == 0
    assert run.out == (
        "created x\n"
        "x = 5  (node n1, nonce 1)\n"
        "x = 2  (node n1, nonce 2)\n"
        "variable  x\nvalue     2\nbefore    0\nmode      work\n"
        "x = -3  (2 random ops added)\n"
        "x\n"
    )
    errors = run.err.splitlines()
    assert len(errors) == 4
    assert "invalid choice: 'bogus'" in errors[0]
    assert "+5: which variable?" in errors[1]
    assert "closing quotation" in errors[2]
    assert errors[3] == "crdtctl: get: no variable named 'y'"


def test_shell_help_and_json(
    crdtctl: Crdtctl, daemon: Daemon, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(sys, "stdin", io.StringIO("help\ncreate x\nget nope\n"))
    run = crdtctl("--json", "shell")
    out = run.out.splitlines()
    assert out[0].startswith("create VAR")
    assert "quit" in run.out
    envelopes = [json.loads(line) for line in out if line.startswith("{")]
    assert envelopes == [
        {"v": 1, "ok": True, "command": "create", "data": {"variable": "x", "created": True}},
        {"v": 1, "ok": False, "command": "get", "error": "no variable named 'nope'"},
    ]


# seed syntax and start-up cost


@pytest.mark.parametrize(
    ("tokens", "start", "rewritten"),
    [
        (["+5", "x"], 0, ["add", "x", "+5"]),
        (["-3", "x"], 0, ["add", "x", "-3"]),
        (["--", "-3", "x"], 0, ["add", "x", "-3"]),
        (["--json", "+5", "x"], 1, ["--json", "add", "x", "+5"]),
        (["get", "x"], 0, ["get", "x"]),
        (["--", "get", "x"], 0, ["--", "get", "x"]),
        (["5", "x"], 0, ["5", "x"]),
        ([], 0, []),
    ],
)
def test_seed_syntax(tokens: list[str], start: int, rewritten: list[str]) -> None:
    assert seed_syntax(tokens, start) == rewritten


def test_seed_syntax_needs_a_variable() -> None:
    with pytest.raises(UsageError, match="which variable"):
        seed_syntax(["-3"])


FORBIDDEN = (
    "asyncio",
    "structlog",
    "yaml",
    "netifaces",
    "crdtd.core",
    "crdtd.daemon",
    "crdtd.net",
    "crdtd.store",
    "crdtd.sim",
    "crdtd.control.server",
)


def test_crdtctl_imports_nothing_heavy() -> None:
    result = subprocess.run(
        [sys.executable, "-X", "importtime", "-m", "crdtd.cli.main", "--help"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert "usage: crdtctl" in result.stdout
    imported = {
        line.split("|")[-1].strip()
        for line in result.stderr.splitlines()
        if line.startswith("import time:")
    }
    assert "crdtd.control.client" in imported
    heavy = sorted(
        name
        for name in imported
        if any(name == bad or name.startswith(bad + ".") for bad in FORBIDDEN)
    )
    assert heavy == []
