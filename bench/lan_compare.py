"""crdtd against etcd on the same LAN lab: add latency and throughput, replication lag
under loss, barrier cost, and writes accepted on each side of a 1|2 partition.

    python bench/lan_compare.py [--nodes 3] [--measure-s 10] [--no-etcd] [--out FILE.json]

Needs root (network namespaces, see `crdtd.lab`) and, for the etcd half, the Debian
packages etcd-server (``etcd``); matplotlib draws the charts when it is importable.
Writes bench/results/lan_compare.json and bench/results/lan_compare_*.png by default.
Traffic stays inside the lab's namespaces: etcd listens on the nodes' lab addresses,
its clients run inside the namespaces.

crdtd (daemons with ``sync.interval_s: 0``, so only the bench's syncs run barriers):

- ``add`` latency and cluster-wide throughput, one client per node on a persistent
  connection, each add acknowledged (= on that node's disk), for ``--measure-s``:
  unpipelined (one request at a time) and pipelined (``--window`` requests in flight);
- replication lag: an add on one node (rotating) until every other node's ``get`` shows
  it (polled on persistent connections), counted from the moment the add was sent, at
  0 %, 10 % and 30 % UDP loss on arrival at every node (iptables statistic rules);
- barriers: ``sync`` on one node while a writer adds on another: the sync's wall time,
  its ``duration_ms`` and the writer's worst add latency while it ran (the freeze);
- 1|2 partition: writers unpaced on every node for ``--partition-s``; adds acked on the
  minority side (one node) and on the majority side.

etcd (one member per namespace, a static initial cluster, data under the lab's temp
dir): a counter incremented by compare-and-swap transactions (range, then a txn whose
compare is the key's mod_revision) through etcd's JSON gRPC gateway, one client per
node against its local member, all on the same key: increments/s and latency (from the
first range to the successful txn, retries included), then the same partition.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import socket
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from crdtd.control.client import Client, DaemonUnreachable  # noqa: E402
from crdtd.control.protocol import ControlError, encode_request  # noqa: E402
from crdtd.lab import Lab, Node, unavailable_reason  # noqa: E402

LOSSES = (0.0, 0.1, 0.3)
ETCD_CLIENT_PORT = 2379
ETCD_PEER_PORT = 2380


def run_together(
    start: threading.Barrier, jobs: list[tuple[Callable[..., None], tuple[Any, ...]]]
) -> float:
    """Run each job in its own thread; they and we meet at *start*, so every job begins
    at once. Return the seconds from that start until the last job ended."""
    threads = [threading.Thread(target=target, args=args) for target, args in jobs]
    for thread in threads:
        thread.start()
    start.wait()
    began = time.monotonic()
    for thread in threads:
        thread.join()
    return time.monotonic() - began


def pct(values: list[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(q / 100 * (len(ordered) - 1))))
    return ordered[index]


def ms(value: float | None) -> float | None:
    return None if value is None else round(value * 1000, 2)


# --- crdtd ------------------------------------------------------------------------------


def unpipelined(nodes: list[Node], duration_s: float, variable: str) -> dict[str, Any]:
    """One client per node, one add at a time, for *duration_s*."""
    latencies: list[list[float]] = [[] for _ in nodes]
    errors = [0] * len(nodes)
    start = threading.Barrier(len(nodes) + 1)

    def writer(i: int, node: Node) -> None:
        with Client(node.socket, timeout_s=15) as client:
            client.call("status")
            start.wait()
            deadline = time.monotonic() + duration_s
            while time.monotonic() < deadline:
                t0 = time.perf_counter()
                try:
                    client.call("add", {"variable": variable, "delta": 1})
                except (DaemonUnreachable, ControlError):
                    errors[i] += 1
                    continue
                latencies[i].append(time.perf_counter() - t0)

    elapsed = run_together(start, [(writer, (i, n)) for i, n in enumerate(nodes)])
    flat = [x for per in latencies for x in per]
    return {
        "adds": len(flat),
        "errors": sum(errors),
        "elapsed_s": round(elapsed, 2),
        "per_s": round(len(flat) / elapsed, 1),
        "p50_ms": ms(pct(flat, 50)),
        "p99_ms": ms(pct(flat, 99)),
        "max_ms": ms(max(flat, default=None)),
        "latencies_ms": [round(x * 1000, 3) for x in flat],
    }


def pipelined(nodes: list[Node], duration_s: float, window: int, variable: str) -> dict[str, Any]:
    """One connection per node keeping *window* adds in flight, for *duration_s*."""
    latencies: list[list[float]] = [[] for _ in nodes]
    failures = [0] * len(nodes)
    start = threading.Barrier(len(nodes) + 1)

    def writer(i: int, node: Node) -> None:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.connect(str(node.socket))
            sock.settimeout(30)
            sent_at: dict[int, float] = {}
            next_id = 1
            buffer = b""
            start.wait()
            deadline = time.monotonic() + duration_s
            while True:
                sending = time.monotonic() < deadline
                if not sending and not sent_at:
                    break
                batch = []
                while sending and len(sent_at) < window:
                    batch.append(encode_request(next_id, "add", {"variable": variable, "delta": 1}))
                    sent_at[next_id] = time.perf_counter()
                    next_id += 1
                if batch:
                    sock.sendall(b"".join(batch))
                buffer += sock.recv(1 << 20)
                now = time.perf_counter()
                *lines, buffer = buffer.split(b"\n")
                for line in lines:
                    answer = json.loads(line)
                    began = sent_at.pop(answer["id"], None)
                    if began is None:
                        continue
                    if answer.get("ok"):
                        latencies[i].append(now - began)
                    else:
                        failures[i] += 1

    elapsed = run_together(start, [(writer, (i, n)) for i, n in enumerate(nodes)])
    flat = [x for per in latencies for x in per]
    return {
        "window": window,
        "adds": len(flat),
        "errors": sum(failures),
        "elapsed_s": round(elapsed, 2),
        "per_s": round(len(flat) / elapsed, 1),
        "p50_ms": ms(pct(flat, 50)),
        "p99_ms": ms(pct(flat, 99)),
        "latencies_ms": [round(x * 1000, 3) for x in flat],
    }


def replication_lag(
    nodes: Sequence[Any], probes: int, budget_s: float, timeout_s: float, variable: str
) -> dict[str, Any]:
    """Adds on rotating *nodes* (anything with a ``name`` and a control ``socket``: the
    lab's nodes, bench/peers.py's loopback daemons); for each, the time until every
    other node shows it."""
    clients = {node.name: Client(node.socket, timeout_s=15) for node in nodes}
    lags: list[float] = []
    timeouts = 0
    t_end = time.monotonic() + budget_s
    try:
        for k in range(probes):
            if k >= 5 and time.monotonic() > t_end:
                break
            origin = nodes[k % len(nodes)]
            others = [node for node in nodes if node is not origin]
            t0 = time.perf_counter()
            value = clients[origin.name].call("add", {"variable": variable, "delta": 1})["value"]
            pending = {node.name for node in others}
            while pending:
                for name in list(pending):
                    try:
                        seen = clients[name].call("get", {"variable": variable})["value"]
                    except ControlError as error:
                        if error.code != "not_found":
                            raise
                        seen = None
                    if seen is not None and seen >= value:
                        pending.discard(name)
                if not pending:
                    lags.append(time.perf_counter() - t0)
                    break
                if time.perf_counter() - t0 > timeout_s:
                    timeouts += 1
                    break
                time.sleep(0.001)
            time.sleep(0.02)
    finally:
        for client in clients.values():
            client.close()
    return {
        "probes": len(lags) + timeouts,
        "timeouts": timeouts,
        "p50_ms": ms(pct(lags, 50)),
        "p99_ms": ms(pct(lags, 99)),
        "max_ms": ms(max(lags, default=None)),
        "lags_ms": [round(x * 1000, 3) for x in lags],
    }


def barriers(lab: Lab, count: int) -> dict[str, Any]:
    """``sync`` on the first node while a writer adds on the second, *count* times."""
    nodes = lab.running()
    syncer, writer_node = nodes[0], nodes[1 % len(nodes)]
    samples: list[tuple[float, float]] = []  # (start, end) of each acked add
    stop = threading.Event()

    def writer() -> None:
        with Client(writer_node.socket, timeout_s=15) as client:
            while not stop.is_set():
                t0 = time.perf_counter()
                try:
                    client.call("add", {"variable": "barrier", "delta": 1})
                except (DaemonUnreachable, ControlError):
                    continue
                samples.append((t0, time.perf_counter()))
                time.sleep(0.002)

    thread = threading.Thread(target=writer)
    thread.start()
    runs = []
    try:
        time.sleep(0.5)
        with Client(syncer.socket, timeout_s=60) as client:
            for _ in range(count):
                t0 = time.perf_counter()
                result = client.call("sync")
                t1 = time.perf_counter()
                time.sleep(0.3)  # the writer's add that straddles the end completes
                overlapping = [b - a for a, b in list(samples) if b >= t0 and a <= t1]
                runs.append(
                    {
                        "result": result["result"],
                        "wall_ms": round((t1 - t0) * 1000, 1),
                        "duration_ms": result["duration_ms"],
                        "writer_max_ms": ms(max(overlapping, default=None)),
                        "writer_adds_during": len(overlapping),
                    }
                )
                time.sleep(0.5)
    finally:
        stop.set()
        thread.join()
    baseline = [b - a for a, b in samples]

    def median(key: str) -> float | None:
        values = [run[key] for run in runs if run[key] is not None]
        return round(statistics.median(values), 1) if values else None

    return {
        "runs": runs,
        "wall_ms": median("wall_ms"),
        "duration_ms": median("duration_ms"),
        "writer_max_ms": median("writer_max_ms"),
        "writer_p50_ms_overall": ms(pct(baseline, 50)),
    }


def crdtd_partition_sides(lab: Lab, duration_s: float) -> dict[str, Any]:
    nodes = lab.running()
    minority, majority = nodes[:1], nodes[1:]
    counts = {node.name: 0 for node in nodes}
    errors = {node.name: 0 for node in nodes}
    start = threading.Barrier(len(nodes) + 1)

    def writer(node: Node) -> None:
        with Client(node.socket, timeout_s=15) as client:
            client.call("status")
            start.wait()
            deadline = time.monotonic() + duration_s
            while time.monotonic() < deadline:
                try:
                    client.call("add", {"variable": "split", "delta": 1})
                except (DaemonUnreachable, ControlError):
                    errors[node.name] += 1
                    continue
                counts[node.name] += 1

    lab.partition(minority, majority)
    try:
        run_together(start, [(writer, (node,)) for node in nodes])
    finally:
        lab.heal()
    return {
        "duration_s": duration_s,
        "minority_nodes": [n.name for n in minority],
        "minority_accepted": sum(counts[n.name] for n in minority),
        "majority_accepted": sum(counts[n.name] for n in majority),
        "errors": errors,
    }


# --- etcd -------------------------------------------------------------------------------

# Runs inside a node's namespace: CAS increments of one key through the JSON gateway on
# one persistent HTTP/1.1 connection, until a deadline; prints a JSON summary.
ETCD_CLIENT = r"""
import base64, http.client, json, sys, time
host, port, key = sys.argv[1], int(sys.argv[2]), sys.argv[3]
duration, timeout = float(sys.argv[4]), float(sys.argv[5])
k64 = base64.b64encode(key.encode()).decode()
conn = None
def post(path, body):
    global conn
    if conn is None:
        conn = http.client.HTTPConnection(host, port, timeout=timeout)
    try:
        conn.request("POST", path, json.dumps(body), {"Content-Type": "application/json"})
        resp = conn.getresponse()
        data = resp.read()
    except Exception:
        conn.close(); conn = None
        raise
    out = json.loads(data)
    if resp.status != 200 or "error" in out or "code" in out and "header" not in out:
        raise RuntimeError(str(out)[:200])
    return out
