"""The LAN lab: real crdtd daemons, each in a network namespace of its own, on one bridge.

Theory of operation. A `Lab` makes a namespace ``crdtlab-<run>-br`` holding a bridge
``br0`` (multicast snooping off, so the group is flooded like on a plain switch), and for
each `Host` a namespace ``crdtlab-<run>-<name>`` with one veth, ``veth0``, whose peer
is a port of ``br0``. Each host has its own address in ``10.77.0.0/16`` (private, and
only ever inside these namespaces) and a route for 224.0.0.0/4 on its veth. A `Node` is
a host running one ``crdtd`` (``ip netns exec NS python -m crdtd.daemon.main --config
...``) with its own config (``network.interface: veth0``, ``ttl: 1``), state directory,
control socket and log file in the run's temp directory. A Unix socket is a file, so the
lab (and `crdtctl --socket`) talks to every daemon from the host's namespace.

Keys: the daemons sit on LAN addresses, where crdtd refuses to run without a key, so
each run makes a cluster key (``cluster.key`` in its temp dir, `Lab.key_file`) and every
node's config names it. A test that means to run keyless says so with `KEYLESS` (or
its own ``security`` section) in the lab's or a node's config.

Faults are iptables rules in a host's namespace, kept per fault name (``loss``,
``partition``, ...) and written together with one ``iptables-restore``: see
`Host.set_rules`; `Lab.heal` clears them all.

Rules:
- `Lab.close` removes all of it (daemons, namespaces, temp dir, lock): on ``with`` exit,
  on an exception, on Ctrl-C, and at interpreter exit. Daemons are started with
  PR_SET_PDEATHSIG from one thread that lives as long as the lab, so they die with the
  process that made them even when it is killed with SIGKILL; the namespaces of such a
  run are then removed by the next `Lab` (`crdtd.lab.netns.clean_stale`);
- the daemons run this interpreter with ``-m crdtd.daemon.main`` on a copy of the crdtd
  sources taken at `Lab.open` (``snapshot=False``: on the tree itself), so a tree edited
  during a long run never mixes versions; ``CRDTD_LAB_DAEMON`` replaces the command (an
  installed ``crdtd``, say); ``CRDTD_LAB_KEEP=1`` keeps the temp dir (configs, logs,
  state) after close;
- a daemon that exits without the lab killing or stopping it has *crashed*
  (`Node.crashed`): the checks report it, with its log;
- node names are ``n01``, ``n02``, ... and are also the daemons' ``node.id``, so a node
  keeps its id across restarts and a wipe (a wipe gives it a new incarnation); a clone
  (`Lab.add_clone`) runs with ``node.id: auto`` on a copy of another node's state, so
  its `Node.node_id` is that node's.
"""

from __future__ import annotations

import atexit
import concurrent.futures
import contextlib
import copy
import ctypes
import ipaddress
import json
import os
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import yaml

import crdtd
from crdtd.control.client import Client, DaemonUnreachable
from crdtd.control.protocol import ControlError
from crdtd.daemon.keys import write_new_key_file
from crdtd.lab import netns
from crdtd.lab.netns import LabError

BRIDGE = "br0"
INTERFACE = "veth0"
SUBNET = "10.77.0.0/16"
START_TIMEOUT_S = 30.0
STOP_TIMEOUT_S = 10.0
CALL_TIMEOUT_S = 5.0
TAIL_BYTES = 256 * 1024
_PR_SET_PDEATHSIG = 1
KEYLESS = {"security": {"key_file": None, "allow_unauthenticated": True}}
"""Config for a lab (or a node) that runs without keys on purpose."""

_SOURCE_ROOT = Path(crdtd.__file__).resolve().parents[1]


