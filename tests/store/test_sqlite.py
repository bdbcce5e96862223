"""The SQLite store, on real databases in tmp_path: durable, idempotent, and refusing."""

from __future__ import annotations

import contextlib
import itertools
import os
import signal
import sqlite3
import struct
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Generic, TypeVar

import pytest

from crdtd.core.ids import INT64_MAX, INT64_MIN, UINT64_MAX, Origin
from crdtd.core.records import (
    AddNamed,
    BaseFolded,
    Buried,
    EpochAdvanced,
    IncarnationStarted,
    OpRecorded,
    OpsRecorded,
    Record,
    ReplayFloor,
    VariableCreated,
)
from crdtd.store.sqlite import (
    APPLICATION_ID,
    DB_NAME,
    RUN_MAX,
    SCHEMA_VERSION,
    Store,
    StoreError,
)

REPO = Path(__file__).resolve().parents[2]
A = Origin("a", 1)
B = Origin("b", 7)
T = TypeVar("T")


class Factory(Generic[T]):
    """Hands out make(1), make(2), ... and counts the calls, to see when one was drawn."""

    def __init__(self, make: Callable[[int], T]) -> None:
        self._numbers = itertools.count(1)
        self._make = make
        self.calls = 0

    def __call__(self) -> T:
        self.calls += 1
        return self._make(next(self._numbers))


def open_store(
    state_dir: Path, node_id: str | None = None, node_ids: Callable[[], str] | None = None
) -> Store:
    return Store.open(state_dir, node_id, node_ids or Factory(lambda n: f"auto-{n}"))


@pytest.fixture
def state_dir(tmp_path: Path) -> Path:
    return tmp_path / "state"


@pytest.fixture
def store(state_dir: Path) -> Iterator[Store]:
    store = open_store(state_dir, "n1")
    yield store
    store.close()


def reopened(store: Store, state_dir: Path) -> list[Record]:
    store.close()
    again = open_store(state_dir, store.node_id)
    try:
        return again.load()
    finally:
        again.close()


def one_op_a_row(connection: sqlite3.Connection) -> None:
    """Undo schema 6, the first step back to any older version: an op per row again."""
    connection.execute(
        "CREATE TABLE ops (variable TEXT NOT NULL, node_id TEXT NOT NULL,"
        " incarnation INTEGER NOT NULL, nonce INTEGER NOT NULL, delta INTEGER NOT NULL,"
        " PRIMARY KEY (variable, node_id, incarnation, nonce)) WITHOUT ROWID"
    )
    runs = connection.execute(
        "SELECT variable, node_id, incarnation, first_nonce, ops, deltas FROM op_runs"
    ).fetchall()
    for variable, node_id, incarnation, first, ops, deltas in runs:
        values = (deltas,) if ops == 1 else struct.unpack(f">{ops}q", deltas)
        connection.executemany(
            "INSERT INTO ops VALUES (?, ?, ?, ?, ?)",
            [(variable, node_id, incarnation, first + k, delta) for k, delta in enumerate(values)],
        )
    connection.execute("DROP TABLE op_runs")


def drop_graves(connection: sqlite3.Connection) -> None:
    """Undo schemas 6 and 5, the first steps back to any older version."""
    one_op_a_row(connection)
    connection.execute("DROP TABLE grave_marks")
    connection.execute("DROP TABLE graves")


# roundtrip and record semantics ---------------------------------------------------------


def test_every_record_kind_survives_reopen_in_compacted_order(
    store: Store, state_dir: Path
) -> None:
    store.append(
        [
            EpochAdvanced(3),
            OpRecorded("y", B, 2, -5),
            VariableCreated("y"),
            OpRecorded("x", A, 9, INT64_MAX),
            BaseFolded("x", A, 4, 10),
            OpRecorded("x", A, 5, INT64_MIN),
            VariableCreated("x"),
            BaseFolded("y", Origin("c", UINT64_MAX), UINT64_MAX, 2**70),
        ]
    )
    assert reopened(store, state_dir) == [
        VariableCreated("x"),
        VariableCreated("y"),
        BaseFolded("x", A, 4, 10),
        BaseFolded("y", Origin("c", UINT64_MAX), UINT64_MAX, 2**70),
        OpRecorded("x", A, 5, INT64_MIN),
        OpRecorded("x", A, 9, INT64_MAX),
        OpRecorded("y", B, 2, -5),
        EpochAdvanced(3),
    ]