def parse(kvs):
    if not kvs:
        return 0, 0
    kv = kvs[0]
    return int(base64.b64decode(kv.get("value", "")).decode() or 0), int(kv.get("mod_revision", 0))
lat, retries, errors, first_error = [], 0, 0, None
deadline = time.monotonic() + duration
while time.monotonic() < deadline:
    t0 = time.perf_counter()
    try:
        value, rev = parse(post("/v3/kv/range", {"key": k64}).get("kvs"))
        while True:
            new = base64.b64encode(str(value + 1).encode()).decode()
            compare = {"key": k64, "result": "EQUAL", "target": "MOD", "mod_revision": str(rev)}
            txn = {"compare": [compare],
                   "success": [{"request_put": {"key": k64, "value": new}}],
                   "failure": [{"request_range": {"key": k64}}]}
            out = post("/v3/kv/txn", txn)
            if out.get("succeeded"):
                lat.append(time.perf_counter() - t0)
                break
            retries += 1
            value, rev = parse(out["responses"][0]["response_range"].get("kvs"))
            if time.monotonic() > deadline:
                break
    except Exception as error:
        errors += 1
        first_error = first_error or repr(error)[:300]
        time.sleep(0.05)
summary = {"latencies": lat, "retries": retries, "errors": errors, "first_error": first_error}
print(json.dumps(summary))
"""


class Etcd:
    """One etcd member per node namespace, started with ``ip netns exec``."""

    def __init__(self, lab: Lab, binary: str) -> None:
        self.lab = lab
        self.binary = binary
        self.procs: dict[str, subprocess.Popen[bytes]] = {}
        self.root = lab.directory / "etcd"

    def start(self, timeout_s: float = 30.0) -> float:
        nodes = self.lab.running()
        cluster = ",".join(f"{n.name}=http://{n.address}:{ETCD_PEER_PORT}" for n in nodes)
        began = time.monotonic()
        for node in nodes:
            data = self.root / node.name
            data.mkdir(parents=True, exist_ok=True)
            log = open(self.root / f"{node.name}.log", "ab")  # noqa: SIM115
            client_url = f"http://{node.address}:{ETCD_CLIENT_PORT}"
            peer_url = f"http://{node.address}:{ETCD_PEER_PORT}"
            self.procs[node.name] = node.popen(
                [
                    self.binary,
                    "--name",
                    node.name,
                    "--data-dir",
                    str(data),
                    "--listen-client-urls",
                    client_url,
                    "--advertise-client-urls",
                    client_url,
                    "--listen-peer-urls",
                    peer_url,
                    "--initial-advertise-peer-urls",
                    peer_url,
                    "--initial-cluster",
                    cluster,
                    "--initial-cluster-state",
                    "new",
                    "--initial-cluster-token",
                    f"crdtlab-{self.lab.run_id}",
                    "--listen-metrics-urls",
                    f"http://{node.address}:2381",
                ],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
            log.close()
        # Ready when a linearizable range succeeds through every member.
        deadline = time.monotonic() + timeout_s
        for node in nodes:
            while True:
                out = self.run_clients([node], "ready", 0.01, 2.0)[node.name]
                if out.get("errors") == 0:
                    break
                for name, proc in self.procs.items():
                    if proc.poll() is not None:
                        raise RuntimeError(f"etcd on {name} exited: {self.tail(name)}")
                if time.monotonic() > deadline:
                    raise RuntimeError(f"etcd not ready: {out}\n{self.tail(node.name)}")
                time.sleep(0.3)
        return time.monotonic() - began

    def tail(self, name: str) -> str:
        path = self.root / f"{name}.log"
        try:
            return "\n".join(path.read_text(errors="replace").splitlines()[-15:])
        except OSError:
            return "(no log)"

    def run_clients(
        self, nodes: list[Node], key: str, duration_s: float, timeout_s: float
    ) -> dict[str, dict[str, Any]]:
        procs = {
            node.name: node.popen(
                [
                    sys.executable,
                    "-c",
                    ETCD_CLIENT,
                    node.address,
                    str(ETCD_CLIENT_PORT),
                    key,
                    str(duration_s),
                    str(timeout_s),
                ],
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
            )
            for node in nodes
        }
        results = {}
        for name, proc in procs.items():
            out, err = proc.communicate(timeout=duration_s + timeout_s + 30)
            try:
                results[name] = json.loads(out)
            except ValueError:
                results[name] = {"latencies": [], "errors": -1, "first_error": err.decode()[-300:]}
        return results

    def stop(self) -> None:
        for proc in self.procs.values():
            if proc.poll() is None:
                proc.kill()
        for proc in self.procs.values():
            proc.wait()
        self.procs.clear()


def etcd_bench(lab: Lab, binary: str, duration_s: float, partition_s: float) -> dict[str, Any]:
    etcd = Etcd(lab, binary)
    try:
        started_s = etcd.start()
        nodes = lab.running()
        per_node = etcd.run_clients(nodes, "counter", duration_s, 5.0)
        flat = [x for r in per_node.values() for x in r["latencies"]]
        result: dict[str, Any] = {
            "version": subprocess.run(
                [binary, "--version"], capture_output=True, text=True, check=False
            ).stdout.splitlines()[0:1],
            "start_s": round(started_s, 2),
            "increments": len(flat),
            "per_s": round(len(flat) / duration_s, 1),
            "p50_ms": ms(pct(flat, 50)),
            "p99_ms": ms(pct(flat, 99)),
            "max_ms": ms(max(flat, default=None)),
            "cas_retries": sum(r["retries"] for r in per_node.values()),
            "errors": sum(r["errors"] for r in per_node.values()),
            "first_error": next(
                (r["first_error"] for r in per_node.values() if r["first_error"]), None
            ),
            "latencies_ms": [round(x * 1000, 3) for x in flat],
        }
        minority, majority = nodes[:1], nodes[1:]
        lab.partition(minority, majority)
        try:
            split = etcd.run_clients(nodes, "split", partition_s, 2.0)
        finally:
            lab.heal()
        result["partition"] = {
            "duration_s": partition_s,
            "minority_nodes": [n.name for n in minority],
            "minority_accepted": sum(len(split[n.name]["latencies"]) for n in minority),
            "majority_accepted": sum(len(split[n.name]["latencies"]) for n in majority),
            "errors": {name: r["errors"] for name, r in split.items()},
            "minority_first_error": split[minority[0].name]["first_error"],
        }
        return result
    finally:
        etcd.stop()


# --- report -----------------------------------------------------------------------------


def rows_of(result: dict[str, Any]) -> list[tuple[str, Any, Any]]:
    c, e = result["crdtd"], result.get("etcd") or {}
    ep = e.get("partition", {})
    rows: list[tuple[str, Any, Any]] = [
        ("add latency p50 ms (1 client/node)", c["unpipelined"]["p50_ms"], e.get("p50_ms")),
        ("add latency p99 ms (1 client/node)", c["unpipelined"]["p99_ms"], e.get("p99_ms")),
        ("adds/s cluster (1 client/node)", c["unpipelined"]["per_s"], e.get("per_s")),
        (f"adds/s pipelined (window {c['pipelined']['window']})", c["pipelined"]["per_s"], None),
        ("pipelined add latency p50 ms", c["pipelined"]["p50_ms"], None),
        ("pipelined add latency p99 ms", c["pipelined"]["p99_ms"], None),
    ]
    for loss, lag in c["replication_lag"].items():
        rows.append((f"replication lag p50 ms, {loss} loss", lag["p50_ms"], None))
        rows.append((f"replication lag p99 ms, {loss} loss", lag["p99_ms"], None))
    b = c["barrier"]
    rows += [
        ("barrier wall ms (sync)", b["wall_ms"], None),
        ("barrier duration_ms (sync result)", b["duration_ms"], None),
        ("write freeze: writer max add ms", b["writer_max_ms"], None),
        (
            f"1|2 split: minority writes in {c['partition']['duration_s']:g} s",
            c["partition"]["minority_accepted"],
            ep.get("minority_accepted"),
        ),
        (
            f"1|2 split: majority writes in {c['partition']['duration_s']:g} s",
            c["partition"]["majority_accepted"],
            ep.get("majority_accepted"),
        ),
    ]
    return rows


def ratio(a: Any, b: Any) -> str:
    if a is None or b is None:
        return "-"
    if b == 0:
        return "inf" if a else "-"
    return f"{a / b:.2f}"


def table(result: dict[str, Any]) -> str:
    rows = [
        (name, "-" if a is None else str(a), "-" if b is None else str(b), ratio(a, b))
        for name, a, b in rows_of(result)
    ]
    head = ("figure", "crdtd", "etcd", "crdtd/etcd")
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(head)]
    lines = [
        "  ".join(h.ljust(widths[0]) if i == 0 else h.rjust(widths[i]) for i, h in enumerate(head))
    ]
    for row in rows:
        lines.append(
            "  ".join(
                cell.ljust(widths[0]) if i == 0 else cell.rjust(widths[i])
                for i, cell in enumerate(row)
            )
        )
    return "\n".join(lines)


def charts(result: dict[str, Any], directory: Path) -> list[str]:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as error:
        print(f"lan_compare: no charts ({error})", file=sys.stderr)
        return []
    c, e = result["crdtd"], result.get("etcd") or {}
    written = []

    fig, ax = plt.subplots(figsize=(7, 4))
    series = [
        ("crdtd, 1 client/node", c["unpipelined"]["latencies_ms"]),
        (f"crdtd, pipelined window {c['pipelined']['window']}", c["pipelined"]["latencies_ms"]),
        ("etcd CAS txn, 1 client/node", e.get("latencies_ms") or []),
    ]
    for label, values in series:
        if values:
            ordered = sorted(values)
            n = len(ordered)
            ax.plot(ordered, [(i + 1) / n for i in range(n)], label=f"{label} (n={n})")
    ax.set_xscale("log")
    ax.set_xlabel("latency, ms (log)")
    ax.set_ylabel("fraction of writes")
    ax.set_title(f"Write latency CDF, {result['nodes']} nodes")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend()
    path = directory / "lan_compare_latency.png"
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    written.append(path.name)

    fig, ax = plt.subplots(figsize=(7, 4))
    labels = [
        "crdtd\n1 client/node",
        f"crdtd\npipelined {c['pipelined']['window']}",
        "etcd CAS\n1 client/node",
    ]
    values = [c["unpipelined"]["per_s"], c["pipelined"]["per_s"], e.get("per_s") or 0]
    bars = ax.bar(labels, values, color=["tab:blue", "tab:cyan", "tab:orange"])
    ax.bar_label(bars, fmt="%.0f")
    ax.set_ylabel("acknowledged writes / s, whole cluster")
    ax.set_title(f"Write throughput, {result['nodes']} nodes")
    path = directory / "lan_compare_throughput.png"
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    written.append(path.name)

    fig, ax = plt.subplots(figsize=(7, 4))
    lags = c["replication_lag"]
    data = [lag["lags_ms"] or [0] for lag in lags.values()]
    ax.boxplot(data, whis=(1, 99), showfliers=True)
    ax.set_xticks(range(1, len(lags) + 1), list(lags))
    ax.set_yscale("log")
    ax.set_xlabel("UDP loss on arrival, every node")
    ax.set_ylabel("add -> visible on every node, ms (log)")
    ax.set_title("crdtd replication lag under loss (whiskers p1-p99)")
    ax.grid(True, axis="y", which="both", alpha=0.3)
    path = directory / "lan_compare_lag.png"
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    written.append(path.name)
    return written


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--nodes", type=int, default=3)
    parser.add_argument("--measure-s", type=float, default=10.0, help="each throughput run")
    parser.add_argument("--partition-s", type=float, default=10.0)
    parser.add_argument("--window", type=int, default=64)
    parser.add_argument("--lag-probes", type=int, default=40, help="per loss level")
    parser.add_argument("--syncs", type=int, default=3)
    parser.add_argument("--no-etcd", action="store_true")
    parser.add_argument("--etcd", default=shutil.which("etcd") or "/usr/bin/etcd")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "lan_compare.json")
    options = parser.parse_args()
    reason = unavailable_reason()
    if reason:
        print(f"lan_compare: {reason}", file=sys.stderr)
        return 1
    if options.nodes < 3:
        parser.error("--nodes: at least 3 (a 1|2 partition)")

    def log(message: str) -> None:
        print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)

    result: dict[str, Any] = {
        "benchmark": "lan_compare",
        "nodes": options.nodes,
        "machine": {
            "cpus": os.cpu_count(),
            "kernel": platform.release(),
            "python": platform.python_version(),
        },
        "measure_s": options.measure_s,
        "failures": [],
    }
    crdtd: dict[str, Any] = {}
    result["crdtd"] = crdtd
    with Lab(options.nodes, config={"sync": {"interval_s": 0}}) as lab:
        log(f"mesh in {lab.wait_mesh(timeout_s=60):.1f} s")
        nodes = lab.running()
        crdtd["unpipelined"] = unpipelined(nodes, options.measure_s, "u")
        log(f"unpipelined: {crdtd['unpipelined']['per_s']}/s")
        crdtd["pipelined"] = pipelined(nodes, options.measure_s, options.window, "p")
        log(f"pipelined: {crdtd['pipelined']['per_s']}/s")
        crdtd["replication_lag"] = {}
        for loss in LOSSES:
            lab.loss(loss)
            try:
                lag = replication_lag(
                    lab.running(), options.lag_probes, options.measure_s, 15.0, "lag"
                )
            finally:
                lab.loss(0)
            crdtd["replication_lag"][f"{loss:.0%}"] = lag
            log(f"lag at {loss:.0%} loss: p50 {lag['p50_ms']} ms, p99 {lag['p99_ms']} ms")
        crdtd["barrier"] = barriers(lab, options.syncs)
        log(f"barrier: {crdtd['barrier']['runs']}")
        crdtd["partition"] = crdtd_partition_sides(lab, options.partition_s)
        log(f"partition: {crdtd['partition']}")
        if crashed := lab.crashed():
            result["failures"].append(f"crdtd crashed on {[n.name for n in crashed]}")
        if not options.no_etcd:
            if not shutil.which(options.etcd):
                # The comparison installs its own etcd, from the machine's apt sources.
                subprocess.run(["apt-get", "update", "-qq"], check=False)
                subprocess.run(
                    ["apt-get", "install", "-y", "-qq", "etcd-server", "etcd-client"],
                    check=False,
                    env={**os.environ, "DEBIAN_FRONTEND": "noninteractive"},
                )
            if not shutil.which(options.etcd):
                result["failures"].append(f"etcd: {options.etcd} not found")
            else:
                try:
                    result["etcd"] = etcd_bench(
                        lab, options.etcd, options.measure_s, options.partition_s
                    )
                    etcd = result["etcd"]
                    log(f"etcd: {etcd['per_s']}/s, partition {etcd['partition']}")
                except Exception as error:
                    result["failures"].append(f"etcd: {error}")
                    log(f"etcd failed: {error}")
    print(table(result))
    options.out.parent.mkdir(parents=True, exist_ok=True)
    try:
        result["charts"] = charts(result, options.out.parent)
    except Exception as error:
        result["charts"] = []
        result["failures"].append(f"charts: {error!r}")
    result["table"] = [list(row) for row in rows_of(result)]
    options.out.write_text(json.dumps(result, indent=1) + "\n")
    if result["failures"]:
        print("failures: " + "; ".join(result["failures"]))
    print(f"wrote {options.out}" + "".join(f", {name}" for name in result["charts"]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
