"""The demo: three daemons on loopback, driven only through crdtctl, as a person would.

They run keyed, as a real cluster must: `crdtd keygen` makes one cluster key and every
daemon's config names that file (loopback alone could run keyless; the demo shows the
way a LAN needs).

Everything lives in a temporary directory that is removed at the end; the daemons are
stopped with SIGTERM (and killed if they do not stop), also on Ctrl-C or failure.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

BIN = Path(sys.executable).parent
NODES = ("alpha", "bravo", "charlie")


def main() -> int:
    root = Path(tempfile.mkdtemp(prefix="crdtd-demo-"))
    base = random.randint(20000, 40000)  # ports of our own, so two demos never collide
    daemons: list[subprocess.Popen[bytes]] = []
    try:
        key_file = root / "cluster.key"
        print(f"\n$ crdtd keygen {key_file}", flush=True)
        subprocess.run([BIN / "crdtd", "keygen", key_file], check=True, timeout=30)
        for index, name in enumerate(NODES):
            config = root / f"{name}.yaml"
            config.write_text(
                f"node: {{id: {name}, state_dir: {root / name}}}\n"
                f"network: {{interface: 127.0.0.1, group: 239.255.77.77, port: {base},"
                f" unicast_port: {base + 1 + index}, ttl: 0}}\n"
                f"control: {{socket: {root / name}.sock}}\n"
                f"security: {{key_file: {key_file}}}\n"
                "sync: {interval_s: 0}\n"
                "log: {level: info, format: json}\n"
            )
            log = open(root / f"{name}.log", "wb")  # noqa: SIM115 - lives as long as the daemon
            daemons.append(
                subprocess.Popen([BIN / "crdtd", "--config", config], stdout=log, stderr=log)
            )
        say(f"started 3 daemons ({', '.join(NODES)}) in {root}, all with that key")
        for name in NODES:
            ctl(root, name, "wait-ready", "--timeout", "10")
        time.sleep(1.5)  # let them hear each other's announcements
        ctl(root, "alpha", "peers")
        ctl(root, "alpha", "keys")
        ctl(root, "alpha", "create", "x")
        ctl(root, "alpha", "add", "x", "5")
        ctl(root, "bravo", "+10", "x")
        ctl(root, "charlie", "--", "-3", "x")
        ctl(root, "charlie", "populate", "x", "100")
        wait_agree(root, "x")
        for name in NODES:
            ctl(root, name, "get", "x")
        ctl(root, "bravo", "sync")
        for name in NODES:
            ctl(root, name, "before", "x")
        ctl(root, "alpha", "history", "x")
        ctl(root, "charlie", "add", "x", "1")
        wait_agree(root, "x")
        ctl(root, "alpha", "get", "x")
        say("all three agree; stopping")
        return 0
    finally:
        stop(daemons)
        shutil.rmtree(root, ignore_errors=True)


def say(text: str) -> None:
    print(f"\n# {text}", flush=True)


def ctl(root: Path, node: str, *args: str, show: bool = True) -> str:
    command = ["crdtctl", "--socket", str(root / f"{node}.sock"), *args]
    if show:
        print(f"\n$ crdtctl --socket {node}.sock {' '.join(args)}", flush=True)
    done = subprocess.run(
        [BIN / "crdtctl", *command[1:]], capture_output=True, text=True, timeout=30
    )
    if show:
        print((done.stdout + done.stderr).rstrip(), flush=True)
    if done.returncode != 0:
        raise SystemExit(f"demo: {' '.join(command)} failed with exit code {done.returncode}")
    return done.stdout


def wait_agree(root: Path, variable: str, timeout_s: float = 10.0) -> None:
    deadline = time.monotonic() + timeout_s
    while True:
        values = {}
        for name in NODES:
            reply = json.loads(ctl(root, name, "--json", "get", variable, show=False))
            values[name] = reply["data"]["value"]
        if len(set(values.values())) == 1:
            say(f"all nodes agree: {variable} = {values[NODES[0]]}")
            return
        if time.monotonic() > deadline:
            raise SystemExit(f"demo: nodes disagree after {timeout_s} s: {values}")
        time.sleep(0.1)


def stop(daemons: list[subprocess.Popen[bytes]]) -> None:
    for daemon in daemons:
        if daemon.poll() is None:
            daemon.send_signal(signal.SIGTERM)
    for daemon in daemons:
        try:
            daemon.wait(timeout=10)
        except subprocess.TimeoutExpired:
            daemon.kill()
            daemon.wait()
        if daemon.returncode not in (0, -signal.SIGTERM):
            print(f"demo: a daemon exited with {daemon.returncode}", file=sys.stderr)


if __name__ == "__main__":
    os.environ.pop("CRDTD_SOCKET", None)
    sys.exit(main())