class Host:
    """A namespace with an address on the lab's bridge; a `Node` also runs crdtd."""

    def __init__(self, lab: Lab, name: str, index: int) -> None:
        self.lab = lab
        self.name = name
        self.index = index
        self.netns = f"{lab.prefix}{name}"
        self.interface = INTERFACE
        self.port = f"p{index}"  # its veth peer, on the bridge
        self.address = str(lab.subnet.network_address + index)
        self._rules: dict[str, list[str]] = {}

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.name} {self.address}>"

    def _create(self) -> None:
        bridge = self.lab.bridge_netns
        netns.add_netns(self.netns)
        veth = f"link add {self.port} type veth peer name {self.interface} netns {self.netns}"
        netns.ip(*veth.split(), netns=bridge)
        netns.ip("link", "set", self.port, "master", BRIDGE, "up", netns=bridge)
        prefix = self.lab.subnet.prefixlen
        netns.ip("addr", "add", f"{self.address}/{prefix}", "dev", self.interface, netns=self.netns)
        netns.ip("link", "set", self.interface, "up", "multicast", "on", netns=self.netns)
        netns.ip("route", "add", "224.0.0.0/4", "dev", self.interface, netns=self.netns)

    # --- running things inside ----------------------------------------------------

    def exec(self, argv: Sequence[str], *, input_text: str | None = None) -> str:
        """Run *argv* in this namespace and return its stdout; `LabError` if it fails."""
        return netns.run(netns.exec_argv(self.netns, argv), input_text=input_text)

    def popen(self, argv: Sequence[str], **options: Any) -> subprocess.Popen[bytes]:
        """Start *argv* in this namespace; it dies with the lab (see the module rules)."""
        return self.lab.spawn(netns.exec_argv(self.netns, argv), **options)

    def python(self, code: str, *args: str, input_text: str | None = None) -> str:
        """Run Python *code* (``sys.argv[1:]`` = *args*) in this namespace, with crdtd
        importable; return its stdout. For attackers and probes: forge a datagram,
        send it from this host's address, listen on the group..."""
        argv = [sys.executable, "-c", code, *args]
        return netns.run(
            netns.exec_argv(self.netns, ["env", f"PYTHONPATH={self.lab.source_root}", *argv]),
            input_text=input_text,
        )

    # --- faults: iptables in this namespace ---------------------------------------

    def set_rules(self, fault: str, rules: Iterable[str]) -> None:
        """Make *rules* (``-A INPUT ...`` lines) the rules of *fault*; the other faults'
        rules stay. The whole table is rewritten at once."""
        self._rules[fault] = list(rules)
        self._apply()

    def clear_rules(self, fault: str | None = None) -> None:
        """Remove one fault's rules, or (None) every rule."""
        if fault is None:
            self._rules.clear()
        else:
            self._rules.pop(fault, None)
        self._apply()

    @property
    def rules(self) -> dict[str, list[str]]:
        return copy.deepcopy(self._rules)

    def _apply(self) -> None:
        netns.restore_rules(self.netns, [rule for rules in self._rules.values() for rule in rules])

    def loss(self, probability: float) -> None:
        """Drop each UDP datagram arriving here with *probability* (0 clears it)."""
        if not 0 <= probability <= 1:
            raise ValueError(f"loss: expected a probability 0..1, got {probability}")
        if probability == 0:
            self.clear_rules("loss")
            return
        rule = f"-A INPUT -p udp -m statistic --mode random --probability {probability} -j DROP"
        self.set_rules("loss", [rule])

    def drop_from(self, sources: Iterable[Host], fault: str = "partition") -> None:
        """Hear nothing from *sources* (multicast and unicast alike: crdtd sends both
        from its unicast address)."""
        self.set_rules(fault, [f"-A INPUT -s {source.address} -j DROP" for source in sources])

    def block_multicast(self, *, outbound: bool = False) -> None:
        """The group becomes unreachable here: multicast in is dropped (and, with
        *outbound*, multicast out); unicast keeps working."""
        rules = ["-A INPUT -d 224.0.0.0/4 -j DROP"]
        if outbound:
            rules.append("-A OUTPUT -d 224.0.0.0/4 -j DROP")
        self.set_rules("multicast", rules)


