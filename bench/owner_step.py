"""How long one step can hold crdtd's owner task under the worst inputs; a table and JSON.

    .venv/bin/python bench/owner_step.py [--hold-s 15] [--populate-count 1000000]
        [--verify-ops 200000] [--sync-ops 1000000] [--only SCENARIO...] [--out FILE.json]

Each scenario runs on a fresh 2-node loopback cluster (tests/daemon/loopback.py: one
multicast group on 127.0.0.1, TTL 0; nothing leaves the host), loaded first and then
restarted, so what it measures is the scenario and not the loading:

- ``history``: a client pipelines 256 ``history`` requests on a 10k-op variable and
  never reads; after 1 s an ``add`` goes in on another connection;
- ``populate``: one ``populate`` of ``--populate-count`` ops (the documented limit);
- ``verify``: ``verify`` every 0.5 s (as ``crdtctl verify --wait``) on a ``--verify-ops``
  log for ``--hold-s``;
- ``flood``: random datagrams (1..1400 bytes) at full speed to the node's unicast port;
- ``sync``: a full sync (``crdtctl sync``) that folds a ``--sync-ops`` log on both nodes.

Step time is measured two ways: from outside, the longest wait of a probe that sends
``status`` every ~10 ms on its own connection (an answer still missing when the scenario
ends counts for the time waited so far; ``blocked`` says so); and from inside, the
driver's own longest step (``owner_step_max_us`` in ``status``'s stats; n/a on a daemon
that predates it). RSS is the daemon's peak (VmHWM). Every scenario is bounded by
``--hold-s`` (the populate by ``--populate-s``), then the cluster is killed.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import random
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.report import table, write_result  # noqa: E402
from crdtd.control.client import Client  # noqa: E402
from crdtd.control.protocol import ControlError, encode_request  # noqa: E402
from tests.daemon.loopback import Cluster, Daemon  # noqa: E402

PROBE_INTERVAL_S = 0.01
VERIFY_POLL_S = 0.5
HISTORY_OPS = 10_000
HISTORY_PIPELINE = 256
CONFIG = "sync: {interval_s: 0}\n"  # no scheduled barrier in the middle of a scenario

COLUMNS = (
    ("scenario", "scenario"),
    ("probe_max_ms", "probe max ms"),
    ("blocked", "blocked"),
    ("probes", "probes"),
    ("step_max_ms", "step max ms"),
    ("rss_peak_mib", "RSS peak MiB"),
    ("detail", "detail"),
)


class Probe:
    """``status`` every `PROBE_INTERVAL_S` on one connection, in a thread; the longest
    wait, counting an answer still missing at `stop` for the time waited so far."""

    def __init__(self, path: Path) -> None:
        self._path = path
        self._stop = threading.Event()
        self.max_s = 0.0
        self.count = 0
        self.blocked = False
        self._sent_at: float | None = None
        self._thread = threading.Thread(target=self._run, daemon=True)

    def start(self) -> Probe:
        self._thread.start()
        return self

    def _run(self) -> None:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.connect(str(self._path))
            sock.settimeout(0.05)
            buffer = b""
            request_id = 0
            while not self._stop.is_set():
                request_id += 1
                self._sent_at = time.perf_counter()
                sock.sendall(encode_request(request_id, "status", {}))
                while b"\n" not in buffer and not self._stop.is_set():
                    try:
                        buffer += sock.recv(1 << 20)
                    except TimeoutError:
                        continue
                if b"\n" not in buffer:
                    return  # stopped while waiting: `stop` counts the wait
                line, buffer = buffer.split(b"\n", 1)
                assert json.loads(line)["ok"], line
                self.max_s = max(self.max_s, time.perf_counter() - self._sent_at)
                self._sent_at = None
                self.count += 1
                time.sleep(PROBE_INTERVAL_S)

    def stop(self) -> None:
        sent_at = self._sent_at
        if sent_at is not None:
            waited = time.perf_counter() - sent_at
            if waited > self.max_s:
                self.max_s, self.blocked = waited, True
        self._stop.set()
        self._thread.join(timeout=5)


def peak_rss_mib(daemon: Daemon) -> float:
    assert daemon.process is not None
    for line in Path(f"/proc/{daemon.process.pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return round(int(line.split()[1]) / 1024, 1)
    return 0.0


def step_max_ms(daemon: Daemon, timeout_s: float = 120.0) -> float | str:
    """The driver's longest step so far, or n/a when this daemon does not measure it."""
    with Client(daemon.socket, timeout_s=timeout_s) as client:
        stats = client.call("status")["stats"]
    value = stats.get("owner_step_max_us")
    return "n/a" if value is None else round(value / 1000, 1)


