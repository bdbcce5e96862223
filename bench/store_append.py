"""What `Store.append` of ops costs: ops/s for batches made of runs of consecutive nonces
of one variable and origin (runs of 1, 10 and 1000 ops), and what the database holds per
op afterwards; a table and JSON.

    .venv/bin/python bench/store_append.py [--ops 200000] [--batch 10000] [--runs 1,10,1000]
        [--repeat 3] [--out FILE.json]

Each batch is one `Store.append` (one transaction, one fsync: ``synchronous=FULL``), on a
real SQLite database in a temporary directory; a run of 1 is every op of its own
variable, as from many clients, a run of 1000 is a populate step of one variable. Each
row is the fastest of ``--repeat`` runs (on a shared machine the others are noise); CPU
us/op is this process's CPU time (the rest is waiting for fsync).
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
from crdtd.core.records import OpRecorded, Record  # noqa: E402
from crdtd.store.sqlite import DB_NAME, Store  # noqa: E402

COLUMNS = (
    ("run", "run"),
    ("ops", "ops"),
    ("batches", "batches"),
    ("ops_per_s", "ops/s"),
    ("us_per_op", "us/op"),
    ("cpu_us_per_op", "CPU us/op"),
    ("batch_max_ms", "batch max ms"),
    ("load_ms", "load ms"),
    ("db_bytes_per_op", "db bytes/op"),
)


def batches(ops: int, batch: int, run: int) -> list[list[Record]]:
    """*ops* ops in batches of *batch*, each made of runs of *run* consecutive nonces, a
    variable per run position so that runs of one variable never touch."""
    origin = Origin("n2", 5)
    out: list[list[Record]] = []
    nonces: dict[str, int] = {}
    made = 0
    while made < ops:
        records: list[Record] = []
        while len(records) < batch and made < ops:
            variable = f"v{(made // run) % max(1, batch // run)}"
            for _ in range(min(run, ops - made)):
                nonce = nonces[variable] = nonces.get(variable, 0) + 1
                records.append(OpRecorded(variable, origin, nonce, made % 7 - 3))
                made += 1
        out.append(records)
    return out


def measure(state_dir: Path, ops: int, batch: int, run: int) -> dict[str, object]:
    work = batches(ops, batch, run)
    store = Store.open(state_dir, "n1", lambda: "n1")
    try:
        times = []
        cpu_began = time.process_time()
        for records in work:
            began = time.perf_counter()
            store.append(records)
            times.append(time.perf_counter() - began)
        cpu_s = time.process_time() - cpu_began
        began = time.perf_counter()
        loaded = store.load()
        load_s = time.perf_counter() - began
        assert sum(isinstance(record, OpRecorded) for record in loaded) == ops, "lost ops"
    finally:
        store.close()  # checkpoints the WAL into the database file
    total = sum(times)
    return {
        "run": run,
        "ops": ops,
        "batches": len(work),
        "ops_per_s": round(ops / total),
        "us_per_op": round(total / ops * 1e6, 2),
        "cpu_us_per_op": round(cpu_s / ops * 1e6, 2),
        "batch_max_ms": round(max(times) * 1000, 1),
        "load_ms": round(load_s * 1000, 1),
        "db_bytes_per_op": round((state_dir / DB_NAME).stat().st_size / ops, 1),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--ops", type=int, default=200_000)
    parser.add_argument("--batch", type=int, default=10_000)
    parser.add_argument("--runs", default="1,10,1000", help="run lengths, comma-separated")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument(
        "--out", type=Path, default=ROOT / "bench" / "results" / "store_append.json"
    )
    options = parser.parse_args()
    rows = []
    for run in (int(part) for part in options.runs.split(",")):
        tries = []
        for _ in range(options.repeat):
            with tempfile.TemporaryDirectory(prefix="crdtd-append-") as tmp:
                tries.append(measure(Path(tmp) / "state", options.ops, options.batch, run))
        rows.append(max(tries, key=lambda row: int(str(row["ops_per_s"]))))
    print(table(rows, COLUMNS))
    write_result(
        options.out,
        "store_append",
        rows,
        ops=options.ops,
        batch=options.batch,
        repeat=options.repeat,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