class Node(Host):
    """A host running one crdtd."""

    def __init__(
        self, lab: Lab, name: str, index: int, config: Mapping[str, Any] | None = None
    ) -> None:
        super().__init__(lab, name, index)
        self.directory = lab.directory / name
        self.state_dir = self.directory / "state"
        self.socket = self.directory / "crdtd.sock"
        self.config_path = self.directory / "crdtd.yaml"
        self.log_path = self.directory / "crdtd.log"
        self.overrides = dict(config or {})
        self.proc: subprocess.Popen[bytes] | None = None
        self.starts = 0
        self.wanted = False  # started and not killed or stopped since: it should be up
        self.node_id = name  # the daemon's id: its name, or a clone's source's (add_clone)

    def config(self) -> dict[str, Any]:
        """The daemon's config: the lab's base, the lab's overrides, this node's."""
        base = {
            "node": {"id": self.node_id, "state_dir": str(self.state_dir)},
            "network": {"interface": self.interface, "ttl": 1},
            "control": {"socket": str(self.socket)},
            "security": {"key_file": str(self.lab.key_file)},
            "log": {"format": "json", "level": "info"},
        }
        return _merge(_merge(base, self.lab.config), self.overrides)

    # --- the process --------------------------------------------------------------

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    @property
    def crashed(self) -> bool:
        """Started, never killed or stopped by the lab, and yet not running."""
        return self.wanted and not self.running

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.running and self.proc is not None else None

    def start(self, *, wait: bool = True, timeout_s: float = START_TIMEOUT_S) -> None:
        """Start the daemon; with *wait*, return once it answers on its socket."""
        if self.running:
            raise LabError(f"{self.name}: already running")
        self.directory.mkdir(parents=True, exist_ok=True)
        self.config_path.write_text(yaml.safe_dump(self.config(), sort_keys=False))
        with open(self.log_path, "ab") as log:
            self.proc = self.popen(
                [*self.lab.daemon_argv, "--config", str(self.config_path)],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=self.lab.daemon_env,
                cwd=self.lab.directory,
            )
        self.starts += 1
        self.wanted = True
        if wait:
            self.wait_ready(timeout_s)

    def wait_ready(self, timeout_s: float = START_TIMEOUT_S) -> dict[str, Any]:
        """Poll ``status`` until it answers; raise `LabError` with the log's tail if the
        daemon exits or stays silent."""
        deadline = time.monotonic() + timeout_s
        problem = "no answer"
        while True:
            if not self.running:
                code = None if self.proc is None else self.proc.returncode
                raise LabError(f"{self.name}: crdtd exited ({code})\n{self.tail()}")
            try:
                return self.call("status", timeout_s=1.0)
            except (DaemonUnreachable, ControlError) as error:
                problem = str(error)
            if time.monotonic() >= deadline:
                raise LabError(
                    f"{self.name}: not ready in {timeout_s:g} s: {problem}\n{self.tail()}"
                )
            time.sleep(0.05)

    def kill(self) -> None:
        """``kill -9``: no goodbye, nothing flushed that was not already."""
        self.wanted = False
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
        if self.proc is not None:
            self.proc.wait()

    def stop(self, timeout_s: float = STOP_TIMEOUT_S) -> int | None:
        """SIGTERM and wait (SIGKILL after *timeout_s*); returns the exit code."""
        self.wanted = False
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout_s)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return self.proc.returncode

    def freeze(self) -> None:
        """SIGSTOP: the daemon stalls (a VM pause, a swap storm) with its sockets open."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGSTOP)

    def thaw(self) -> None:
        """SIGCONT after `freeze`: every timer it missed comes due at once."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGCONT)

    def restart(self, *, wait: bool = True) -> None:
        self.kill()
        self.start(wait=wait)

    def wipe(self) -> None:
        """Delete the state directory (the node must be down): it comes back empty,
        with a new incarnation."""
        if self.running:
            raise LabError(f"{self.name}: stop it before wiping its state")
        shutil.rmtree(self.state_dir, ignore_errors=True)

    def save_state(self, destination: Path) -> Path:
        """Copy the state directory (the node must be down) to *destination*, which must
        not exist yet: a snapshot to `restore_state` later, or a clone's state."""
        if self.running:
            raise LabError(f"{self.name}: stop it before copying its state")
        shutil.copytree(self.state_dir, destination, symlinks=True)
        return destination

    def restore_state(self, saved: Path) -> None:
        """Replace the state directory with a copy of *saved* (the node must be down):
        the node boots on an older state, as after a VM snapshot is reverted."""
        self.wipe()
        shutil.copytree(saved, self.state_dir, symlinks=True)

    # --- talking to it ------------------------------------------------------------

    def call(
        self,
        cmd: str,
        args: Mapping[str, object] | None = None,
        *,
        timeout_s: float = CALL_TIMEOUT_S,
    ) -> dict[str, Any]:
        """One control request on a fresh connection; raises as `Client.call` does."""
        with Client(self.socket, timeout_s=timeout_s) as client:
            return client.call(cmd, args)

    def client(self, timeout_s: float | None = CALL_TIMEOUT_S) -> Client:
        """A persistent connection (one thread at a time); close it when done."""
        return Client(self.socket, timeout_s=timeout_s)

    def status(self) -> dict[str, Any]:
        return self.call("status")

    def get(self, variable: str) -> int | None:
        """The value here, or None if this node does not know *variable*."""
        try:
            value: int = self.call("get", {"variable": variable})["value"]
        except ControlError as error:
            if error.code == "not_found":
                return None
            raise
        return value

    # --- its log ------------------------------------------------------------------

    def tail(self, lines: int = 40) -> str:
        """The last *lines* of the daemon's log, for an assertion message."""
        try:
            with open(self.log_path, "rb") as log:
                log.seek(0, os.SEEK_END)
                log.seek(max(log.tell() - TAIL_BYTES, 0))
                text = log.read().decode("utf-8", "replace")
        except OSError as error:
            return f"(no log: {error.strerror})"
        kept = text.splitlines()[-lines:]
        return "\n".join([f"--- {self.name}: last {len(kept)} lines of {self.log_path}", *kept])

    def events(self, name: str | None = None) -> list[dict[str, Any]]:
        """The log's JSON events (of one *name*), oldest first; other lines skipped."""
        found = []
        try:
            with open(self.log_path, encoding="utf-8", errors="replace") as log:
                for line in log:
                    try:
                        event = json.loads(line)
                    except ValueError:
                        continue
                    if isinstance(event, dict) and name in (None, event.get("event")):
                        found.append(event)
        except FileNotFoundError:
            pass
        return found