def restart(daemon: Daemon) -> None:
    daemon.kill(signal.SIGTERM)
    daemon.start()


def finish(name: str, daemon: Daemon, probe: Probe, detail: str) -> dict[str, Any]:
    probe.stop()
    return {
        "scenario": name,
        "probe_max_ms": round(probe.max_s * 1000, 1),
        "blocked": probe.blocked,
        "probes": probe.count,
        "step_max_ms": step_max_ms(daemon),
        "rss_peak_mib": peak_rss_mib(daemon),
        "detail": detail,
    }


def history(root: Path, hold_s: float) -> dict[str, Any]:
    cluster = Cluster.start(root, 2, extra_config=CONFIG, log_level="info")
    try:
        target = cluster.daemons[0]
        target.ctl("populate", "h", str(HISTORY_OPS), timeout=120)
        restart(target)
        probe = Probe(target.socket).start()
        greedy = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        greedy.connect(str(target.socket))
        greedy.setblocking(False)
        lines = b"".join(
            encode_request(i, "history", {"variable": "h"}) for i in range(HISTORY_PIPELINE)
        )
        sent = 0
        start = time.perf_counter()
        add_ms: float | str = "none"
        added = False
        while time.perf_counter() - start < hold_s:
            if sent < len(lines):
                with contextlib.suppress(BlockingIOError):
                    sent += greedy.send(lines[sent:])
            if not added and time.perf_counter() - start >= 1.0:
                added = True
                t0 = time.perf_counter()
                try:
                    with Client(target.socket, timeout_s=hold_s) as client:
                        client.call("add", {"variable": "other", "delta": 1})
                    add_ms = round((time.perf_counter() - t0) * 1000, 1)
                except ControlError as error:
                    add_ms = f"failed ({error.code})"
            time.sleep(0.01)
        row = finish(
            "history", target, probe, f"add on another connection: {add_ms} ms; {sent} B sent"
        )
        greedy.close()
        return row
    finally:
        cluster.stop()


def populate(root: Path, count: int, limit_s: float) -> dict[str, Any]:
    cluster = Cluster.start(root, 2, extra_config=CONFIG, log_level="info")
    try:
        target = cluster.daemons[0]
        probe = Probe(target.socket).start()
        start = time.perf_counter()
        try:
            with Client(target.socket, timeout_s=limit_s) as client:
                data = client.call("populate", {"variable": "p", "count": count})
            outcome = f"answered count={data['count']} in {time.perf_counter() - start:.1f} s"
        except ControlError as error:
            outcome = f"{error.code} after {time.perf_counter() - start:.1f} s"
        return finish("populate", target, probe, f"populate {count}: {outcome}")
    finally:
        cluster.stop()


def verify(root: Path, ops: int, hold_s: float) -> dict[str, Any]:
    cluster = Cluster.start(root, 2, extra_config=CONFIG, log_level="info")
    try:
        target, peer = cluster.daemons
        value = target.data("populate", "v", str(ops))["value"]
        cluster.wait_agree("v", value, timeout_s=120)
        restart(peer)
        restart(target)
        probe = Probe(target.socket).start()
        peer_probe = Probe(peer.socket).start()
        start = time.perf_counter()
        rounds = 0
        agreed = 0
        with Client(target.socket, timeout_s=max(hold_s, 30.0)) as client:
            while time.perf_counter() - start < hold_s:
                agreed += bool(client.call("verify").get("agree"))
                rounds += 1
                time.sleep(VERIFY_POLL_S)  # as crdtctl verify --wait asks
        peer_probe.stop()
        peer_step = step_max_ms(peer)
        detail = (
            f"{rounds} verifies ({agreed} agree); peer: probe max "
            f"{peer_probe.max_s * 1000:.1f} ms, step max {peer_step} ms"
        )
        return finish("verify", target, probe, detail)
    finally:
        cluster.stop()


