"""scripts/demo as a newcomer meets it: the tour with ``--once``, and every ``$ crdtctl``
line of README.md's "Using it" run as written against the demo left running, through
the very lines the demo says to paste.

The demo runs in a directory of the test's own (``--dir``), never the checkout's
.demo/, with ports picked free, so it may run beside a person's demo. Every subprocess
is bounded; the demo is stopped (SIGTERM, then SIGKILL) however the test ends, and no
process may be left with the demo's directory on its command line.
"""

from __future__ import annotations

import os
import queue
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO

import pytest

REPO = Path(__file__).resolve().parents[2]
DEMO = REPO / "scripts" / "demo.py"
README = REPO / "README.md"
TOUR_TIMEOUT_S = 120.0
COMMAND_TIMEOUT_S = 60.0
STOP_TIMEOUT_S = 30.0
# Commands whose README output is the same on every fresh demo: checked to the letter.
EXACT = ("crdtctl add x 5", "crdtctl get x", "crdtctl before x", "crdtctl variables")


def using_it() -> list[tuple[str, str]]:
    """``(command, output shown)`` for each ``$ crdtctl`` line of "Using it"'s console
    block; the command without the ``$ `` (its comment is left to the shell)."""
    section = re.search(r"^## Using it\n(.*?)^##", README.read_text(), re.M | re.S)
    assert section, "README.md has no '## Using it' section"
    block = re.search(r"```console\n(.*?)```", section[1], re.S)
    assert block, "README.md's 'Using it' has no console block"
    pairs: list[tuple[str, str]] = []
    for line in block[1].splitlines():
        if line.startswith("$ "):
            pairs.append((line[2:], ""))
        elif pairs:
            pairs[-1] = (pairs[-1][0], pairs[-1][1] + line + "\n")
    return pairs


class Lines:
    """A pipe's lines, read by a thread, so a wait for one can be bounded."""

    def __init__(self, pipe: IO[str]) -> None:
        self.seen: list[str] = []
        self._queue: queue.Queue[str | None] = queue.Queue()
        threading.Thread(target=self._read, args=(pipe,), daemon=True).start()

    def _read(self, pipe: IO[str]) -> None:
        for line in pipe:
            self._queue.put(line)
        self._queue.put(None)

    def wait_for(self, wanted: Callable[[str], bool], timeout_s: float) -> str:
        deadline = time.monotonic() + timeout_s
        while (remaining_s := deadline - time.monotonic()) > 0:
            try:
                line = self._queue.get(timeout=remaining_s)
            except queue.Empty:
                break
            if line is None:
                break
            self.seen.append(line)
            if wanted(line):
                return line
        raise AssertionError(f"not seen within {timeout_s:g} s; so far:\n{''.join(self.seen)}")


def _default_sigint() -> None:
    """In the child: Ctrl-C's default, even where the test runner was started with
    SIGINT ignored (a background job), so crdtctl watch can be ended as a person would."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def left_behind(root: Path) -> list[str]:
    """Processes with *root* on their command line (a daemon the demo did not stop)."""
    found = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdecimal() or int(proc.name) == os.getpid():
            continue
        try:
            cmdline = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode()
        except OSError:
            continue
        if str(root) in cmdline:
            found.append(f"{proc.name}: {cmdline}")
    return found


@pytest.fixture
def demo_root() -> Iterator[Path]:
    """A short path (a socket's path must fit in 108 bytes), removed afterwards."""
    root = Path(tempfile.mkdtemp(prefix="crdtd-demo-test-"))
    try:
        yield root / "demo"
    finally:
        for line in left_behind(root):
            os.kill(int(line.split(":")[0]), signal.SIGKILL)
        shutil.rmtree(root, ignore_errors=True)


def test_demo_once_tours_a_kill_and_rejoin_then_leaves_nothing(demo_root: Path) -> None:
    done = subprocess.run(
        [sys.executable, str(DEMO), "--once", "--dir", str(demo_root)],
        capture_output=True,
        text=True,
        timeout=TOUR_TIMEOUT_S,
    )
    output = done.stdout + done.stderr
    assert done.returncode == 0, output
    assert "$ kill -9 " in output
    assert "charlie came back with tour = 112" in output
    assert "tour done: all daemons stopped" in output
    assert not demo_root.exists()
    assert left_behind(demo_root) == []


def test_every_using_it_line_works_against_the_running_demo(demo_root: Path) -> None:
    commands = using_it()
    assert {command.split("#")[0].split()[1] for command, _ in commands} >= {
        "add", "get", "sync", "history", "before", "peers", "status", "variables", "keys",
        "watch", "populate", "verify", "stats", "net-test", "shell",
    }  # fmt: skip
    demo = subprocess.Popen(
        [sys.executable, str(DEMO), "--dir", str(demo_root)],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        assert demo.stdout is not None
        lines = Lines(demo.stdout)
        path_line = lines.wait_for(lambda line: line.startswith("export PATH="), TOUR_TIMEOUT_S)
        socket_line = lines.wait_for(lambda line: line.startswith("export CRDTD_SOCKET="), 5)
        assert str(demo_root / "alpha.sock") in socket_line
        pasted = path_line + socket_line
        for command, shown in commands:
            if command.startswith("crdtctl watch "):
                check_watch(pasted, command)
                continue
            done = subprocess.run(
                ["bash", "-c", pasted + command],
                input="quit\n" if command.startswith("crdtctl shell") else None,
                capture_output=True,
                text=True,
                timeout=COMMAND_TIMEOUT_S,
                env={k: v for k, v in os.environ.items() if k != "CRDTD_SOCKET"},
            )
            assert done.returncode == 0, f"$ {command}\n{done.stdout}{done.stderr}"
            if command.split("#")[0].strip() in EXACT:
                assert done.stdout == shown, f"$ {command}: README shows\n{shown}got\n{done.stdout}"
        demo.send_signal(signal.SIGTERM)
        assert demo.wait(timeout=STOP_TIMEOUT_S) == 0, "".join(lines.seen)
    finally:
        if demo.poll() is None:
            demo.kill()
            demo.wait(timeout=STOP_TIMEOUT_S)
    assert not demo_root.exists()
    assert left_behind(demo_root) == []


def check_watch(pasted: str, command: str) -> None:
    """A watch prints the value, then each change, and Ctrl-C ends it with exit 0."""
    watch = subprocess.Popen(
        ["bash", "-c", pasted + "exec " + command],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        preexec_fn=_default_sigint,
    )
    try:
        assert watch.stdout is not None
        lines = Lines(watch.stdout)
        lines.wait_for(lambda line: line.startswith("x = "), COMMAND_TIMEOUT_S)
        subprocess.run(
            ["bash", "-c", pasted + "crdtctl add x 1"], check=True, timeout=COMMAND_TIMEOUT_S
        )
        lines.wait_for(lambda line: line.startswith("x = "), COMMAND_TIMEOUT_S)
        watch.send_signal(signal.SIGINT)
        assert watch.wait(timeout=COMMAND_TIMEOUT_S) == 0, "".join(lines.seen)
    finally:
        if watch.poll() is None:
            watch.kill()
            watch.wait(timeout=COMMAND_TIMEOUT_S)
