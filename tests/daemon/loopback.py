"""Real daemons on loopback for end-to-end tests: subprocesses driven through crdtctl.

Each daemon has its own unicast port, state directory and control socket under the
test's tmp_path; all share one multicast group on 127.0.0.1 with TTL 0, so nothing
leaves the host. Everything is killed when the test ends, also on failure.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


def free_udp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class Daemon:
    name: str
    root: Path
    group_port: int
    unicast_port: int
    process: subprocess.Popen[bytes] | None = None
    extra_config: str = ""
    log_level: str = "debug"
    key_file: Path | None = None

    @property
    def socket(self) -> Path:
        return self.root / f"{self.name}.sock"

    @property
    def config(self) -> Path:
        return self.root / f"{self.name}.yaml"

    @property
    def log(self) -> Path:
        return self.root / f"{self.name}.log"

    def write_config(self) -> None:
        self.config.write_text(
            f"node: {{id: {self.name}, state_dir: {self.root / self.name}}}\n"
            f"network: {{interface: 127.0.0.1, port: {self.group_port},"
            f" unicast_port: {self.unicast_port}, ttl: 0}}\n"
            f"control: {{socket: {self.socket}}}\n"
            f"log: {{level: {self.log_level}, format: json}}\n"
            + (f"security: {{key_file: {self.key_file}}}\n" if self.key_file else "")
            + self.extra_config
        )

    def start(self) -> None:
        self.write_config()
        log = open(self.log, "ab")  # noqa: SIM115 - closed by the child's exit
        self.process = subprocess.Popen(
            [sys.executable, "-m", "crdtd.daemon.main", "--config", str(self.config)],
            stdout=log,
            stderr=log,
        )
        log.close()
        self.ctl("wait-ready", "--timeout", "15")

    def kill(self, sig: int = signal.SIGKILL) -> int:
        assert self.process is not None
        self.process.send_signal(sig)
        code = self.process.wait(timeout=15)
        self.process = None
        return code

    def ctl(
        self, *args: str, check: bool = True, timeout: float = 30
    ) -> subprocess.CompletedProcess[str]:
        done = crdtctl("--socket", str(self.socket), *args, timeout=timeout)
        if check and done.returncode != 0:
            raise AssertionError(
                f"crdtctl {' '.join(args)} on {self.name} exited {done.returncode}: "
                f"{done.stdout}{done.stderr}\n--- log tail ---\n{self.log_tail()}"
            )
        return done

    def data(self, *args: str) -> Any:
        return json.loads(self.ctl("--json", *args).stdout)["data"]

    def log_tail(self, lines: int = 30) -> str:
        if not self.log.exists():
            return "(no log)"
        return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])


def crdtctl(*args: str, timeout: float = 30) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "CRDTD_SOCKET"}
    return subprocess.run(
        [sys.executable, "-m", "crdtd.cli.main", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env,
    )


@dataclass
class Cluster:
    root: Path
    daemons: list[Daemon] = field(default_factory=list)

    @classmethod
    def start(
        cls,
        root: Path,
        size: int,
        extra_config: str = "",
        log_level: str = "debug",
        key_file: Path | None = None,
    ) -> Cluster:
        cluster = cls(root)
        group_port = free_udp_port()
        for index in range(size):
            daemon = Daemon(
                f"n{index}",
                root,
                group_port,
                free_udp_port(),
                extra_config=extra_config,
                log_level=log_level,
                key_file=key_file,
            )
            cluster.daemons.append(daemon)
            daemon.start()
        return cluster

    def stop(self) -> None:
        for daemon in self.daemons:
            if daemon.process is not None and daemon.process.poll() is None:
                daemon.process.kill()
                daemon.process.wait(timeout=15)

    def wait_agree(self, variable: str, expected: int, timeout_s: float = 20.0) -> None:
        deadline = time.monotonic() + timeout_s
        values: dict[str, Any] = {}
        while time.monotonic() < deadline:
            values = {}
            for daemon in self.daemons:
                done = daemon.ctl("--json", "get", variable, check=False)
                values[daemon.name] = json.loads(done.stdout).get("data", {}).get("value")
            if all(value == expected for value in values.values()):
                return
            time.sleep(0.1)
        tails = "\n".join(f"--- {d.name} ---\n{d.log_tail(10)}" for d in self.daemons)
        raise AssertionError(f"{variable}: expected {expected} everywhere, got {values}\n{tails}")