def test_graves_survive_reopen_whole_empty_or_replaced_by_a_larger_one(
    store: Store, state_dir: Path
) -> None:
    store.append(
        [
            VariableCreated("x"),
            Buried("x", ((A, 2, 7),)),
            Buried("e", ()),  # deleted before any op: a grave with nothing in it
            Buried("y", ((B, 1, -1),)),
        ]
    )
    store.append([Buried("y", ((A, 3, 2**70), (B, UINT64_MAX, INT64_MIN - 1)))])
    assert reopened(store, state_dir) == [
        VariableCreated("x"),
        Buried("e", ()),
        Buried("x", ((A, 2, 7),)),
        Buried("y", ((A, 3, 2**70), (B, UINT64_MAX, INT64_MIN - 1))),
    ]


def test_ops_load_ordered_by_variable_node_incarnation_nonce(store: Store) -> None:
    ops = [
        OpRecorded(variable, Origin(node, incarnation), nonce, 1)
        for variable in ("v2", "v1")
        for node in ("b", "a")
        for incarnation in (2**63 + 1, 2)  # across the signed boundary of the encoding
        for nonce in (10, 9, 2**64 - 1)
    ]
    store.append(ops)
    assert store.load() == sorted(
        ops, key=lambda op: (op.variable, op.origin.node_id, op.origin.incarnation, op.nonce)
    )


def test_a_fresh_store_loads_nothing_and_no_epoch(store: Store) -> None:
    assert store.load() == []


def test_appending_the_same_records_twice_changes_nothing(store: Store) -> None:
    batch: list[Record] = [
        VariableCreated("x"),
        OpRecorded("x", A, 1, 5),
        OpRecorded("x", A, 2, 6),
        BaseFolded("x", B, 3, 30),
        EpochAdvanced(2),
    ]
    store.append(batch)
    once = store.load()
    store.append(batch)
    store.append(batch[::-1])
    assert store.load() == once


def test_an_op_keeps_its_first_delta(store: Store) -> None:
    store.append([OpRecorded("x", A, 1, 5)])
    store.append([OpRecorded("x", A, 1, 99)])
    assert store.load() == [OpRecorded("x", A, 1, 5)]


def test_a_base_deletes_the_ops_it_covers_and_only_those(store: Store) -> None:
    store.append([OpRecorded("x", A, nonce, nonce) for nonce in range(1, 6)])
    store.append([OpRecorded("x", B, 1, 1), OpRecorded("y", A, 1, 1)])
    store.append([BaseFolded("x", A, 3, 6)])
    assert store.load() == [
        BaseFolded("x", A, 3, 6),
        OpRecorded("x", A, 4, 4),
        OpRecorded("x", A, 5, 5),
        OpRecorded("x", B, 1, 1),
        OpRecorded("y", A, 1, 1),
    ]


def runs_on_disk(state_dir: Path) -> list[tuple[str, str, int, int]]:
    """(variable, node id, first nonce, last nonce) of each row of ``op_runs``."""
    with contextlib.closing(sqlite3.connect(state_dir / DB_NAME)) as connection:
        rows = connection.execute(
            "SELECT variable, node_id, first_nonce, first_nonce + (ops - 1) FROM op_runs"
            " ORDER BY variable, node_id, incarnation, first_nonce"
        ).fetchall()
    return [(variable, node, first + 2**63, last + 2**63) for variable, node, first, last in rows]


def ops_on_disk(state_dir: Path) -> int:
    return sum(last - first + 1 for _, _, first, last in runs_on_disk(state_dir))


def test_folded_ops_are_deleted_a_slice_at_a_time_and_hidden_until_then(
    state_dir: Path,
) -> None:
    store = open_store(state_dir)
    for nonce in range(1, 11):  # an append each: a row each
        store.append([OpRecorded("x", A, nonce, 1)])
    store.append([BaseFolded("x", A, 7, 7), BaseFolded("y", B, 1, 0)])
    assert store.unpruned
    assert store.prune(limit=3)
    assert ops_on_disk(state_dir) == 7
    assert store.load() == [
        BaseFolded("x", A, 7, 7),
        BaseFolded("y", B, 1, 0),
        *(OpRecorded("x", A, nonce, 1) for nonce in range(8, 11)),
    ]
    store.close()
    store = open_store(state_dir)  # the work left is found again
    assert store.unpruned
    while store.prune(limit=3):
        pass
    assert not store.unpruned
    assert ops_on_disk(state_dir) == 3
    assert store.load()[2:] == [OpRecorded("x", A, nonce, 1) for nonce in range(8, 11)]
    store.close()


