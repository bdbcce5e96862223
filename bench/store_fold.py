"""What a fold costs the store: the append that raises the base, and the slices that
delete the folded ops afterwards (`Store.prune`); a table and JSON.

    .venv/bin/python bench/store_fold.py [--ops 1000000] [--out FILE.json]

The owner task waits for every store call, so the longest single call is what a
request may wait behind. Runs on a real SQLite database in a temporary directory
(``synchronous=FULL``: every call's commit is fsynced).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.report import table, write_result  # noqa: E402
from crdtd.core.ids import Origin  # noqa: E402
from crdtd.core.records import BaseFolded, OpRecorded  # noqa: E402
from crdtd.store.sqlite import Store  # noqa: E402

COLUMNS = (
    ("ops", "ops"),
    ("fold_append_ms", "fold append ms"),
    ("slices", "prune slices"),
    ("slice_max_ms", "slice max ms"),
    ("slice_avg_ms", "slice avg ms"),
    ("prune_total_ms", "prune total ms"),
)
BATCH = 50_000


def fold(state_dir: Path, ops: int) -> dict[str, object]:
    store = Store.open(state_dir, "n1", lambda: "n1")
    try:
        origin = Origin("n2", 5)
        for start in range(1, ops + 1, BATCH):
            end = min(ops, start + BATCH - 1)
            store.append([OpRecorded("x", origin, n, 1) for n in range(start, end + 1)])
        began = time.perf_counter()
        store.append([BaseFolded("x", origin, ops, ops)])
        fold_s = time.perf_counter() - began
        slices = []
        while store.unpruned:
            began = time.perf_counter()
            store.prune()
            slices.append(time.perf_counter() - began)
    finally:
        store.close()
    return {
        "ops": ops,
        "fold_append_ms": round(fold_s * 1000, 1),
        "slices": len(slices),
        "slice_max_ms": round(max(slices, default=0) * 1000, 1),
        "slice_avg_ms": round(sum(slices) / max(1, len(slices)) * 1000, 1),
        "prune_total_ms": round(sum(slices) * 1000, 1),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--ops", type=int, default=1_000_000)
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "store_fold.json")
    options = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="crdtd-fold-") as tmp:
        rows = [fold(Path(tmp) / "state", options.ops)]
    print(table(rows, COLUMNS))
    write_result(options.out, "store_fold", rows, ops=options.ops)
    return 0


if __name__ == "__main__":
    sys.exit(main())
