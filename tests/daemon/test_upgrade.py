"""A rolling upgrade, proven: three daemons of the previous release, upgraded one at a
time to the work tree while adds flow, end at the sum of the acknowledged adds.

- The previous release is the commit in ``packaging/previous-release``. Its ``crdtd/``
  and ``pyproject.toml`` come out of the git history (``git archive``) into a venv of
  their own, cached under ``$CRDTD_TEST_CACHE`` (default: the temp dir's
  ``crdtd-test-cache``) by commit, interpreter and dependency dirs, so a rerun builds
  nothing. The venv gets its dependencies through a ``.pth`` naming the dirs this
  interpreter has them in, as an in-place package upgrade keeps them: no network.
- Every daemon is on loopback (127.0.0.1, TTL 0, one group port, a unicast port each),
  as in `tests.daemon.loopback`; each version is driven by its own crdtctl, and the
  config written is the part both versions read (the old loader refuses unknown keys).
- An add counts when its crdtctl acknowledged it. The adder never sends to a node that
  is about to be stopped (it holds that node's lock while an add is in flight), so no
  add is left in doubt and the expected value is exact.
- Every wait is bounded; every daemon is killed, and the run's dir removed, however the
  test ends (a failure's message carries the logs' tails).
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import importlib.metadata
import json
import os
import re
import shutil
import signal
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
import tomllib
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from crdtd.core.settings import Key
from crdtd.lab.hostile import write_keys
from crdtd.store.sqlite import DB_NAME, SCHEMA_VERSION
from tests.daemon.loopback import free_udp_port

REPO = Path(__file__).resolve().parents[2]
PREVIOUS_RELEASE = REPO / "packaging" / "previous-release"
VARIABLE = "upgraded"
READY_TIMEOUT_S = 30.0
STOP_TIMEOUT_S = 15.0
AGREE_TIMEOUT_S = 30.0
REJOIN_TIMEOUT_S = 30.0
CTL_TIMEOUT_S = 30.0
ADD_PAUSE_S = 0.05
"""Between two adds of the adder: a steady trickle, light on a shared 2-core machine."""
CLUSTER_KEY = Key("k-upgrade", bytes(range(32)))
DWELL_S = 1.5
"""How long adds flow to a cluster between two upgrades (and before the first)."""


def previous_release() -> str:
    """The commit ``packaging/previous-release`` names."""
    lines = [
        line.strip()
        for line in PREVIOUS_RELEASE.read_text().splitlines()
        if line.strip() and not line.lstrip().startswith("#")
    ]
    assert len(lines) == 1 and re.fullmatch(r"[0-9a-f]{7,40}", lines[0]), (
        f"{PREVIOUS_RELEASE}: expected one commit alone on its line, got {lines}"
    )
    return lines[0]


def _git(*args: str) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(["git", "-C", str(REPO), *args], capture_output=True, timeout=60)


def _dependency_dirs(pyproject: Path) -> list[str]:
    """The dirs this interpreter has the previous release's dependencies in."""
    requirements = tomllib.loads(pyproject.read_text())["project"]["dependencies"]
    dirs: list[str] = []
    for requirement in requirements:
        match = re.match(r"[A-Za-z0-9_.-]+", requirement)
        assert match is not None, requirement
        # scripts/bootstrap installs netifaces-plus (same import name) where it cannot
        # build netifaces.
        names = [match[0], *(["netifaces-plus"] if match[0] == "netifaces" else [])]
        for name in names:
            try:
                location = importlib.metadata.distribution(name).locate_file("")
            except importlib.metadata.PackageNotFoundError:
                continue
            dirs.append(str(Path(str(location)).resolve()))
            break
        else:
            pytest.fail(f"the previous release needs {requirement}, which {sys.executable} lacks")
    return list(dict.fromkeys(dirs))


def _cache_root() -> Path:
    configured = os.environ.get("CRDTD_TEST_CACHE")
    return Path(configured) if configured else Path(tempfile.gettempdir()) / "crdtd-test-cache"