def test_an_old_op_at_or_below_the_base_is_ignored(store: Store) -> None:
    store.append([BaseFolded("x", A, 3, 6)])
    store.append([OpRecorded("x", A, 2, 2), OpRecorded("x", A, 3, 3), OpRecorded("x", A, 4, 4)])
    assert store.load() == [BaseFolded("x", A, 3, 6), OpRecorded("x", A, 4, 4)]


def test_an_op_below_a_base_in_the_same_batch_is_deleted(store: Store) -> None:
    store.append([OpRecorded("x", A, 2, 2), BaseFolded("x", A, 3, 6)])
    assert store.load() == [BaseFolded("x", A, 3, 6)]


def test_a_lower_or_equal_base_does_not_replace_a_higher_one(store: Store) -> None:
    store.append([BaseFolded("x", A, 5, 50)])
    store.append([BaseFolded("x", A, 3, 30), BaseFolded("x", A, 5, 999)])
    assert store.load() == [BaseFolded("x", A, 5, 50)]


def test_the_epoch_only_moves_forward(store: Store) -> None:
    store.append([EpochAdvanced(4), EpochAdvanced(2)])
    store.append([EpochAdvanced(3)])
    assert store.load() == [EpochAdvanced(4)]


def test_a_batch_that_fails_midway_leaves_nothing(store: Store) -> None:
    with pytest.raises(ValueError, match="unsigned 64-bit"):
        store.append([VariableCreated("x"), OpRecorded("x", A, -1, 1)])
    assert store.load() == []


def test_an_unknown_record_type_raises(store: Store) -> None:
    with pytest.raises(TypeError, match="not a record"):
        store.append(["VariableCreated x"])  # type: ignore[list-item]


def test_the_store_works_from_another_thread(store: Store) -> None:
    errors: list[BaseException] = []

    def work() -> None:
        try:
            store.append([VariableCreated("x")])
        except BaseException as error:  # handed to the main thread, which fails the test
            errors.append(error)

    worker = threading.Thread(target=work)
    worker.start()
    worker.join(timeout=10)
    assert errors == []
    assert store.load() == [VariableCreated("x")]


# identity -------------------------------------------------------------------------------


def test_the_state_directory_is_created_private(state_dir: Path) -> None:
    open_store(state_dir / "deeper").close()
    assert (state_dir / "deeper").stat().st_mode & 0o777 == 0o700


def test_an_auto_node_id_is_drawn_once_and_kept(state_dir: Path) -> None:
    node_ids = Factory(lambda n: f"auto-{n}")
    first = open_store(state_dir, None, node_ids=node_ids)
    first.close()
    second = open_store(state_dir, None, node_ids=node_ids)
    second.close()
    assert (first.node_id, second.node_id, node_ids.calls) == ("auto-1", "auto-1", 1)


def test_a_configured_node_id_is_used_and_kept(state_dir: Path) -> None:
    open_store(state_dir, "n1").close()
    store = open_store(state_dir, None)
    store.close()
    assert store.node_id == "n1"


def test_a_changed_node_id_is_refused_naming_both(state_dir: Path) -> None:
    open_store(state_dir, "n1").close()
    with pytest.raises(StoreError, match=r"'n1'.*'n2'") as refused:
        open_store(state_dir, "n2")
    assert str(state_dir) in str(refused.value)


def test_the_latest_incarnation_started_is_kept_only_grows_and_a_wipe_forgets_it(
    state_dir: Path,
) -> None:
    def latest() -> list[Record]:
        store = open_store(state_dir, "n1")
        try:
            return [r for r in store.load() if isinstance(r, IncarnationStarted)]
        finally:
            store.close()

    assert latest() == []  # a new state has started none
    for incarnation in (5, 2**64 - 1, 7):  # the largest too, to cover the encoding
        store = open_store(state_dir, "n1")
        store.append([IncarnationStarted(incarnation)])
        store.close()
    assert latest() == [IncarnationStarted(2**64 - 1)]
    for path in state_dir.iterdir():
        path.unlink()
    assert latest() == []


# refusals -------------------------------------------------------------------------------


def test_a_second_open_of_the_same_directory_is_refused(store: Store, state_dir: Path) -> None:
    with pytest.raises(StoreError, match=rf"another crdtd \(pid {os.getpid()}\)"):
        open_store(state_dir, "n1")


def test_the_lock_is_released_on_close(state_dir: Path) -> None:
    open_store(state_dir, "n1").close()
    open_store(state_dir, "n1").close()


def test_closing_twice_is_harmless(state_dir: Path) -> None:
    store = open_store(state_dir, "n1")
    store.close()
    store.close()
    open_store(state_dir, "n1").close()


