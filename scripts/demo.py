"""The demo: three daemons on loopback, driven only through crdtctl, as a person would.

Usage: ``scripts/demo [--once] [--dir DIR]``. It starts alpha, bravo and charlie, runs a
short tour (an add on one node read on another, a full sync, a ``kill -9`` of charlie
and its rejoin with the counts intact), then keeps the cluster running until Ctrl-C or
SIGTERM and prints the lines to paste into a second terminal, so the README's "Using
it" examples work there as written. ``--once`` stops after the tour (for CI).

Rules:
- nothing leaves the machine: multicast on 127.0.0.1 with TTL 0, ports picked free on
  loopback for each run, so two demos (or a demo and the tests) never share a group;
- the daemons run without a cluster key, which crdtd allows on loopback only (nobody
  else can reach them); a LAN needs one, see the README's "Cluster keys";
- all state lives in one directory, by default ``.demo/`` in the checkout (gitignored),
  so the paths to paste are the same every run; a lock in it keeps a second demo out,
  and the directory is removed when the demo ends, however it ends (the daemons' logs
  are printed first when something failed);
- no daemon outlives the demo: they are stopped with SIGTERM (killed after 10 s) on
  Ctrl-C, SIGTERM or failure, and the kernel sends them SIGTERM should the demo itself
  be killed (PR_SET_PDEATHSIG), since they run in a session of their own so that Ctrl-C
  in the terminal reaches only the demo, which stops them in order;
- every subprocess has a timeout.
"""

from __future__ import annotations

import argparse
import ctypes
import fcntl
import json
import os
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from types import FrameType

BIN = Path(sys.executable).parent
REPO = Path(__file__).resolve().parent.parent
DEFAULT_DIR = REPO / ".demo"
MARKER = ".crdtd-demo"  # a directory holding this is ours to empty and remove
NODES = ("alpha", "bravo", "charlie")
GROUP = "239.255.77.77"
VARIABLE = "tour"  # the tour's counter; `x` is left for the README's examples
CTL_TIMEOUT_S = 60.0
STOP_TIMEOUT_S = 10.0
PEERS_TIMEOUT_S = 15.0
AGREE_TIMEOUT_S = 20
LOG_TAIL_LINES = 15
_PR_SET_PDEATHSIG = 1


class DemoFailed(Exception):
    """A step of the demo did not do what it should; the message says which."""


class Stopped(Exception):
    """SIGINT or SIGTERM: the person (or CI) asked the demo to end."""