def build_previous(commit: str) -> Path:
    """The python of a venv holding *commit*'s crdtd, built once and cached."""
    resolved = _git("rev-parse", "--verify", "--quiet", f"{commit}^{{commit}}")
    if resolved.returncode != 0:
        pytest.skip(f"the git history here has no commit {commit} (not a clone, or a shallow one)")
    full = resolved.stdout.decode().strip()
    with tempfile.TemporaryDirectory() as scratch:
        # The dependencies it names decide the venv, so read them before the key.
        archive = _git("archive", full, "pyproject.toml")
        assert archive.returncode == 0, archive.stderr.decode()
        subprocess.run(["tar", "-x", "-C", scratch], input=archive.stdout, check=True)
        dirs = _dependency_dirs(Path(scratch) / "pyproject.toml")
    version = f"{sys.version_info.major}.{sys.version_info.minor}"
    key = hashlib.sha256("\n".join([sys.executable, version, *dirs]).encode()).hexdigest()[:12]
    root = _cache_root()
    root.mkdir(parents=True, exist_ok=True)
    final = root / f"previous-{full}-py{version}-{key}"
    python = final / "venv" / "bin" / "python"
    with open(root / ".lock", "a") as lock:  # two xdist workers build it once
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not python.exists():
            building = Path(tempfile.mkdtemp(prefix=".building-", dir=root))
            try:
                archive = _git("archive", full, "crdtd", "pyproject.toml")
                assert archive.returncode == 0, archive.stderr.decode()
                (building / "src").mkdir()
                subprocess.run(
                    ["tar", "-x", "-C", str(building / "src")], input=archive.stdout, check=True
                )
                subprocess.run(
                    [sys.executable, "-m", "venv", "--without-pip", str(building / "venv")],
                    check=True,
                    timeout=120,
                )
                (site,) = (building / "venv" / "lib").glob("python*/site-packages")
                # Its own source first: the crdtd of this interpreter never shadows it.
                paths = [str(final / "src"), *dirs]
                (site / "crdtd-previous.pth").write_text("".join(f"{p}\n" for p in paths))
                shutil.rmtree(final, ignore_errors=True)  # a build cut short, if any
                building.rename(final)
            finally:
                shutil.rmtree(building, ignore_errors=True)
    return python


@dataclass(frozen=True)
class Version:
    """A crdtd to run: an interpreter, and the source tree its crdtd comes from."""

    name: str
    python: Path
    source: Path

    def env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if k not in ("CRDTD_SOCKET", "PYTHONPATH")}
        if self.name == "new":
            env["PYTHONPATH"] = str(self.source)
        return env

    def check(self, cwd: Path) -> None:
        """Its ``import crdtd`` is the tree it names, not some other installed one."""
        done = subprocess.run(
            [str(self.python), "-c", "import crdtd; print(crdtd.__file__)"],
            capture_output=True,
            text=True,
            timeout=60,
            env=self.env(),
            cwd=cwd,
        )
        assert done.returncode == 0, done.stderr
        assert (
            Path(done.stdout.strip()).resolve() == (self.source / "crdtd" / "__init__.py").resolve()
        )


