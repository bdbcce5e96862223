"""Network namespaces, veth pairs, a bridge and iptables rules, through `ip` and
`iptables-restore`: the plumbing under `crdtd.lab.lab`.

Rules:
- every namespace a run creates is named ``crdtlab-<run id>-<name>``; the run id is 8
  random hex digits, so two runs (two pytest-xdist workers, a soak and a test) never
  collide;
- a run holds an exclusive ``flock`` on ``/run/crdtd-lab/<run id>.lock`` from before it
  creates anything until everything is removed. The kernel drops the lock when the
  process dies, however it dies, so a ``crdtlab-`` namespace whose run's lock can be
  taken is a leftover: `clean_stale` kills every process inside it, deletes it, and
  removes the run's temporary directory, whose path the lock file holds;
- nothing is added to the host's network namespace: the bridge lives in a namespace of
  its own, and each veth pair is created inside the bridge's namespace with its other
  end put straight into the node's namespace;
- a command that fails raises `LabError` with the command line and its stderr.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import re
import secrets
import shutil
import signal
import subprocess
import time
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path

PREFIX = "crdtlab-"
LOCK_DIR = Path("/run/crdtd-lab")
_NAME = re.compile(rf"{PREFIX}([0-9a-f]{{8}})-")
_PROBE = re.compile(rf"{PREFIX}probe-([0-9]+)-")
COMMAND_TIMEOUT_S = 30.0


class LabError(Exception):
    """Setting up or tearing down the lab failed; the message names the command."""


def run(argv: Sequence[str], *, input_text: str | None = None, check: bool = True) -> str:
    """Run *argv*, return its stdout; raise `LabError` if it fails and *check*."""
    try:
        done = subprocess.run(
            list(argv),
            input=input_text,
            capture_output=True,
            text=True,
            timeout=COMMAND_TIMEOUT_S,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired) as error:
        raise LabError(f"{' '.join(argv)}: {error}") from None
    if check and done.returncode != 0:
        raise LabError(f"{' '.join(argv)}: exit {done.returncode}: {done.stderr.strip()}")
    return done.stdout


def ip(*args: str, netns: str | None = None) -> str:
    """``ip [-n NETNS] ARGS...``"""
    return run(["ip", *(("-n", netns) if netns else ()), *args])


def exec_argv(netns: str, argv: Sequence[str]) -> list[str]:
    """The command line that runs *argv* inside *netns* (``ip netns exec`` execs, so the
    process's pid is the pid of *argv* itself)."""
    return ["ip", "netns", "exec", netns, *argv]


def unavailable_reason() -> str | None:
    """Why the lab cannot run here, or None when it can (root, ip netns, iptables)."""
    if os.geteuid() != 0:
        return "the LAN lab needs root (it creates network namespaces); run as root"
    for tool, package in (("ip", "iproute2"), ("iptables-restore", "iptables")):
        if shutil.which(tool) is None:
            return f"the LAN lab needs `{tool}`: apt-get install {package}"
    probe = f"{PREFIX}probe-{os.getpid()}-{secrets.token_hex(2)}"
    try:
        run(["ip", "netns", "add", probe])
    except LabError as error:
        return f"`ip netns` is unavailable here: {error}"
    try:
        run(exec_argv(probe, ["iptables-restore", "--test"]), input_text=_ruleset([]))
    except LabError as error:
        return f"iptables does not work inside a network namespace: {error}"
    finally:
        delete_netns(probe)
    return None


def list_netns() -> list[str]:
    """Names of the named network namespaces (``ip netns list``)."""
    return [line.split()[0] for line in run(["ip", "netns", "list"]).splitlines() if line.strip()]


def add_netns(name: str) -> None:
    run(["ip", "netns", "add", name])
    ip("link", "set", "lo", "up", netns=name)


def netns_pids(name: str) -> list[int]:
    out = run(["ip", "netns", "pids", name], check=False)
    return [int(word) for word in out.split() if word.isdigit()]


def delete_netns(name: str) -> None:
    """Kill every process inside *name*, then delete it; quiet if it is already gone."""
    for _ in range(50):
        pids = netns_pids(name)
        if not pids:
            break
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        time.sleep(0.02)
    run(["ip", "netns", "delete", name], check=False)


def restore_rules(netns: str, rules: Iterable[str]) -> None:
    """Replace the filter table of *netns* by *rules* (``-A CHAIN ...`` lines), atomically."""
    run(exec_argv(netns, ["iptables-restore", "-w", "5"]), input_text=_ruleset(rules))


def _ruleset(rules: Iterable[str]) -> str:
    lines = ["*filter", ":INPUT ACCEPT [0:0]", ":FORWARD ACCEPT [0:0]", ":OUTPUT ACCEPT [0:0]"]
    return "\n".join([*lines, *rules, "COMMIT", ""])


class RunLock:
    """This run's claim on its names: held from before anything exists until it is gone."""

    def __init__(self) -> None:
        LOCK_DIR.mkdir(mode=0o700, parents=True, exist_ok=True)
        # Lock a file of a private name, then link it into place: a ``*.lock`` file is
        # locked from the moment it exists, so `clean_stale` can never take it from us.
        staging = LOCK_DIR / f".{os.getpid()}.{secrets.token_hex(4)}.tmp"
        fd = os.open(staging, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600)
        fcntl.flock(fd, fcntl.LOCK_EX)
        try:
            while True:
                self.run_id = secrets.token_hex(4)
                self.path = LOCK_DIR / f"{self.run_id}.lock"
                try:
                    os.link(staging, self.path)
                except FileExistsError:
                    continue
                break
        finally:
            staging.unlink()
        self._fd: int | None = fd

    @property
    def prefix(self) -> str:
        return f"{PREFIX}{self.run_id}-"

    def record(self, **facts: object) -> None:
        """Note what a later `clean_stale` needs (the temp dir) in the lock file."""
        assert self._fd is not None
        os.ftruncate(self._fd, 0)
        os.pwrite(self._fd, json.dumps({"pid": os.getpid(), **facts}).encode(), 0)

    def release(self) -> None:
        if self._fd is None:
            return
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()
        os.close(self._fd)
        self._fd = None


def clean_stale(say: Callable[[str], None] = lambda line: None) -> list[str]:
    """Remove what crashed runs left: namespaces, processes, temp dirs, lock files.

    A run is stale when its lock can be taken. Returns the run ids cleaned.
    """
    runs: dict[str, list[str]] = {}
    for name in list_netns():
        match = _NAME.match(name)
        if match:
            runs.setdefault(match.group(1), []).append(name)
        probe = _PROBE.match(name)
        if probe and not _alive(int(probe.group(1))):
            delete_netns(name)
    if LOCK_DIR.is_dir():
        for path in LOCK_DIR.glob("*.lock"):
            runs.setdefault(path.stem, [])
    cleaned = []
    for run_id, names in sorted(runs.items()):
        path = LOCK_DIR / f"{run_id}.lock"
        LOCK_DIR.mkdir(mode=0o700, parents=True, exist_ok=True)
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError as error:
                if error.errno in (errno.EWOULDBLOCK, errno.EAGAIN):
                    continue  # a live run
                raise
            facts = _read_facts(fd)
            # Nodes first, the bridge last: a node's veth dies with its namespace.
            for name in sorted(names, key=lambda n: n.endswith("-br")):
                delete_netns(name)
            _remove_temp_dir(facts.get("temp_dir"), run_id)
            with contextlib.suppress(FileNotFoundError):
                path.unlink()
            say(f"removed the leftovers of lab run {run_id}: {len(names)} namespaces")
            cleaned.append(run_id)
        finally:
            os.close(fd)
    return cleaned


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _read_facts(fd: int) -> dict[str, object]:
    try:
        facts = json.loads(os.pread(fd, 65536, 0) or b"{}")
    except ValueError:
        return {}
    return facts if isinstance(facts, dict) else {}


def _remove_temp_dir(path: object, run_id: str) -> None:
    """Remove a run's temp dir, but only one this module could have made."""
    if not isinstance(path, str):
        return
    directory = Path(path)
    if directory.name.startswith(f"{PREFIX}{run_id}"):
        shutil.rmtree(directory, ignore_errors=True)