class Lab:
    """The namespaces, the daemons and their files of one run. Use as ``with Lab(5) as lab``."""

    def __init__(
        self,
        nodes: int = 0,
        *,
        config: Mapping[str, Any] | None = None,
        root: str | os.PathLike[str] | None = None,
        keep: bool | None = None,
        subnet: str = SUBNET,
        daemon_argv: Sequence[str] | None = None,
        start: bool = True,
        snapshot: bool = True,
    ) -> None:
        """*nodes* nodes to make on `open`; *config* overrides the daemons' config (a
        nested mapping such as ``{"sync": {"interval_s": 5}}``); *start* starts them;
        *snapshot* runs the daemons from a copy of the crdtd sources taken at `open`."""
        self.config: dict[str, Any] = dict(config or {})
        self.subnet = ipaddress.IPv4Network(subnet)
        self.keep = bool(os.environ.get("CRDTD_LAB_KEEP")) if keep is None else keep
        env_daemon = os.environ.get("CRDTD_LAB_DAEMON")
        if daemon_argv is not None:
            self.daemon_argv = list(daemon_argv)
        elif env_daemon:
            self.daemon_argv = shlex.split(env_daemon)
        else:
            self.daemon_argv = [sys.executable, "-m", "crdtd.daemon.main"]
        self.snapshot = snapshot
        self.source_root = _SOURCE_ROOT
        self.daemon_env: dict[str, str] = {}
        self.nodes: list[Node] = []
        self.hosts: list[Host] = []
        self._initial = nodes
        self._start = start
        self._root = root
        self._lock: netns.RunLock | None = None
        self._spawner: concurrent.futures.ThreadPoolExecutor | None = None
        self._created: list[str] = []
        self._next_index = 1
        self._closed = False
        self._mutex = threading.Lock()
        self.prefix = ""
        self.directory = Path()
        self.key_file = Path()

    def __enter__(self) -> Lab:
        return self.open()

    @property
    def run_id(self) -> str:
        """The 8 hex digits naming this run's namespaces, lock and temp dir."""
        assert self._lock is not None, "the lab is not open"
        return self._lock.run_id

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # --- building -----------------------------------------------------------------

    def open(self) -> Lab:
        """Remove stale runs' leftovers, then build the bridge and the nodes."""
        reason = netns.unavailable_reason()
        if reason is not None:
            raise LabError(reason)
        netns.clean_stale()
        self._lock = netns.RunLock()
        atexit.register(self.close)
        try:
            self.prefix = self._lock.prefix
            self.directory = Path(tempfile.mkdtemp(prefix=self.prefix, dir=self._root))
            self._lock.record(temp_dir=str(self.directory))
            self.key_file = self.directory / "cluster.key"
            write_new_key_file(self.key_file)
            self._prepare_sources()
            self._spawner = concurrent.futures.ThreadPoolExecutor(
                1, thread_name_prefix="crdtlab-spawner"
            )
            self.bridge_netns = f"{self.prefix}br"
            netns.add_netns(self.bridge_netns)
            self._created.append(self.bridge_netns)
            bridge = f"link add {BRIDGE} type bridge mcast_snooping 0".split()
            netns.ip(*bridge, netns=self.bridge_netns)
            netns.ip("link", "set", BRIDGE, "up", netns=self.bridge_netns)
            for _ in range(self._initial):
                self.add_node(start=False)
            if self._start:
                self.start_all()
        except BaseException:
            self.close()
            raise
        return self

    def _prepare_sources(self) -> None:
        """Copy the crdtd package (mtimes kept, so its bytecode stays valid) into the
        temp dir, so that a tree edited during a long run never mixes versions."""
        if self.snapshot:
            self.source_root = self.directory / "src"
            shutil.copytree(_SOURCE_ROOT / "crdtd", self.source_root / "crdtd", symlinks=True)
        python_path = [str(self.source_root), *filter(None, [os.environ.get("PYTHONPATH")])]
        self.daemon_env = {
            **os.environ,
            "PYTHONPATH": os.pathsep.join(python_path),
            "PYTHONUNBUFFERED": "1",
        }

    def _allocate(self, name: str | None, prefix: str) -> tuple[str, int]:
        with self._mutex:
            index = self._next_index
            self._next_index += 1
        if index >= self.subnet.num_addresses - 1:
            raise LabError(f"the lab's subnet {self.subnet} is full")
        name = name or f"{prefix}{index:02d}"
        if any(host.name == name for host in self.hosts):
            raise LabError(f"a host named {name!r} exists already")
        return name, index

    def add_host(self, name: str | None = None) -> Host:
        """A namespace on the bridge with an address and no daemon (an attacker, a
        unicast-only client...): run things in it with `Host.exec` / `Host.popen`."""
        name, index = self._allocate(name, "h")
        host = Host(self, name, index)
        self._register(host)
        return host

    def add_node(
        self,
        name: str | None = None,
        *,
        config: Mapping[str, Any] | None = None,
        start: bool = True,
        wait: bool = True,
    ) -> Node:
        """A new node (a late joiner, if the lab is running); *config* adds to the lab's."""
        name, index = self._allocate(name, "n")
        node = Node(self, name, index, config)
        self._register(node)
        self.nodes.append(node)
        if start:
            node.start(wait=wait)
        return node

    def add_clone(self, source: Node, name: str | None = None, *, start: bool = True) -> Node:
        """A new node on a copy of *source*'s state directory (*source* must be down),
        configured ``node.id: auto``: it takes the id the copy holds, *source*'s, as a
        cloned VM image would. Started (and waited for) with *start*."""
        node = self.add_node(name, config={"node": {"id": "auto"}}, start=False)
        node.node_id = source.node_id
        source.save_state(node.state_dir)
        if start:
            node.start(wait=True)
        return node

    def _register(self, host: Host) -> None:
        self._check_open()
        self._created.append(host.netns)
        self.hosts.append(host)
        host._create()

    def remove_node(self, node: Node) -> None:
        """Kill a node and delete its namespace and files (its peers forget it later)."""
        node.kill()
        netns.delete_netns(node.netns)
        if node.netns in self._created:
            self._created.remove(node.netns)
        self.nodes.remove(node)
        self.hosts.remove(node)
        if not self.keep:
            shutil.rmtree(node.directory, ignore_errors=True)

    def start_all(self, timeout_s: float = START_TIMEOUT_S) -> None:
        """Start every stopped node at once, then wait until each answers."""
        stopped = [node for node in self.nodes if not node.running]
        for node in stopped:
            node.start(wait=False)
        for node in stopped:
            node.wait_ready(timeout_s)

    def spawn(self, argv: Sequence[str], **options: Any) -> subprocess.Popen[bytes]:
        """Popen from the lab's spawner thread, in a new session, dying with this process."""
        self._check_open()
        assert self._spawner is not None

        def popen() -> subprocess.Popen[bytes]:
            return subprocess.Popen(
                list(argv), preexec_fn=_die_with_parent, start_new_session=True, **options
            )

        future = self._spawner.submit(popen)
        return future.result()

    def _check_open(self) -> None:
        if self._closed or self._lock is None:
            raise LabError("the lab is not open")

    # --- looking at it ------------------------------------------------------------

    def node(self, name: str) -> Node:
        for node in self.nodes:
            if node.name == name:
                return node
        raise KeyError(name)

    def running(self) -> list[Node]:
        return [node for node in self.nodes if node.running]

    def wanted(self) -> list[Node]:
        """The nodes that should be up: running, or crashed (see `Node.crashed`)."""
        return [node for node in self.nodes if node.wanted]

    def crashed(self) -> list[Node]:
        return [node for node in self.nodes if node.crashed]

    def wait_mesh(self, timeout_s: float = 30.0, nodes: Sequence[Node] | None = None) -> float:
        """Wait until each running node (or each of *nodes*) sees every other one as a
        live peer with its current incarnation; return the seconds it took."""
        began = time.monotonic()
        deadline = began + timeout_s
        while True:
            crashed = self.crashed()
            if crashed:
                raise LabError(f"crdtd crashed on {crashed[0].name}\n{crashed[0].tail()}")
            members = list(nodes) if nodes is not None else self.running()
            missing = self._mesh_gaps(members)
            if not missing:
                return time.monotonic() - began
            if time.monotonic() >= deadline:
                lines = [f"{name} does not see: {', '.join(gap)}" for name, gap in missing.items()]
                worst = max(missing, key=lambda name: len(missing[name]))
                raise LabError(
                    f"no full mesh after {timeout_s:g} s\n"
                    + "\n".join(lines)
                    + "\n"
                    + self.node(worst).tail()
                )
            time.sleep(0.2)

    def _mesh_gaps(self, members: Sequence[Node]) -> dict[str, list[str]]:
        statuses: dict[str, dict[str, Any]] = {}
        missing: dict[str, list[str]] = {}
        for node in members:
            try:
                statuses[node.name] = node.status()
            except (DaemonUnreachable, ControlError) as error:
                missing[node.name] = [f"(no status: {error})"]
        # By origin, not by name: a clone runs under another node's id.
        origins = {name: (s["node_id"], s["incarnation"]) for name, s in statuses.items()}
        for name, status in statuses.items():
            seen = {
                (peer["node_id"], peer["incarnation"])
                for peer in status["peers"]
                if not peer["suspected"]
            }
            gap = [
                other for other, origin in origins.items() if other != name and origin not in seen
            ]
            if gap:
                missing[name] = gap
        return missing

    def describe(self) -> list[str]:
        """One line per host: name, namespace, address, socket, log."""
        lines = [
            f"bridge: {self.bridge_netns} ({BRIDGE}), subnet {self.subnet}",
            f"cluster key: {self.key_file}",
        ]
        for host in self.hosts:
            if isinstance(host, Node):
                state = f"pid {host.pid}" if host.running else "down"
                lines.append(
                    f"{host.name}  {host.address:<12} netns {host.netns}  {state}\n"
                    f"     crdtctl --socket {host.socket} status\n"
                    f"     log {host.log_path}"
                )
            else:
                lines.append(f"{host.name}  {host.address:<12} netns {host.netns}  (no daemon)")
        return lines

    # --- faults across hosts ------------------------------------------------------

    def loss(self, probability: float, hosts: Iterable[Host] | None = None) -> None:
        """UDP loss on arrival at each of *hosts* (default: every node)."""
        for host in self.nodes if hosts is None else hosts:
            host.loss(probability)

    def partition(self, *groups: Iterable[Host]) -> None:
        """Each group hears only itself; hosts in no group hear everyone."""
        sides = [list(group) for group in groups]
        for side in sides:
            others = [host for other in sides if other is not side for host in other]
            for host in side:
                host.drop_from(others, "partition")

    def one_way(self, senders: Iterable[Host], receivers: Iterable[Host]) -> None:
        """*receivers* stop hearing *senders*; *senders* still hear *receivers*."""
        senders = list(senders)
        for host in receivers:
            host.drop_from(senders, "one_way")

    def heal(self) -> None:
        """Remove every fault rule on every host."""
        for host in self.hosts:
            if host._rules:
                host.clear_rules()

    # --- tearing down -------------------------------------------------------------

    def close(self) -> None:
        """Kill every daemon, delete every namespace and the temp dir; idempotent."""
        if self._closed:
            return
        self._closed = True
        atexit.unregister(self.close)
        errors = []
        for node in self.nodes:
            with contextlib.suppress(Exception):
                node.kill()
        for name in reversed(self._created):  # nodes first, the bridge last
            try:
                netns.delete_netns(name)
            except LabError as error:
                errors.append(str(error))
        if self._spawner is not None:
            self._spawner.shutdown(wait=True)
        if self.directory != Path() and not self.keep:
            shutil.rmtree(self.directory, ignore_errors=True)
        if self._lock is not None:
            self._lock.release()
        if errors:
            raise LabError("; ".join(errors))


def _merge(base: Mapping[str, Any], extra: Mapping[str, Any]) -> dict[str, Any]:
    """*base* with *extra* laid over it, section by section."""
    merged = copy.deepcopy(dict(base))
    for key, value in extra.items():
        if isinstance(value, Mapping) and isinstance(merged.get(key), Mapping):
            merged[key] = _merge(merged[key], value)
        else:
            merged[key] = copy.deepcopy(value)
    return merged


_libc = ctypes.CDLL(None, use_errno=True)


def _die_with_parent() -> None:
    """In the child before exec: SIGKILL when the spawner thread (the lab) dies.
    PR_SET_PDEATHSIG survives the exec of `ip` and of python (neither is setuid)."""
    _libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
