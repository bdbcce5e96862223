"""crdtctl: talk to the local crdtd over its control socket.

Rules:
- ``main(argv) -> int``; each command is a plain ``run_*`` function that returns the
  daemon's data; `crdtd.cli.render` turns it into text or a ``--json`` envelope; the
  exit code is chosen here, from the outcome alone:
  0 ok; 1 failed (the daemon refused, a sync aborted, a net-test check is not OK);
  2 usage (bad arguments, caught before anything is sent); 3 daemon unreachable;
  4 timed out or not found (``delete`` of a variable not shown here, too), or the
  nodes do not agree (verify);
- the socket is ``--socket``, else ``$CRDTD_SOCKET``, else ``/run/crdtd/crdtd.sock``;
- the seed's syntax works: ``crdtctl +5 x`` and ``crdtctl -- -3 x`` mean ``add x ±N``;
  ``shell`` reads the same lines (``create x``, ``+5 x``, ``get x``, ...) from stdin;
- ``add`` carries a ``request_id`` (``--request-id``, else a fresh random one) and is
  retried once, with the same id, after a connection failure: the daemon applies a
  request id once, also across its restarts;
- starts fast: imports the standard library, `crdtd.control.client`,
  `crdtd.control.protocol` and `crdtd.cli` only (a test enforces it).
"""

from __future__ import annotations

import argparse
import os
import re
import shlex
import sys
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any, TextIO

from crdtd.cli import render
from crdtd.control.client import DEFAULT_SOCKET, Client, DaemonUnreachable
from crdtd.control.protocol import (
    COMMANDS,
    ControlError,
    ErrorCode,
    InvalidArgument,
    check_request_id,
    parse_timeout,
)

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2
EXIT_UNREACHABLE = 3
EXIT_NOT_DONE = 4
EXIT_INTERRUPTED = 130

TIMEOUT_S = 10.0
SLOW_TIMEOUT_S = {"sync": 300.0}
POPULATE_TIMEOUT_S = 60.0
POPULATE_OP_S = 0.0005
"""A populate's wait grows with its count: 1M ops get 560 s, ten times what a loaded
2-core machine needs, so a populate that succeeds is never reported timed out."""
HISTORY_PAGES_MAX = 10_000  # a log that keeps folding under us: give up, do not spin
VERIFY_POLL_S = 0.5
READY_TIMEOUT_S = 30.0
READY_POLL_S = 0.1

_SEED_DELTA = re.compile(r"[+-][0-9]+\Z")
_VALUED_GLOBALS = ("--socket", "--timeout")

Data = dict[str, Any]


class UsageError(Exception):
    def __init__(self, message: str, usage: str = "") -> None:
        super().__init__(message)
        self.usage = usage


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> Any:
        raise UsageError(message, self.format_usage())


def _checked(parse: Callable[[str], object]) -> Callable[[str], object]:
    """An argparse ``type`` that reports our rule's message, not argparse's."""

    def convert(text: str) -> object:
        try:
            return parse(text)
        except InvalidArgument as error:
            raise argparse.ArgumentTypeError(str(error)) from None

    return convert


# One function per command: take the client and the parsed options, return data.


def run_create(client: Client, options: argparse.Namespace) -> Data:
    return client.call("create", {"variable": options.variable})


def run_delete(client: Client, options: argparse.Namespace) -> Data:
    return client.call("delete", {"variable": options.variable})


def run_variables(client: Client, options: argparse.Namespace) -> Data:
    return client.call("variables")


def run_get(client: Client, options: argparse.Namespace) -> Data:
    return client.call("get", {"variable": options.variable})


def run_history(client: Client, options: argparse.Namespace) -> Data:
    """Every page of the log, joined: ``variable``, ``before`` and ``ops`` as one answer.
    A page ``restarted`` because a sync folded the log starts the join over."""
    args: dict[str, object] = {"variable": options.variable}
    ops: list[Data] = []
    for _ in range(HISTORY_PAGES_MAX):
        page = client.call("history", args)
        if page.get("restarted"):
            ops = []
        ops.extend(page["ops"])
        if page.get("next") is None:
            return {"variable": page["variable"], "before": page["before"], "ops": ops}
        args["after"] = page["next"]
    raise ControlError(
        ErrorCode.TIMEOUT, f"the log kept being folded for {HISTORY_PAGES_MAX} pages"
    )


def run_before(client: Client, options: argparse.Namespace) -> Data:
    return client.call("before", {"variable": options.variable})