def test_a_file_that_is_not_sqlite_is_refused_and_left_alone(state_dir: Path) -> None:
    state_dir.mkdir()
    garbage = os.urandom(8192)
    (state_dir / DB_NAME).write_bytes(garbage)
    with pytest.raises(StoreError, match=r"damaged.*move its contents away") as refused:
        open_store(state_dir)
    assert str(state_dir / DB_NAME) in str(refused.value)
    assert (state_dir / DB_NAME).read_bytes() == garbage


def test_a_database_with_damaged_pages_is_refused_and_left_alone(state_dir: Path) -> None:
    store = open_store(state_dir, "n1")
    store.append([OpRecorded("x", A, nonce, nonce) for nonce in range(1, 5000)])
    store.close()
    db = state_dir / DB_NAME
    with db.open("r+b") as file:  # keep page 1 (the header and schema), wreck the rest
        file.seek(4096)
        file.write(b"\xa5" * (db.stat().st_size - 4096))
    damaged = db.read_bytes()
    with pytest.raises(StoreError, match="damaged"):
        open_store(state_dir, "n1")
    assert db.read_bytes() == damaged


def test_a_newer_schema_is_refused(state_dir: Path) -> None:
    open_store(state_dir, "n1").close()
    with sqlite3.connect(state_dir / DB_NAME) as connection:
        connection.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    connection.close()
    newer = SCHEMA_VERSION + 1
    with pytest.raises(StoreError, match=f"schema version {newer} was written by a newer crdtd"):
        open_store(state_dir, "n1")


def test_replay_floors_only_rise_and_come_back_last_by_recency(state_dir: Path) -> None:
    store = open_store(state_dir, "n1")
    store.append([ReplayFloor(A, 10), ReplayFloor(B, UINT64_MAX), EpochAdvanced(1)])
    store.append([ReplayFloor(A, 7)])
    store.append([ReplayFloor(A, 12)])
    store.close()
    store = open_store(state_dir, "n1")
    # The floors come last, the least recently written first (A moved last).
    assert store.load() == [EpochAdvanced(1), ReplayFloor(B, UINT64_MAX), ReplayFloor(A, 12)]
    store.close()


def test_a_version_1_database_is_migrated_and_keeps_its_state(state_dir: Path) -> None:
    store = open_store(state_dir, "n1")
    store.append([VariableCreated("x"), OpRecorded("x", A, 1, 5)])
    store.close()
    with sqlite3.connect(state_dir / DB_NAME) as connection:  # as a crdtd of schema 1 left it
        connection.execute("DROP TABLE replay_floors")
        connection.execute("DROP TABLE named_adds")
        drop_graves(connection)
        connection.execute("PRAGMA user_version = 1")
    connection.close()
    store = open_store(state_dir, "n1")
    store.append([ReplayFloor(A, 3), AddNamed("r1", "x", 1, 1, 10, 7)])
    assert store.load() == [
        VariableCreated("x"),
        OpRecorded("x", A, 1, 5),
        ReplayFloor(A, 3),
        AddNamed("r1", "x", 1, 1, 10, 7),
    ]
    store.close()
    with sqlite3.connect(state_dir / DB_NAME) as connection:
        assert connection.execute("PRAGMA user_version").fetchone() == (SCHEMA_VERSION,)
    connection.close()


def test_a_database_of_another_application_is_refused(state_dir: Path) -> None:
    state_dir.mkdir()
    connection = sqlite3.connect(state_dir / DB_NAME)
    connection.execute("PRAGMA application_id = 0x12345678")
    connection.execute("CREATE TABLE t (a)")
    connection.commit()
    connection.close()
    with pytest.raises(StoreError, match=r"did not create.*0x12345678"):
        open_store(state_dir)
    connection = sqlite3.connect(state_dir / DB_NAME)
    assert connection.execute("PRAGMA application_id").fetchone() == (0x12345678,)
    connection.close()


def test_an_sqlite_database_without_an_application_id_but_with_tables_is_refused(
    state_dir: Path,
) -> None:
    state_dir.mkdir()
    connection = sqlite3.connect(state_dir / DB_NAME)
    connection.execute("CREATE TABLE t (a)")
    connection.commit()
    connection.close()
    with pytest.raises(StoreError, match=f"did not create.*{APPLICATION_ID:#010x}"):
        open_store(state_dir)


def test_an_empty_database_file_is_initialised(state_dir: Path) -> None:
    state_dir.mkdir()
    (state_dir / DB_NAME).touch()  # what a kill during the very first start can leave
    open_store(state_dir, "n1").close()
    open_store(state_dir, "n1").close()


