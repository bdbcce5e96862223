"""Where one daemon's time goes under durable adds: a py-spy profile, summarised.

    .venv/bin/python bench/profile_add.py [--connections 64] [--window 1] [--seconds 10]
                                          [--out FILE]

Starts 3 daemons on loopback (as bench/peers.py does), drives the load of
bench/loadgen.py against all three, and samples node n0 with py-spy (``pip install
py-spy`` into .venv; it needs ptrace, so run as root or with ``ptrace_scope`` 0). It
prints the functions with the largest share of the samples, inclusive (the function or
anything it called) and own (the function itself), and the share of a few layers
(asyncio's loop, the control server, the driver, the core, SQLite), then writes JSON.
By default a sample is the owner thread's wall time, fdatasync included; ``--gil``
samples only while Python runs.
"""

from __future__ import annotations

import argparse
import collections
import re
import shutil
import subprocess
import sys
import tempfile
import threading
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.peers import CLUSTER_CONFIG, generate  # noqa: E402
from bench.report import table, write_result  # noqa: E402
from tests.daemon.loopback import Cluster  # noqa: E402

LAYERS = (
    ("asyncio event loop", ("asyncio/",)),
    ("control server and handler", ("crdtd/control/", "crdtd/daemon/handler.py")),
    ("driver (net)", ("crdtd/net/",)),
    ("core (protocol)", ("crdtd/core/",)),
    ("store (SQLite)", ("crdtd/store/",)),
)
"""A sample counts for a layer when any frame of its stack is in one of these files."""


def frames(line: str) -> tuple[list[str], int]:
    """One line of py-spy's raw output, ``frame;frame;...;frame count``, each frame
    ``function (file:line)`` made ``function (file)``: shares per function, not line."""
    stack, _, count = line.rpartition(" ")
    return [re.sub(r":\d+\)$", ")", frame) for frame in stack.split(";")], int(count)


Shares = list[tuple[str, float]]


def summarise(raw: Path, top: int) -> tuple[int, dict[str, Shares]]:
    """The samples taken, and the top shares: per layer, inclusive and own."""
    inclusive: collections.Counter[str] = collections.Counter()
    own: collections.Counter[str] = collections.Counter()
    layers: collections.Counter[str] = collections.Counter()
    total = 0
    for line in raw.read_text().splitlines():
        if not line.strip():
            continue
        stack, count = frames(line)
        total += count
        own[stack[-1]] += count
        for name in set(stack):
            inclusive[name] += count
        for layer, paths in LAYERS:
            if any(path in frame for frame in stack for path in paths):
                layers[layer] += count

    def shares(counter: collections.Counter[str]) -> Shares:
        return [(name, count / total) for name, count in counter.most_common(top)]

    return total, {
        "layers": [(layer, layers[layer] / max(total, 1)) for layer, _ in LAYERS],
        "inclusive": shares(inclusive),
        "own": shares(own),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--connections", type=int, default=64)
    parser.add_argument("--window", type=int, default=1)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--top", type=int, default=15)
    parser.add_argument(
        "--gil",
        action="store_true",
        help="sample only while the GIL is held (CPU in Python), not the wall time a "
        "commit's fdatasync holds the owner task",
    )
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "profile.json")
    options = parser.parse_args()
    spy = shutil.which("py-spy") or str(Path(sys.executable).with_name("py-spy"))
    if not Path(spy).exists():
        print("profile_add: py-spy is missing: .venv/bin/pip install py-spy", file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory(prefix="crdtd-profile-") as temp:
        root = Path(temp)
        cluster = Cluster.start(root, 3, extra_config=CLUSTER_CONFIG, log_level="warning")
        try:
            for daemon in cluster.daemons:
                daemon.ctl("create", "x", check=False)
            cluster.wait_agree("x", 0)
            target = cluster.daemons[0].process
            assert target is not None
            raw = root / "n0.raw"
            record = [
                spy, "record", "--pid", str(target.pid), "--format", "raw", "--rate", "250",
                "--duration", str(int(options.seconds)), "--output", str(raw), "--nonblocking",
                *(["--gil"] if options.gil else []),
            ]  # fmt: skip
            paths = [str(d.socket) for d in cluster.daemons]
            load = threading.Thread(
                target=generate,
                args=("crdtd", paths, options.connections, options.window, options.seconds + 2),
            )
            load.start()
            subprocess.run(record, check=True, capture_output=True, timeout=options.seconds + 60)
            load.join()
        finally:
            cluster.stop()
        samples, result = summarise(raw, options.top)
    load_name = f"{options.connections} x {options.window}" + (" (GIL held)" if options.gil else "")
    print(f"n0 under {load_name} adds on 3 daemons: {samples} samples")
    rows = [
        {"kind": kind, "where": name, "share": f"{share:.1%}"}
        for kind, shares in result.items()
        for name, share in shares
    ]
    print(table(rows, [("kind", "kind"), ("where", "where"), ("share", "share of samples")]))
    write_result(options.out, "profile_add", rows, load=load_name, samples=samples)
    return 0


if __name__ == "__main__":
    sys.exit(main())