@dataclass
class Node:
    """One daemon: its name, ports and state dir stay; its version changes."""

    name: str
    root: Path
    group_port: int
    unicast_port: int = field(default_factory=free_udp_port)
    version: Version | None = None
    process: subprocess.Popen[bytes] | None = None
    lock: threading.Lock = field(default_factory=threading.Lock)
    """Held by the adder while one of its adds is in flight here."""
    up: bool = False
    """Whether the adder may send here."""
    key_file: Path | None = None

    @property
    def socket(self) -> Path:
        return self.root / f"{self.name}.sock"

    @property
    def log(self) -> Path:
        return self.root / f"{self.name}.log"

    @property
    def state_db(self) -> Path:
        return self.root / self.name / DB_NAME

    def start(self, version: Version) -> None:
        config = self.root / f"{self.name}.yaml"
        # Only keys both versions know: the previous release's loader refuses others.
        config.write_text(
            f"node: {{id: {self.name}, state_dir: {self.root / self.name}}}\n"
            f"network: {{interface: 127.0.0.1, port: {self.group_port},"
            f" unicast_port: {self.unicast_port}, ttl: 0}}\n"
            f"control: {{socket: {self.socket}}}\n"
            "log: {level: info, format: json}\n"
            "sync: {interval_s: 0}\n"
            + (f"security: {{key_file: {self.key_file}}}\n" if self.key_file else "")
        )
        self.version = version
        with open(self.log, "ab") as log:
            log.write(f"--- starting {version.name} ---\n".encode())
            log.flush()
            self.process = subprocess.Popen(
                [str(version.python), "-m", "crdtd.daemon.main", "--config", str(config)],
                stdout=log,
                stderr=log,
                env=version.env(),
                cwd=self.root,
            )
        self.ctl("wait-ready", "--timeout", str(READY_TIMEOUT_S))
        self.up = True

    def stop(self) -> int:
        """Let no more adds in, then SIGTERM; the daemon's exit code."""
        assert self.process is not None
        with self.lock:
            self.up = False
        self.process.send_signal(signal.SIGTERM)
        code = self.process.wait(timeout=STOP_TIMEOUT_S)
        self.process = None
        return code

    def ctl(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        assert self.version is not None
        command = [str(self.version.python), "-m", "crdtd.cli.main", "--socket", str(self.socket)]
        done = subprocess.run(
            [*command, *args],
            capture_output=True,
            text=True,
            timeout=CTL_TIMEOUT_S + 10,
            env=self.version.env(),
            cwd=self.root,
        )
        if check and done.returncode != 0:
            raise AssertionError(
                f"{self.version.name} crdtctl {' '.join(args)} on {self.name} exited "
                f"{done.returncode}: {done.stdout}{done.stderr}\n{self.log_tail()}"
            )
        return done

    def data(self, *args: str) -> Any:
        return json.loads(self.ctl("--json", *args).stdout)["data"]

    def log_tail(self, lines: int = 15) -> str:
        text = self.log.read_text(errors="replace") if self.log.exists() else "(no log)"
        return f"--- {self.name} log ---\n" + "\n".join(text.splitlines()[-lines:])

    def schema_version(self) -> int:
        with contextlib.closing(sqlite3.connect(f"file:{self.state_db}?mode=ro", uri=True)) as db:
            return int(db.execute("PRAGMA user_version").fetchone()[0])


class Adder(threading.Thread):
    """Adds to every node that is up, in turn, each through that node's own crdtctl, and
    sums what was acknowledged. An add that is not acknowledged by a node that is up
    is a failure of the test (kept in `failures`), not something to retry."""

    def __init__(self, nodes: list[Node]) -> None:
        super().__init__(daemon=True)
        self.nodes = nodes
        self.acknowledged = 0
        self.count = 0
        self.by_version: dict[str, int] = {}
        self.failures: list[str] = []
        self.halt = threading.Event()

    def run(self) -> None:
        turn = 0
        while not self.halt.is_set():
            node = self.nodes[turn % len(self.nodes)]
            delta = (turn % 9 + 1) * (-1 if turn % 4 == 3 else 1)
            turn += 1
            with node.lock:
                if node.up:
                    self._add(node, delta)
            self.halt.wait(ADD_PAUSE_S)

    def _add(self, node: Node, delta: int) -> None:
        assert node.version is not None
        try:
            done = node.ctl("--json", "add", "--", VARIABLE, str(delta), check=False)
            answer = json.loads(done.stdout) if done.returncode == 0 else {}
        except (subprocess.TimeoutExpired, json.JSONDecodeError) as error:
            self.failures.append(f"add {delta} on {node.name}: {error!r}")
            return
        if answer.get("ok") is not True:
            self.failures.append(
                f"add {delta} on {node.name} ({node.version.name}) exited {done.returncode}: "
                f"{done.stdout}{done.stderr}"
            )
            return
        self.acknowledged += delta
        self.count += 1
        self.by_version[node.version.name] = self.by_version.get(node.version.name, 0) + 1


@pytest.fixture
def versions(tmp_path: Path) -> tuple[Version, Version]:
    python = build_previous(previous_release())
    old = Version("old", python, python.parents[2] / "src")
    new = Version("new", Path(sys.executable), REPO)
    old.check(tmp_path)
    new.check(tmp_path)
    return old, new


@pytest.fixture
def nodes(tmp_path: Path) -> Iterator[list[Node]]:
    root = Path(tempfile.mkdtemp(prefix="upgrade-", dir=tmp_path))
    group_port = free_udp_port()
    made = [Node(f"n{index}", root, group_port) for index in range(3)]
    try:
        yield made
    finally:
        for node in made:
            if node.process is not None and node.process.poll() is None:
                node.process.kill()
                node.process.wait(timeout=STOP_TIMEOUT_S)
        shutil.rmtree(root, ignore_errors=True)


def _tails(nodes: list[Node]) -> str:
    return "\n".join(node.log_tail() for node in nodes)


def _wait_rejoined(nodes: list[Node], node: Node) -> None:
    """Every other node lists *node*'s current incarnation as a live peer, and it lists
    every other node's."""
    incarnation = {n.name: n.data("status")["incarnation"] for n in nodes}
    deadline = time.monotonic() + REJOIN_TIMEOUT_S
    missing: list[str] = []
    while time.monotonic() < deadline:
        missing = []
        for viewer in nodes:
            live = {
                (peer["node_id"], peer["incarnation"])
                for peer in viewer.data("peers")["peers"]
                if not peer["suspected"]
            }
            wanted = [node] if viewer is not node else [n for n in nodes if n is not node]
            missing += [
                f"{viewer.name} misses {n.name}"
                for n in wanted
                if (n.name, incarnation[n.name]) not in live
            ]
        if not missing:
            return
        time.sleep(0.2)
    raise AssertionError(f"{node.name} did not rejoin: {missing}\n{_tails(nodes)}")


def _wait_agree(nodes: list[Node], expected: int) -> None:
    deadline = time.monotonic() + AGREE_TIMEOUT_S
    values: dict[str, Any] = {}
    while time.monotonic() < deadline:
        values = {n.name: n.data("get", VARIABLE)["value"] for n in nodes}
        if all(value == expected for value in values.values()):
            return
        time.sleep(0.2)
    raise AssertionError(f"expected {expected} on every node, got {values}\n{_tails(nodes)}")


@pytest.mark.parametrize("keyed", [False, True], ids=["keyless", "keyed"])
def test_rolling_upgrade_from_the_previous_release_loses_no_acknowledged_add(
    versions: tuple[Version, Version], nodes: list[Node], keyed: bool
) -> None:
    """Keyless is what loopback allows; keyed is what a LAN needs (every datagram
    signed by one version and verified by the other)."""
    old, new = versions
    key_file = write_keys(nodes[0].root / "cluster.key", CLUSTER_KEY) if keyed else None
    for node in nodes:
        node.key_file = key_file
        node.start(old)
    for node in nodes:
        _wait_rejoined(nodes, node)
    old_schema = nodes[0].schema_version()
    adder = Adder(nodes)
    adder.start()
    try:
        time.sleep(DWELL_S)
        for index, node in enumerate(nodes):
            code = node.stop()
            assert code == 0, f"{node.name} ({old.name}) exited {code} on SIGTERM\n{_tails(nodes)}"
            node.start(new)
            _wait_rejoined(nodes, node)
            time.sleep(DWELL_S)
            if index == 0:
                # A full sync while the cluster is mixed, started by an old node: its
                # bases reach the new node's store and the old ones' (and are migrated
                # with them when those are upgraded).
                result = nodes[1].data("sync")
                assert result["result"] == "completed", (result, _tails(nodes))
                time.sleep(DWELL_S)
    finally:
        adder.halt.set()
        adder.join(timeout=CTL_TIMEOUT_S + 15)
    assert not adder.is_alive(), "the adder did not stop"
    assert adder.failures == [], f"{adder.failures}\n{_tails(nodes)}"
    # Adds went to old nodes and to new ones, and kept coming during every restart.
    assert adder.by_version.get(old.name, 0) > 0 and adder.by_version.get(new.name, 0) > 0, (
        adder.by_version
    )

    expected = adder.acknowledged
    print(f"{adder.count} adds acknowledged ({adder.by_version}), summing to {expected}")
    _wait_agree(nodes, expected)
    result = nodes[-1].data("sync")
    assert result["result"] == "completed", (result, _tails(nodes))
    _wait_agree(nodes, expected)
    for node in nodes:
        status = node.data("status")
        # No barrier left open: every node is back at work, in the epoch the sync made.
        assert (status["mode"], status["epoch"]) == ("work", result["epoch"]), (
            node.name,
            status,
        )
        history = node.data("history", VARIABLE)
        assert history["before"] == expected and history["ops"] == [], (node.name, history)
        assert node.schema_version() == SCHEMA_VERSION >= old_schema
    verify = nodes[0].ctl("verify", check=False)
    assert verify.returncode == 0, f"{verify.stdout}{verify.stderr}\n{_tails(nodes)}"