def test_a_directory_holding_other_files_is_refused_and_gets_nothing(state_dir: Path) -> None:
    state_dir.mkdir()
    (state_dir / "notes.txt").write_text("mine")
    with pytest.raises(StoreError, match=r"not a crdtd state directory.*notes.txt"):
        open_store(state_dir)
    assert sorted(path.name for path in state_dir.iterdir()) == ["notes.txt"]


def test_a_log_without_its_database_is_refused(state_dir: Path) -> None:
    state_dir.mkdir()
    (state_dir / f"{DB_NAME}-wal").write_bytes(b"\0" * 32)
    with pytest.raises(StoreError, match=r"-wal exist but crdtd\.sqlite3 does not"):
        open_store(state_dir)


def test_a_state_dir_that_is_a_file_is_refused(state_dir: Path) -> None:
    state_dir.write_text("")
    with pytest.raises(StoreError, match="cannot use as the state directory"):
        open_store(state_dir)


# durability -----------------------------------------------------------------------------

WRITER = """
import sys
from pathlib import Path
from typing import Generic, TypeVar
from crdtd.core.ids import Origin
from crdtd.core.records import EpochAdvanced, OpRecorded, VariableCreated
from crdtd.store.sqlite import Store

store = Store.open(Path(sys.argv[1]), "n1", lambda: "unused")
store.append([VariableCreated("x")])
origin = Origin("n1", 1)
for batch in range(1, 1_000_000):
    ops = [OpRecorded("x", origin, 3 * batch + k, k) for k in range(3)]
    store.append([*ops, EpochAdvanced(batch)])
    print("committed", batch, flush=True)
"""