def run_add(client: Client, options: argparse.Namespace) -> Data:
    request_id = options.request_id or os.urandom(8).hex()
    args = {"variable": options.variable, "delta": options.delta, "request_id": request_id}
    return client.call("add", args, retry=True)


def run_populate(client: Client, options: argparse.Namespace) -> Data:
    return client.call("populate", {"variable": options.variable, "count": options.count})


def run_sync(client: Client, options: argparse.Namespace) -> Data:
    return client.call("sync")


def run_peers(client: Client, options: argparse.Namespace) -> Data:
    return client.call("peers")


def run_status(client: Client, options: argparse.Namespace) -> Data:
    return client.call("status")


def run_keys(client: Client, options: argparse.Namespace) -> Data:
    return client.call("keys")


def run_verify(client: Client, options: argparse.Namespace) -> Data:
    """One verify; with ``--wait S``, again until the nodes agree or S seconds pass
    (the last answer is returned either way, with ``attempts``)."""
    wait_s: float = options.wait or 0.0
    deadline = time.monotonic() + wait_s
    attempts = 0
    while True:
        attempts += 1
        data = client.call("verify")
        remaining_s = deadline - time.monotonic()
        if data.get("agree") or remaining_s <= 0:
            return {**data, "attempts": attempts}
        time.sleep(min(VERIFY_POLL_S, remaining_s))


def run_stats(client: Client, options: argparse.Namespace) -> Data:
    return client.call("stats")


def run_net_test(client: Client, options: argparse.Namespace) -> Data:
    return client.call("net-test")


def run_wait_ready(client: Client, options: argparse.Namespace) -> Data:
    """Poll ``status`` until the daemon answers in mode work; raise ``timeout`` if not."""
    limit_s: float = options.ready_timeout or options.timeout or READY_TIMEOUT_S
    deadline = time.monotonic() + limit_s
    problem = ""
    while True:
        try:
            status = client.call("status", timeout_s=max(deadline - time.monotonic(), 0.001))
        except ControlError as error:
            # The last poll is cut short by the deadline: keep the news from the one before.
            if not (error.code == ErrorCode.TIMEOUT and problem):
                problem = error.message
        except DaemonUnreachable as error:
            problem = str(error)
        else:
            if status.get("mode") == "work":
                return status
            problem = f"crdtd answers but is in mode {status.get('mode')}"
        remaining_s = deadline - time.monotonic()
        if remaining_s <= 0:
            raise ControlError(ErrorCode.TIMEOUT, f"not ready after {limit_s:g} s: {problem}")
        time.sleep(min(READY_POLL_S, remaining_s))


def run_watch(client: Client, options: argparse.Namespace) -> Iterator[Data]:
    return client.watch(options.variable)


RUNNERS: dict[str, Callable[[Client, argparse.Namespace], Data]] = {
    "create": run_create,
    "delete": run_delete,
    "variables": run_variables,
    "get": run_get,
    "history": run_history,
    "before": run_before,
    "add": run_add,
    "populate": run_populate,
    "sync": run_sync,
    "peers": run_peers,
    "status": run_status,
    "keys": run_keys,
    "verify": run_verify,
    "stats": run_stats,
    "net-test": run_net_test,
    "wait-ready": run_wait_ready,
}

SHELL_HELP = """\
create VAR            create a counter
delete VAR            delete a counter everywhere (exit 4 if there is none)
variables             list the counters
get VAR               value, value at the last full sync, mode
+N VAR, -N VAR        add N to (or take N from) a counter
history VAR           ops since the last full sync
before VAR            value at the last full sync
populate VAR [COUNT]  add COUNT random ops (default 100)
sync                  run a full sync and wait for it
peers                 the peers this node knows
status                this node's state
keys                  the key ids this node signs with and accepts
verify                do all nodes hold the same values? (exit 4 if not)
stats                 ops, datagrams, repairs, barriers, peers
net-test              check the multicast and unicast paths (exit 1 if not all OK)
help                  this text
quit                  leave (so does end of input)"""