def free_udp_port() -> int:
    """A UDP port nobody holds on loopback now: each run gets a group of its own."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _die_with_parent() -> None:
    """In the child before exec: SIGTERM it if the demo dies, even by SIGKILL."""
    ctypes.CDLL(None).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)


class Cluster:
    """Three daemons on loopback, all their files under *root*."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.group_port = free_udp_port()
        self.unicast_ports = {name: free_udp_port() for name in NODES}
        self.processes: dict[str, subprocess.Popen[bytes]] = {}

    def socket(self, name: str) -> Path:
        return self.root / f"{name}.sock"

    def log(self, name: str) -> Path:
        return self.root / f"{name}.log"

    def start(self, name: str) -> None:
        config = self.root / f"{name}.yaml"
        # Paths as JSON strings (which YAML reads as they are): a --dir may hold spaces.
        # Syncs run only when asked, so `history` shows every op since the last one.
        config.write_text(
            f"node: {{id: {name}, state_dir: {json.dumps(str(self.root / name))}}}\n"
            f"network: {{interface: 127.0.0.1, group: {GROUP}, port: {self.group_port},"
            f" unicast_port: {self.unicast_ports[name]}, ttl: 0}}\n"
            f"control: {{socket: {json.dumps(str(self.socket(name)))}}}\n"
            "sync: {interval_s: 0}\n"
            "log: {level: info, format: json}\n"
        )
        with open(self.log(name), "ab") as log:
            self.processes[name] = subprocess.Popen(
                [BIN / "crdtd", "--config", config],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=log,
                start_new_session=True,
                preexec_fn=_die_with_parent,
            )

    def kill9(self, name: str) -> None:
        process = self.processes.pop(name)
        print(f"\n$ kill -9 {process.pid}    # {name}: no clean shutdown at all", flush=True)
        process.kill()
        process.wait(timeout=STOP_TIMEOUT_S)

    def stop(self) -> list[str]:
        """SIGTERM every daemon, then wait; the problems seen, one line each."""
        problems = []
        for process in self.processes.values():
            if process.poll() is None:
                process.terminate()
        for name, process in self.processes.items():
            try:
                process.wait(timeout=STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(timeout=STOP_TIMEOUT_S)
                problems.append(f"{name} did not stop within {STOP_TIMEOUT_S:g} s: killed")
            if process.returncode not in (0, -signal.SIGTERM):
                problems.append(f"{name} exited with status {process.returncode}")
        self.processes.clear()
        return problems

    def dead(self) -> list[str]:
        """Daemons that exited on their own, with their status."""
        return [
            f"{name} exited with status {process.returncode}"
            for name, process in self.processes.items()
            if process.poll() is not None
        ]

    def ctl(self, name: str, *args: str, show: bool = True) -> str:
        """crdtctl against *name*, printed as ``[name] $ crdtctl ...`` with its output."""
        if show:
            print(f"\n[{name}] $ crdtctl {shlex.join(args)}", flush=True)
        done = subprocess.run(
            [BIN / "crdtctl", "--socket", str(self.socket(name)), *args],
            capture_output=True,
            text=True,
            timeout=CTL_TIMEOUT_S,
        )
        if show:
            print((done.stdout + done.stderr).rstrip(), flush=True)
        if done.returncode != 0:
            raise DemoFailed(
                f"crdtctl {shlex.join(args)} on {name} exited {done.returncode}: "
                f"{(done.stdout + done.stderr).strip()}"
            )
        return done.stdout

    def wait_peers(self, name: str, count: int) -> None:
        """Until *name* hears *count* peers: announces take up to a second or two."""
        deadline = time.monotonic() + PEERS_TIMEOUT_S
        while True:
            peers = json.loads(self.ctl(name, "--json", "peers", show=False))["data"]["peers"]
            if sum(1 for peer in peers if not peer.get("suspected")) >= count:
                return
            if time.monotonic() > deadline:
                raise DemoFailed(f"{name} heard {len(peers)} peers in {PEERS_TIMEOUT_S:g} s")
            time.sleep(0.1)

    def log_tails(self) -> str:
        parts = []
        for name in NODES:
            path = self.log(name)
            lines = path.read_text(errors="replace").splitlines() if path.exists() else []
            parts.append(f"--- {path} (last {LOG_TAIL_LINES} lines) ---")
            parts.extend(lines[-LOG_TAIL_LINES:] or ["(empty)"])
        return "\n".join(parts)


def say(text: str) -> None:
    print(f"\n# {text}", flush=True)


def tour(cluster: Cluster) -> None:
    """What a newcomer should see first, each step through crdtctl as they would type it."""
    say(f"[alpha] below means: crdtctl talks to alpha's socket, {cluster.socket('alpha')}")
    for name in NODES:
        cluster.start(name)
    say(f"started {', '.join(NODES)}: multicast {GROUP}:{cluster.group_port} on 127.0.0.1, TTL 0")
    for name in NODES:
        cluster.ctl(name, "wait-ready", "--timeout", "15", show=False)
    cluster.wait_peers("alpha", len(NODES) - 1)
    cluster.ctl("alpha", "peers")

    say("an add on each node; every node sees the sum")
    cluster.ctl("alpha", "add", VARIABLE, "5")
    cluster.ctl("bravo", "+10", VARIABLE)
    cluster.ctl("charlie", "--", "-3", VARIABLE)
    cluster.ctl("charlie", "verify", "--wait", str(AGREE_TIMEOUT_S))
    cluster.ctl("bravo", "get", VARIABLE)

    say("a full sync folds every node's ops into one agreed base")
    cluster.ctl("alpha", "sync")
    cluster.ctl("charlie", "history", VARIABLE)

    say("kill -9 charlie, add while it is down, start it again")
    cluster.kill9("charlie")
    cluster.ctl("alpha", "add", VARIABLE, "100")
    print(f"\n$ crdtd --config {cluster.root / 'charlie.yaml'}    # same state dir", flush=True)
    cluster.start("charlie")
    cluster.ctl("charlie", "wait-ready", "--timeout", "15")
    cluster.ctl("charlie", "verify", "--wait", str(AGREE_TIMEOUT_S))
    cluster.ctl("charlie", "get", VARIABLE)
    cluster.ctl("alpha", "peers")
    value = json.loads(cluster.ctl("charlie", "--json", "get", VARIABLE, show=False))
    if value["data"]["value"] != 112:
        raise DemoFailed(f"charlie has {VARIABLE} = {value['data']['value']}, expected 112")
    say(f"charlie came back with {VARIABLE} = 112: its own -3, and the +100 it missed")
    say("alpha lists charlie's old incarnation, suspected, until 10 s after its last datagram")


def paste_lines(cluster: Cluster) -> str:
    """The lines a second terminal needs to use the cluster as the README does."""
    bravo = shlex.quote(str(cluster.socket("bravo")))
    return "\n".join(
        [
            "",
            "# The cluster runs until Ctrl-C here. In a second terminal, paste:",
            "",
            f"export PATH={shlex.quote(str(BIN))}:$PATH",
            f"export CRDTD_SOCKET={shlex.quote(str(cluster.socket('alpha')))}",
            "",
            '# then try the README\'s "Using it" lines: crdtctl add x 5, crdtctl get x, ...',
            f"# another node: crdtctl --socket {bravo} get x   (or charlie.sock)",
            f"# logs: {cluster.root}/*.log",
        ]
    )


def serve(cluster: Cluster) -> None:
    """Until Ctrl-C or SIGTERM (`Stopped`); a daemon that dies on its own fails the demo."""
    while True:
        if dead := cluster.dead():
            raise DemoFailed("; ".join(dead))
        time.sleep(1.0)


def _stop_on_signal(signum: int, frame: FrameType | None) -> None:
    raise Stopped(signal.Signals(signum).name)


@contextmanager
def demo_dir(root: Path) -> Iterator[Path]:
    """*root*, emptied of an earlier run's leftovers, locked against a second demo while
    in use, and removed afterwards. A directory that is not empty and not ours is left
    alone: the demo will not wipe something it did not make."""
    root.mkdir(parents=True, exist_ok=True)
    if any(root.iterdir()) and not (root / MARKER).exists():
        raise DemoFailed(f"{root} holds files the demo did not make; pick another --dir")
    with open(root / MARKER, "a+") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            lock.seek(0)
            raise DemoFailed(
                f"a demo already runs in {root} (pid {lock.read().strip() or '?'}): use that"
                " one, or stop it with Ctrl-C in its terminal"
            ) from None
        try:
            for entry in root.iterdir():
                if entry.name != MARKER:
                    shutil.rmtree(entry) if entry.is_dir() else entry.unlink()
            lock.truncate(0)
            lock.write(f"{os.getpid()}\n")
            lock.flush()
            yield root
        finally:
            shutil.rmtree(root, ignore_errors=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="scripts/demo", description=__doc__.split("\n")[0])
    parser.add_argument("--once", action="store_true", help="stop after the tour (for CI)")
    parser.add_argument(
        "--dir",
        type=Path,
        default=DEFAULT_DIR,
        help=f"where the daemons keep their state, sockets and logs (default {DEFAULT_DIR})",
    )
    options = parser.parse_args(argv)
    os.environ.pop("CRDTD_SOCKET", None)  # crdtctl here always names its socket
    signal.signal(signal.SIGTERM, _stop_on_signal)
    signal.signal(signal.SIGINT, _stop_on_signal)
    root = options.dir.absolute()
    stopped: Stopped | None = None
    try:
        with demo_dir(root):
            cluster = Cluster(root)
            try:
                tour(cluster)
                if not options.once:
                    print(paste_lines(cluster), flush=True)
                    serve(cluster)
            except Stopped as signalled:
                stopped = signalled
            except DemoFailed:
                print(cluster.log_tails(), file=sys.stderr, flush=True)
                raise
            finally:
                # A second Ctrl-C must not cut the stop short and leave daemons behind.
                signal.signal(signal.SIGINT, signal.SIG_IGN)
                signal.signal(signal.SIGTERM, signal.SIG_IGN)
                problems = cluster.stop()
            if problems:
                raise DemoFailed("; ".join(problems))
    except Stopped as signalled:  # before the daemons started: nothing to stop
        stopped = signalled
    except DemoFailed as error:
        print(f"demo: {error}", file=sys.stderr, flush=True)
        return 1
    if stopped is not None:
        say(f"{stopped}: all daemons stopped, {root} removed")
    else:
        say(f"tour done: all daemons stopped, {root} removed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