def test_every_acknowledged_append_survives_kill_9(state_dir: Path) -> None:
    writer = subprocess.Popen(
        [sys.executable, "-c", WRITER, str(state_dir)],
        cwd=REPO,
        env={**os.environ, "PYTHONPATH": str(REPO)},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    # A hung writer is killed, its stdout ends, and the test fails instead of hanging.
    watchdog = threading.Timer(30, writer.kill)
    watchdog.start()
    try:
        lines = [writer.stdout.readline() for _ in range(40)]  # type: ignore[union-attr]
        writer.send_signal(signal.SIGKILL)
        writer.wait(timeout=30)
    finally:
        watchdog.cancel()
        writer.kill()
        _, stderr = writer.communicate(timeout=30)
    assert lines[-1].startswith("committed"), f"writer output {lines[-3:]}, stderr {stderr}"
    acknowledged = int(lines[-1].split()[1])

    store = open_store(state_dir, "n1")
    try:
        records = store.load()
    finally:
        store.close()
    ops = {(record.nonce, record.delta) for record in records if isinstance(record, OpRecorded)}
    expected = {(3 * batch + k, k) for batch in range(1, acknowledged + 1) for k in range(3)}
    assert expected <= ops
    # Whole batches or nothing: a batch is its three ops and its epoch.
    (epoch,) = [record.epoch for record in records if isinstance(record, EpochAdvanced)]
    assert epoch >= acknowledged
    assert len(ops) == 3 * epoch


def test_named_adds_keep_the_first_answer_and_only_the_latest_are_kept(
    state_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("crdtd.store.sqlite.REQUESTS_KEPT", 3)
    store = open_store(state_dir, "n1")
    store.append(
        [AddNamed("r1", "x", 1, 1, 10, 7), AddNamed("r1", "x", 1, 9, 10, 7)]
    )  # the first stays
    store.append([AddNamed(f"r{n}", "x", 1, n, 10, 7) for n in range(2, 6)])
    store.close()
    store = open_store(state_dir, "n1")
    assert store.load() == [
        AddNamed("r3", "x", 1, 3, 10, 7),
        AddNamed("r4", "x", 1, 4, 10, 7),
        AddNamed("r5", "x", 1, 5, 10, 7),
    ]
    store.close()


def test_only_the_most_recently_written_replay_floors_are_kept(
    state_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("crdtd.store.sqlite.FLOORS_KEPT", 2)
    store = open_store(state_dir, "n1")
    store.append([ReplayFloor(Origin(f"p{n}", 1), 100 + n) for n in range(5)])
    assert store.load() == [ReplayFloor(Origin("p3", 1), 103), ReplayFloor(Origin("p4", 1), 104)]
    store.close()

    store = open_store(state_dir, "n1")
    store.append([ReplayFloor(Origin("p3", 1), 104)])  # a live peer, written again
    store.append([ReplayFloor(Origin("old", 1), 10**9)])  # a high number, written once
    store.append([ReplayFloor(Origin("p3", 1), 105)])
    assert store.load() == [ReplayFloor(Origin("old", 1), 10**9), ReplayFloor(Origin("p3", 1), 105)]
    store.close()


def test_a_version_2_database_gets_the_current_tables(state_dir: Path) -> None:
    """Version 2 (development builds) had replay_floors and named_adds in another shape."""
    store = open_store(state_dir, "n1")
    store.append([VariableCreated("x"), OpRecorded("x", A, 1, 5)])
    store.close()
    with sqlite3.connect(state_dir / DB_NAME) as connection:
        connection.execute("DROP TABLE replay_floors")
        connection.execute("DROP TABLE named_adds")
        connection.execute(
            "CREATE TABLE replay_floors (node_id TEXT NOT NULL, incarnation INTEGER NOT NULL,"
            " seq INTEGER NOT NULL, PRIMARY KEY (node_id, incarnation)) WITHOUT ROWID"
        )
        connection.execute(
            "CREATE TABLE named_adds (seq INTEGER PRIMARY KEY, request_id TEXT NOT NULL"
            " UNIQUE, variable TEXT NOT NULL, nonce INTEGER NOT NULL)"
        )
        connection.execute(
            "INSERT INTO named_adds (request_id, variable, nonce) VALUES ('r', 'x', 1)"
        )
        drop_graves(connection)
        connection.execute("PRAGMA user_version = 2")
    connection.close()
    store = open_store(state_dir, "n1")
    assert store.load() == [VariableCreated("x"), OpRecorded("x", A, 1, 5)]
    store.append([ReplayFloor(A, 3), AddNamed("r", "x", 5, 1, 5, 7)])
    assert store.load()[-2:] == [ReplayFloor(A, 3), AddNamed("r", "x", 5, 1, 5, 7)]
    store.close()


def test_a_version_3_databases_named_adds_get_the_incarnation_of_its_node_row(
    state_dir: Path,
) -> None:
    """Version 3 kept one incarnation for a state's whole life, in the node row."""
    store = open_store(state_dir, "n1")
    store.append([IncarnationStarted(42)])
    store.close()
    with sqlite3.connect(state_dir / DB_NAME) as connection:  # as a crdtd of schema 3 left it
        connection.execute("DROP TABLE named_adds")
        connection.execute(
            "CREATE TABLE named_adds (seq INTEGER PRIMARY KEY, request_id TEXT NOT NULL UNIQUE,"
            " variable TEXT NOT NULL, delta INTEGER NOT NULL, nonce INTEGER NOT NULL,"
            " value TEXT NOT NULL)"
        )
        connection.execute(
            "INSERT INTO named_adds (request_id, variable, delta, nonce, value)"
            " VALUES ('r', 'x', 5, ?, '5')",
            (1 - 2**63,),
        )
        drop_graves(connection)
        connection.execute("PRAGMA user_version = 3")
    connection.close()
    store = open_store(state_dir, "n1")
    assert store.load()[-1] == AddNamed("r", "x", 5, 1, 5, 42)
    store.close()


def test_a_version_4_database_gets_graves_and_keeps_its_state(state_dir: Path) -> None:
    """Version 4 had no deletes."""
    store = open_store(state_dir, "n1")
    store.append([VariableCreated("x"), OpRecorded("x", A, 1, 5)])
    store.close()
    with sqlite3.connect(state_dir / DB_NAME) as connection:  # as a crdtd of schema 4 left it
        drop_graves(connection)
        connection.execute("PRAGMA user_version = 4")
    connection.close()
    store = open_store(state_dir, "n1")
    assert store.load() == [VariableCreated("x"), OpRecorded("x", A, 1, 5)]
    store.append([Buried("x", ((A, 1, 5),))])
    assert store.load() == [
        VariableCreated("x"),
        Buried("x", ((A, 1, 5),)),
        OpRecorded("x", A, 1, 5),
    ]
    store.close()
    with sqlite3.connect(state_dir / DB_NAME) as connection:
        assert connection.execute("PRAGMA user_version").fetchone() == (SCHEMA_VERSION,)
    connection.close()


# op runs (schema 6) -----------------------------------------------------------------------


def test_consecutive_ops_of_one_append_are_one_row_and_load_one_by_one(
    store: Store, state_dir: Path
) -> None:
    ops = [
        *(OpRecorded("x", A, nonce, nonce - 3) for nonce in range(1, 6)),
        OpRecorded("y", A, 1, INT64_MIN),
        OpRecorded("y", A, 2, INT64_MAX),
        OpRecorded("x", A, 7, 7),  # a gap: a run of its own
        OpRecorded("x", B, 8, 8),
        OpRecorded("x", B, 9, 9),
        OpRecorded("x", A, 8, 8),  # follows 7, but not in the order given
    ]
    store.append([VariableCreated("x"), *ops, EpochAdvanced(1)])
    assert runs_on_disk(state_dir) == [
        ("x", "a", 1, 5),
        ("x", "a", 7, 7),
        ("x", "a", 8, 8),
        ("x", "b", 8, 9),
        ("y", "a", 1, 2),
    ]
    assert reopened(store, state_dir) == [
        VariableCreated("x"),
        *sorted(ops, key=lambda op: (op.variable, op.origin, op.nonce)),
        EpochAdvanced(1),
    ]


def test_a_run_longer_than_run_max_takes_several_rows(store: Store, state_dir: Path) -> None:
    top = UINT64_MAX
    ops = [OpRecorded("x", A, nonce, nonce % 5 - 2) for nonce in range(top - 2 * RUN_MAX, top + 1)]
    store.append(ops)
    first = top - 2 * RUN_MAX
    assert runs_on_disk(state_dir) == [
        ("x", "a", first, first + RUN_MAX - 1),
        ("x", "a", first + RUN_MAX, first + 2 * RUN_MAX - 1),
        ("x", "a", top, top),
    ]
    assert store.load() == ops


def test_a_run_record_is_stored_as_its_ops_are_joined_with_its_neighbours(
    store: Store, state_dir: Path
) -> None:
    """An `OpsRecorded` is the `OpRecorded` of each of its ops: it joins the ops next to
    it into one row, splits at `RUN_MAX`, and overlapping what is stored adds only the
    new ones."""
    store.append(
        [OpRecorded("x", A, 1, 5), OpsRecorded("x", A, 2, (1, 2)), OpsRecorded("x", A, 4, ())]
    )
    store.append(
        [OpsRecorded("x", A, 3, (9, 3, 4)), OpsRecorded("x", B, 1, tuple(range(RUN_MAX + 1)))]
    )
    assert runs_on_disk(state_dir) == [
        ("x", "a", 1, 3),
        ("x", "a", 4, 5),
        ("x", "b", 1, RUN_MAX),
        ("x", "b", RUN_MAX + 1, RUN_MAX + 1),
    ]
    assert store.load() == [
        *OpsRecorded("x", A, 1, (5, 1, 2, 3, 4)).each(),
        *OpsRecorded("x", B, 1, tuple(range(RUN_MAX + 1))).each(),
    ]


def test_an_append_overlapping_stored_ops_adds_only_the_new_ones(
    store: Store, state_dir: Path
) -> None:
    store.append([BaseFolded("x", A, 1, 10)])
    store.append([OpRecorded("x", A, nonce, 1) for nonce in (4, 5, 6)])
    store.append([OpRecorded("x", A, nonce, 2) for nonce in range(1, 10)])
    store.append([OpRecorded("x", A, 12, 3), OpRecorded("x", A, 12, 4), OpRecorded("x", A, 11, 4)])
    assert store.load() == [
        BaseFolded("x", A, 1, 10),
        *(OpRecorded("x", A, nonce, 2) for nonce in (2, 3)),
        *(OpRecorded("x", A, nonce, 1) for nonce in (4, 5, 6)),
        *(OpRecorded("x", A, nonce, 2) for nonce in (7, 8, 9)),
        OpRecorded("x", A, 11, 4),
        OpRecorded("x", A, 12, 3),
    ]
    assert runs_on_disk(state_dir) == [
        ("x", "a", 2, 3),
        ("x", "a", 4, 6),
        ("x", "a", 7, 9),
        ("x", "a", 11, 11),
        ("x", "a", 12, 12),
    ]


def test_a_base_straddling_a_run_hides_its_lower_part_and_prune_trims_it(
    state_dir: Path,
) -> None:
    store = open_store(state_dir, "n1")
    store.append([OpRecorded("x", A, nonce, -nonce) for nonce in range(1, 11)])
    store.append([BaseFolded("x", A, 4, -10)])
    live = [OpRecorded("x", A, nonce, -nonce) for nonce in range(5, 11)]
    assert store.load() == [BaseFolded("x", A, 4, -10), *live]
    assert not store.prune()
    assert runs_on_disk(state_dir) == [("x", "a", 5, 10)]
    assert reopened(store, state_dir) == [BaseFolded("x", A, 4, -10), *live]
    store = open_store(state_dir, "n1")
    assert not store.unpruned
    store.append([BaseFolded("x", A, 9, -45)])
    assert not store.prune()
    assert runs_on_disk(state_dir) == [("x", "a", 10, 10)]  # one op left: its delta alone
    assert store.load() == [BaseFolded("x", A, 9, -45), OpRecorded("x", A, 10, -10)]
    store.append([BaseFolded("x", A, 10, -55)])
    assert store.load() == [BaseFolded("x", A, 10, -55)]
    assert not store.prune()
    assert runs_on_disk(state_dir) == []
    store.close()


def test_prune_deletes_whole_runs_about_a_slice_at_a_time(state_dir: Path) -> None:
    store = open_store(state_dir, "n1")
    for first in (1, 6, 11):
        store.append([OpRecorded("x", A, nonce, 1) for nonce in range(first, first + 5)])
    store.append([BaseFolded("x", A, 12, 12)])
    assert store.prune(limit=3)  # the whole first run, a little over the limit
    assert runs_on_disk(state_dir) == [("x", "a", 6, 10), ("x", "a", 11, 15)]
    assert not store.prune(limit=100)
    assert runs_on_disk(state_dir) == [("x", "a", 13, 15)]
    assert store.load()[1:] == [OpRecorded("x", A, nonce, 1) for nonce in (13, 14, 15)]
    store.close()


def test_a_delta_out_of_range_fails_the_whole_batch(store: Store) -> None:
    with pytest.raises(ValueError, match="signed 64-bit delta"):
        store.append([VariableCreated("x"), OpRecorded("x", A, 1, 1), OpRecorded("x", A, 2, 2**63)])
    assert store.load() == []


def test_a_version_5_database_gets_its_ops_in_runs_and_keeps_its_state(
    state_dir: Path,
) -> None:
    """Version 5 kept an op per row."""
    top = UINT64_MAX
    ops = [
        *(OpRecorded("x", A, nonce, nonce - 4) for nonce in range(1, 9)),
        OpRecorded("x", A, 10, INT64_MIN),
        *(OpRecorded("x", Origin("c", top), nonce, INT64_MAX) for nonce in (top - 1, top)),
        *(OpRecorded("y", B, nonce, 1) for nonce in (2**63 - 1, 2**63)),  # the signed edge
    ]
    store = open_store(state_dir, "n1")
    for op in ops:
        store.append([op])
    store.append([BaseFolded("x", A, 3, -6)])
    before = store.load()
    store.close()
    with sqlite3.connect(state_dir / DB_NAME) as connection:  # as a crdtd of schema 5 left it
        one_op_a_row(connection)
        connection.execute("PRAGMA user_version = 5")
    connection.close()
    store = open_store(state_dir, "n1")
    assert store.unpruned  # the base's ops are found again, to be deleted
    assert store.load() == before
    assert runs_on_disk(state_dir) == [
        ("x", "a", 1, 8),
        ("x", "a", 10, 10),
        ("x", "c", top - 1, top),
        ("y", "b", 2**63 - 1, 2**63),
    ]
    assert not store.prune()
    assert runs_on_disk(state_dir)[0] == ("x", "a", 4, 8)
    assert reopened(store, state_dir) == before
    with sqlite3.connect(state_dir / DB_NAME) as connection:
        assert connection.execute("PRAGMA user_version").fetchone() == (6,)
        assert (
            connection.execute("SELECT name FROM sqlite_master WHERE name = 'ops'").fetchall() == []
        )
    connection.close()


def test_ops_out_of_order_again_after_a_reopen_or_after_a_rollback_are_each_stored_once(
    store: Store, state_dir: Path
) -> None:
    store.append([OpRecorded("x", A, nonce, nonce) for nonce in (5, 6)])
    store.append([OpRecorded("x", A, nonce, nonce) for nonce in (1, 2, 3)])  # a repair's gap
    with pytest.raises(TypeError, match="not a record"):  # the ops are rolled back too
        store.append([OpRecorded("x", A, 4, 4), OpRecorded("x", A, 7, 7), "junk"])  # type: ignore[list-item]
    store.append([OpRecorded("x", A, 7, 7)])
    store.close()
    store = open_store(state_dir, "n1")
    store.append([OpRecorded("x", A, nonce, -1) for nonce in range(1, 9)])
    assert store.load() == [
        *(OpRecorded("x", A, nonce, nonce) for nonce in (1, 2, 3)),
        OpRecorded("x", A, 4, -1),
        *(OpRecorded("x", A, nonce, nonce) for nonce in (5, 6, 7)),
        OpRecorded("x", A, 8, -1),
    ]
    store.close()