def build_parser(*, shell: bool = False) -> _Parser:
    """crdtctl's parser, or (``shell``) the parser for one line typed in the shell."""
    if shell:
        parser = _Parser(prog="", add_help=False, allow_abbrev=False)
    else:
        parser = _Parser(
            prog="crdtctl",
            description="Talk to the local crdtd. Seed syntax: crdtctl +5 VAR, crdtctl -- -3 VAR.",
            epilog="exit codes: 0 ok, 1 failed, 2 usage, 3 daemon unreachable, "
            "4 timed out or not found",
            allow_abbrev=False,
        )
        parser.add_argument(
            "--socket",
            metavar="PATH",
            help=f"control socket (default: $CRDTD_SOCKET, else {DEFAULT_SOCKET})",
        )
        parser.add_argument("--json", action="store_true", help="print one JSON object")
        parser.add_argument(
            "--timeout",
            metavar="S",
            type=_checked(parse_timeout),
            help=f"seconds to wait for an answer (default {TIMEOUT_S:g}; "
            f"sync {SLOW_TIMEOUT_S['sync']:g})",
        )
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    def command(name: str, summary: str = "") -> _Parser:
        """A subcommand; a protocol command's help and arguments come from its table."""
        declared = COMMANDS.get(name)
        summary = summary or (declared.summary if declared else "")
        sub: _Parser = commands.add_parser(name, help=summary, description=summary)
        for argument in declared.arguments if declared else ():
            if argument.metavar is None or argument.parse is None:
                continue  # not taken from the command line (request_id, after)
            optional = {"nargs": "?", "default": argument.default}
            sub.add_argument(
                argument.name,
                metavar=argument.metavar,
                type=_checked(argument.parse),
                **(optional if argument.default is not None else {}),
            )
        return sub

    for name in COMMANDS:
        if name not in ("watch", "ping"):  # watch: not in the shell; ping: no command
            command(name)
    commands.choices["add"].add_argument(
        "--request-id",
        metavar="ID",
        type=_checked(check_request_id),
        help="name this add: the daemon applies an ID once, also across its restarts, "
        "so a script may retry with the same ID (default: a fresh random one)",
    )
    verify = commands.choices["verify"]
    verify.add_argument(
        "--wait",
        metavar="S",
        type=_checked(parse_timeout),
        help="repeat until the nodes agree or S seconds pass",
    )
    if shell:
        command("help", "list the commands")
        command("quit", "leave the shell")
        return parser
    command("watch")
    ready = command("wait-ready", "wait until the daemon answers in mode work")
    ready.add_argument(
        "--timeout",
        dest="ready_timeout",
        metavar="S",
        type=_checked(parse_timeout),
        help=f"give up after S seconds (default {READY_TIMEOUT_S:g})",
    )
    command("shell", "read commands in the seed's syntax from stdin")
    return parser


def seed_syntax(tokens: Sequence[str], start: int = 0) -> list[str]:
    """Rewrite ``+5 x`` / ``-3 x`` / ``-- -3 x`` at ``tokens[start:]`` into ``add x +5``."""
    rest = list(tokens[start:])
    if rest[:1] == ["--"] and len(rest) > 1 and _SEED_DELTA.match(rest[1]):
        rest = rest[1:]
    if not (rest and _SEED_DELTA.match(rest[0])):
        return list(tokens)
    if len(rest) < 2:
        raise UsageError(f"{rest[0]}: which variable? expected {rest[0]} VAR")
    return [*tokens[:start], "add", rest[1], rest[0], *rest[2:]]


def _command_index(argv: Sequence[str]) -> int:
    """Where the command starts, after the global options."""
    index = 0
    while index < len(argv):
        token = argv[index]
        if token in _VALUED_GLOBALS:
            index += 2
        elif token in ("--json", "-h", "--help") or token.startswith(
            tuple(f"{option}=" for option in _VALUED_GLOBALS)
        ):
            index += 1
        else:
            break
    return index


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    start = _command_index(argv)
    json_mode = "--json" in argv[:start]
    parser = build_parser()
    try:
        options = parser.parse_args(seed_syntax(argv, start))
    except UsageError as error:
        return _usage_failure(error, error.usage or parser.format_usage(), json_mode)
    except SystemExit as done:  # --help
        return done.code if isinstance(done.code, int) else EXIT_OK
    path = options.socket or os.environ.get("CRDTD_SOCKET") or DEFAULT_SOCKET
    with Client(path) as client:
        try:
            if options.command == "shell":
                return _shell(client, options.json, options.timeout, sys.stdin)
            if options.command == "watch":
                return _watch(client, options)
            return execute(client, options, json_mode=options.json, timeout_s=options.timeout)
        except KeyboardInterrupt:
            print(file=sys.stderr)
            return EXIT_INTERRUPTED