def flood(root: Path, hold_s: float) -> dict[str, Any]:
    cluster = Cluster.start(root, 2, extra_config=CONFIG, log_level="info")
    try:
        target = cluster.daemons[0]
        probe = Probe(target.socket).start()
        rng = random.Random(0)
        payloads = [rng.randbytes(rng.randint(1, 1400)) for _ in range(512)]
        destination = ("127.0.0.1", target.unicast_port)
        sent = 0
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
            start = time.perf_counter()
            while time.perf_counter() - start < hold_s:
                for payload in payloads:
                    try:
                        sock.sendto(payload, destination)
                        sent += 1
                    except OSError:
                        pass  # the kernel's buffer is full: that is the point
            elapsed = time.perf_counter() - start
        return finish("flood", target, probe, f"{sent / elapsed:,.0f} datagrams/s sent")
    finally:
        cluster.stop()


def sync(root: Path, ops: int, hold_s: float) -> dict[str, Any]:
    cluster = Cluster.start(root, 2, extra_config=CONFIG, log_level="info")
    try:
        target, peer = cluster.daemons
        with Client(target.socket, timeout_s=600) as client:
            value = client.call("populate", {"variable": "s", "count": ops})["value"]
        cluster.wait_agree("s", value, timeout_s=300)
        restart(peer)
        restart(target)
        probe = Probe(target.socket).start()
        peer_probe = Probe(peer.socket).start()
        start = time.perf_counter()
        with Client(target.socket, timeout_s=max(hold_s, 60.0)) as client:
            result = client.call("sync")
            answered_s = time.perf_counter() - start
            before = client.call("before", {"variable": "s"})["before"]
        time.sleep(1.0)  # what the fold left to do after the answer, if anything
        peer_probe.stop()
        detail = (
            f"sync {result['result']} in {answered_s:.2f} s, folded {before == value}; peer: "
            f"probe max {peer_probe.max_s * 1000:.1f} ms, step max {step_max_ms(peer)} ms"
        )
        return finish("sync", target, probe, detail)
    finally:
        cluster.stop()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--hold-s", type=float, default=15.0)
    parser.add_argument("--populate-count", type=int, default=1_000_000)
    parser.add_argument("--populate-s", type=float, default=150.0)
    parser.add_argument("--verify-ops", type=int, default=200_000)
    parser.add_argument("--sync-ops", type=int, default=1_000_000)
    parser.add_argument(
        "--only", nargs="+", choices=("history", "populate", "verify", "flood", "sync")
    )
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "owner_step.json")
    options = parser.parse_args()
    rows = []
    with tempfile.TemporaryDirectory(prefix="crdtd-owner-") as tmp:
        scenarios = {
            "history": lambda root: history(root, options.hold_s),
            "populate": lambda root: populate(root, options.populate_count, options.populate_s),
            "verify": lambda root: verify(root, options.verify_ops, options.hold_s),
            "flood": lambda root: flood(root, options.hold_s),
            "sync": lambda root: sync(root, options.sync_ops, options.hold_s),
        }
        for name, scenario in scenarios.items():
            if options.only and name not in options.only:
                continue
            root = Path(tmp) / name
            root.mkdir()
            rows.append(scenario(root))
            print(json.dumps(rows[-1]), file=sys.stderr, flush=True)
    print(table(rows, COLUMNS))
    write_result(
        options.out,
        "owner_step",
        rows,
        hold_s=options.hold_s,
        populate_count=options.populate_count,
        verify_ops=options.verify_ops,
        sync_ops=options.sync_ops,
        commit=subprocess.run(
            ["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            check=False,
        ).stdout.strip(),
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