def default_timeout_s(command: str, options: argparse.Namespace) -> float:
    """How long to wait for an answer when ``--timeout`` is not given."""
    if command == "populate":
        return POPULATE_TIMEOUT_S + options.count * POPULATE_OP_S
    return SLOW_TIMEOUT_S.get(command, TIMEOUT_S)


def execute(
    client: Client, options: argparse.Namespace, *, json_mode: bool, timeout_s: float | None
) -> int:
    """Run one parsed command, print its outcome, return its exit code."""
    command = options.command
    client.timeout_s = timeout_s or default_timeout_s(command, options)
    try:
        data = RUNNERS[command](client, options)
    except ControlError as error:
        return _failure(command, error.message, _exit_code(error.code), json_mode)
    except DaemonUnreachable as error:
        return _failure(command, str(error), EXIT_UNREACHABLE, json_mode)
    if not _emit(command, data, json_mode):
        return EXIT_FAILED
    if command == "sync" and data.get("result") != "completed":
        return EXIT_FAILED
    if command == "delete" and data.get("deleted") is not True:
        return EXIT_NOT_DONE  # as for any other command on a variable not here
    if command == "verify" and data.get("agree") is not True:
        return EXIT_NOT_DONE
    if command == "net-test" and data.get("ok") is not True:
        return EXIT_FAILED
    return EXIT_OK


def _shell(client: Client, json_mode: bool, timeout_s: float | None, stdin: TextIO) -> int:
    """The seed's prompt: one command a line; a bad line prints an error, then goes on."""
    parser = build_parser(shell=True)
    for line in _lines(stdin):
        try:
            options = parser.parse_args(seed_syntax(shlex.split(line)))
        except ValueError as error:  # shlex: unbalanced quotes
            _failure(None, f"{error}; type help", EXIT_USAGE, json_mode)
            continue
        except UsageError as error:
            _failure(None, f"{error}; type help", EXIT_USAGE, json_mode)
            continue
        except SystemExit:  # -h printed its help
            continue
        if options.command == "quit":
            break
        if options.command == "help":
            print(SHELL_HELP, flush=True)
            continue
        execute(client, options, json_mode=json_mode, timeout_s=timeout_s)
    return EXIT_OK


def _lines(stdin: TextIO) -> Iterable[str]:
    """Non-blank lines; with a prompt when a person is typing."""
    if not stdin.isatty():
        yield from (line for line in stdin if line.strip())
        return
    print("crdtctl shell: type help, or quit", flush=True)
    while True:
        try:
            line = input("crdtctl> ")
        except EOFError:
            print()
            return
        if line.strip():
            yield line


def _watch(client: Client, options: argparse.Namespace) -> int:
    client.timeout_s = options.timeout or TIMEOUT_S
    try:
        for item in run_watch(client, options):
            if not _emit("watch", item, options.json):
                return EXIT_FAILED
    except KeyboardInterrupt:
        return EXIT_OK  # the way a watch ends
    except ControlError as error:
        return _failure("watch", error.message, _exit_code(error.code), options.json)
    except DaemonUnreachable as error:
        return _failure("watch", str(error), EXIT_UNREACHABLE, options.json)
    raise AssertionError("a watch ends with an error or Ctrl-C")


def _emit(command: str, data: Data, json_mode: bool) -> bool:
    """Print a result; False (after saying so) if the daemon's data lacks a field."""
    if json_mode:
        print(render.envelope(command, data), flush=True)
        return True
    try:
        output = render.text(command, data)
    except (KeyError, TypeError, ValueError) as error:
        _failure(command, f"unexpected answer from crdtd ({error!r}): {data}", 1, json_mode)
        return False
    print(output, flush=True)
    return True


def _exit_code(code: str) -> int:
    if code in (ErrorCode.NOT_FOUND, ErrorCode.TIMEOUT):
        return EXIT_NOT_DONE
    return EXIT_FAILED


def _failure(command: str | None, message: str, exit_code: int, json_mode: bool) -> int:
    if json_mode:
        print(render.error_envelope(command, message), flush=True)
    else:
        print(f"crdtctl: {f'{command}: ' if command else ''}{message}", file=sys.stderr)
    return exit_code


def _usage_failure(error: UsageError, usage: str, json_mode: bool) -> int:
    if json_mode:
        print(render.error_envelope(None, str(error)), flush=True)
    else:
        print(f"{usage}crdtctl: error: {error}", file=sys.stderr)
    return EXIT_USAGE


if __name__ == "__main__":
    sys.exit(main())
