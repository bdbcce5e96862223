"""The node's durable state: one SQLite database in ``node.state_dir``.

Layout of the state directory (created with mode 0700 when missing)::

    crdtd.sqlite3           the database; -wal and -shm lie beside it while it is open
    lock                    flock()ed while a Store is open; holds the owner's pid

Rules:

- A committed `Store.append` survives kill -9 and power loss. The database runs in WAL
  mode with ``synchronous=FULL``: every commit fsyncs the WAL before it returns. (With
  NORMAL the WAL is synced only at checkpoints: a killed process loses nothing, because
  the kernel still holds the bytes, but a power cut could take the last commits, and
  they are adds the node has already acknowledged and sent.)
- One batch of records is one transaction, so the caller pays one fsync per batch
  (group commit), and a crash leaves all of a batch or none of it.
- Every record applies idempotently (see `Store.append`), so applying a batch twice, or
  an old op below a base, changes nothing.
- Ops are kept a run to a row (``op_runs``): the ops of one variable and origin that
  one append brings with consecutive nonces (a populate step, a peer's batch, up to
  `RUN_MAX`) are one row holding their deltas packed, 8 bytes each, so a row's cost is
  paid once per run, not per op (`bench/store_append.py`). Runs never overlap: an op
  already stored keeps its first delta, and of a run that overlaps stored ops only the
  new ones are inserted.
- A fold deletes the ops it covers later, a slice at a time (`Store.prune`): whole runs,
  and the one run a base straddles is trimmed to the ops above it. Deleting a million
  rows of an op each took SQLite a third of a second, and the owner task waits for every
  write. Until then the base hides them: `load` returns no op a base covers.
- The node id is written in the transaction that creates the schema: a state either
  has one or does not exist, and it never changes after. Beside it, the node row keeps
  the latest incarnation the state started (`IncarnationStarted`; 0 before the first
  boot): every boot takes a new one (`crdtd.core.identity`).
- A deleted variable's grave is kept whole: a `Buried` replaces the one before it (the
  core only ever sends a grave that grew). ``graves`` has a row per deleted variable, so
  a grave with no marks (a delete before any op) is kept too; ``grave_marks`` holds its
  marks. The prefixes it covers come as `BaseFolded` too, so `prune` deletes their ops.
- One process per state directory: `Store.open` takes an exclusive ``flock`` on
  ``lock`` and holds it until `Store.close` (the kernel drops it if the process dies).
- `Store.open` refuses, and never resets, a state it cannot trust. It raises
  `StoreError` when the directory

  * holds a database that is damaged (``PRAGMA quick_check``) or not SQLite at all;
  * holds a database of a newer schema (``PRAGMA user_version`` > `SCHEMA_VERSION`);
  * holds an SQLite database crdtd did not create (``PRAGMA application_id`` is not
    `APPLICATION_ID`, or it is 0 but the database already has tables);
  * holds any file other than ours (and ``lost+found``, for a state directory that is
    a filesystem of its own). The state lives in a directory of its own so that a
    mistyped ``node.state_dir`` (``/var/lib``, a home directory) never gets a database
    dropped into it, and so that "empty the state directory to start fresh" can never
    delete somebody else's files;
  * holds ``crdtd.sqlite3-wal``, ``-shm`` or ``-journal`` without ``crdtd.sqlite3``:
    the database was deleted under its log, which may hold its latest commits.

Storage: an incarnation, a nonce and a base's ``upto`` may use all 64 unsigned bits,
but an SQLite INTEGER is signed, so they are stored minus 2**63, which keeps their
order for the ``upto >= nonce`` comparisons. A base's total (and a grave mark's) is a
sum of signed 64-bit deltas and may leave that range, so it is stored as decimal text.

Threading: the connection is opened with ``check_same_thread=False`` so the daemon can
call `prune` through ``asyncio.to_thread`` (the driver writes `append` in the loop's
own thread). A Store is not thread-safe: only one thread may use it at a time (the
daemon's one driver task awaits each call).
"""

from __future__ import annotations

import contextlib
import fcntl
import itertools
import os
import sqlite3
import struct
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

from crdtd.core.ids import INT64_MAX, INT64_MIN, UINT64_MAX, Origin
from crdtd.core.records import (
    REQUESTS_KEPT,
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

DB_NAME = "crdtd.sqlite3"
LOCK_NAME = "lock"
_SIDECARS = tuple(DB_NAME + suffix for suffix in ("-wal", "-shm", "-journal"))
_OURS = frozenset({DB_NAME, LOCK_NAME, *_SIDECARS, "lost+found"})

APPLICATION_ID = 0x43524454
"""``PRAGMA application_id`` of every crdtd database: "CRDT" in ASCII."""

SCHEMA_VERSION = 6
"""``PRAGMA user_version``; a later schema gets a higher number and a migration."""

_U64_BIAS = 2**63
_DAMAGED_SQLITE_ERRORS = ("SQLITE_CORRUPT", "SQLITE_NOTADB")

_SCHEMA = (
    """CREATE TABLE node (
        only_row    INTEGER PRIMARY KEY CHECK (only_row = 1),
        node_id     TEXT NOT NULL,
        incarnation INTEGER NOT NULL,
        epoch       INTEGER NOT NULL
    )""",
    "CREATE TABLE variables (name TEXT PRIMARY KEY) WITHOUT ROWID",
    """CREATE TABLE bases (
        variable    TEXT NOT NULL,
        node_id     TEXT NOT NULL,
        incarnation INTEGER NOT NULL,
        upto        INTEGER NOT NULL,
        total       TEXT NOT NULL,
        PRIMARY KEY (variable, node_id, incarnation)
    ) WITHOUT ROWID""",
)
_OP_RUNS = """CREATE TABLE op_runs (
        variable    TEXT NOT NULL,
        node_id     TEXT NOT NULL,
        incarnation INTEGER NOT NULL,
        first_nonce INTEGER NOT NULL,
        ops         INTEGER NOT NULL,
        deltas      BLOB NOT NULL,
        PRIMARY KEY (variable, node_id, incarnation, first_nonce),
        CHECK (
            ops = 1 AND typeof(deltas) = 'integer'
            OR ops > 1 AND typeof(deltas) = 'blob' AND length(deltas) = 8 * ops
        )
    ) WITHOUT ROWID"""
"""A run of *ops* ops, nonces ``first_nonce`` to ``first_nonce + (ops - 1)`` (in that
order: ``first_nonce + ops`` may leave SQLite's integers). Its deltas are the delta
itself when it is one op (as small as an op's own row was), else packed, 8 bytes each,
big-endian two's complement (BLOB affinity keeps either as given)."""
_REPLAY_FLOORS = """CREATE TABLE replay_floors (
        node_id     TEXT NOT NULL,
        incarnation INTEGER NOT NULL,
        seq         INTEGER NOT NULL,
        written     INTEGER NOT NULL,
        PRIMARY KEY (node_id, incarnation)
    ) WITHOUT ROWID"""
_REPLAY_FLOORS_BY_AGE = "CREATE INDEX replay_floors_written ON replay_floors (written)"
_NAMED_ADDS_V3 = """CREATE TABLE named_adds (
        seq         INTEGER PRIMARY KEY,
        request_id  TEXT NOT NULL UNIQUE,
        variable    TEXT NOT NULL,
        delta       INTEGER NOT NULL,
        nonce       INTEGER NOT NULL,
        value       TEXT NOT NULL
    )"""
_ADD_NAMED_INCARNATION = "ALTER TABLE named_adds ADD COLUMN incarnation INTEGER NOT NULL DEFAULT 0"
_GRAVES = (
    "CREATE TABLE graves (variable TEXT PRIMARY KEY) WITHOUT ROWID",
    """CREATE TABLE grave_marks (
        variable    TEXT NOT NULL,
        node_id     TEXT NOT NULL,
        incarnation INTEGER NOT NULL,
        upto        INTEGER NOT NULL,
        total       TEXT NOT NULL,
        PRIMARY KEY (variable, node_id, incarnation)
    ) WITHOUT ROWID""",
)
_V3_TABLES = (_REPLAY_FLOORS, _REPLAY_FLOORS_BY_AGE, _NAMED_ADDS_V3)
_CURRENT_TABLES = (_OP_RUNS, *_V3_TABLES, _ADD_NAMED_INCARNATION, *_GRAVES)
Migration = str | Callable[[sqlite3.Connection], None]
_MIGRATIONS: dict[int, tuple[Migration, ...]] = {
    1: _V3_TABLES,
    # Version 2 (development builds only) had these tables in another shape; what they
    # held is lost: replay floors fill again within 30 s, and a retry of an add named
    # before the upgrade is applied again.
    2: ("DROP TABLE replay_floors", "DROP TABLE named_adds", *_V3_TABLES),
    # Version 3 kept one incarnation for the state's whole life, so every named add it
    # holds was made by the incarnation in the node row.
    3: (
        _ADD_NAMED_INCARNATION,
        "UPDATE named_adds SET incarnation = (SELECT incarnation FROM node)",
    ),
    # Version 4 had no deletes: no variable has a grave.
    4: _GRAVES,
    # Version 5 kept an op per row, in ``ops`` (the columns of ``op_runs`` but a nonce
    # and a delta): each run of consecutive nonces there becomes a row.
    5: (_OP_RUNS, lambda connection: _ops_into_runs(connection), "DROP TABLE ops"),
}
"""Statements (or functions of the connection) that bring a database of version N to
N + 1, in one transaction. From 1, step 1 makes the version 3 tables and step 2 makes
them again, empty either way."""

# "ON CONFLICT DO NOTHING" rather than "INSERT OR IGNORE": OR IGNORE would also swallow a
# NOT NULL violation, i.e. silently drop a malformed record instead of raising.
_INSERT_VARIABLE = "INSERT INTO variables (name) VALUES (?) ON CONFLICT DO NOTHING"
# An op run: consecutive nonces of one variable and origin, from one append. It goes in
# whole when nothing of it is stored and no base covers any of it, which is the only case
# a node makes (it persists each op once). Runs never overlap, so the one run starting
# last at or before the new run's end is the only one that can overlap it.
_INSERT_RUN = """
    INSERT INTO op_runs (variable, node_id, incarnation, first_nonce, ops, deltas)
    SELECT ?1, ?2, ?3, ?4, ?5, ?6
    WHERE NOT EXISTS (
        SELECT 1 FROM bases
        WHERE variable = ?1 AND node_id = ?2 AND incarnation = ?3 AND upto >= ?4
    ) AND NOT EXISTS (
        SELECT 1 FROM (
            SELECT first_nonce + (ops - 1) AS last_nonce FROM op_runs
            WHERE variable = ?1 AND node_id = ?2 AND incarnation = ?3
              AND first_nonce <= ?4 + (?5 - 1)
            ORDER BY first_nonce DESC LIMIT 1
        ) WHERE last_nonce >= ?4
    )
"""
_INSERT_RUN_ABOVE = """
    INSERT INTO op_runs (variable, node_id, incarnation, first_nonce, ops, deltas)
    SELECT ?1, ?2, ?3, ?4, ?5, ?6
    WHERE NOT EXISTS (
        SELECT 1 FROM bases
        WHERE variable = ?1 AND node_id = ?2 AND incarnation = ?3 AND upto >= ?4
    )
"""
_HIGHEST_NONCE = """
    SELECT first_nonce + (ops - 1) FROM op_runs
    WHERE variable = ? AND node_id = ? AND incarnation = ?
    ORDER BY first_nonce DESC LIMIT 1
"""
_NO_NONCE = -(2**63) - 1
"""Below every stored nonce: what `_HIGHEST_NONCE` stands for when there is none."""
_INSERT_RUN_AS_IS = """
    INSERT INTO op_runs (variable, node_id, incarnation, first_nonce, ops, deltas)
    VALUES (?, ?, ?, ?, ?, ?)
"""
_BASE_UPTO = "SELECT upto FROM bases WHERE variable = ? AND node_id = ? AND incarnation = ?"
_RUNS_WITHIN = """
    SELECT first_nonce, first_nonce + (ops - 1) FROM op_runs
    WHERE variable = ? AND node_id = ? AND incarnation = ? AND first_nonce BETWEEN ? AND ?
"""
_RAISE_BASE = """
    INSERT INTO bases (variable, node_id, incarnation, upto, total)
    VALUES (:variable, :node_id, :incarnation, :upto, :total)
    ON CONFLICT (variable, node_id, incarnation) DO UPDATE
        SET upto = excluded.upto, total = excluded.total
        WHERE excluded.upto > bases.upto
"""
_LOWEST_RUN = """
    SELECT first_nonce, ops, deltas FROM op_runs
    WHERE variable = :variable AND node_id = :node_id AND incarnation = :incarnation
    ORDER BY first_nonce LIMIT 1
"""
_FOLDED_RUNS = """
    WHERE variable = :variable AND node_id = :node_id AND incarnation = :incarnation
      AND first_nonce <= :end AND first_nonce + (ops - 1) <= :upto
"""
_COUNT_FOLDED_OPS = "SELECT coalesce(sum(ops), 0) FROM op_runs" + _FOLDED_RUNS
_DELETE_FOLDED_RUNS = "DELETE FROM op_runs" + _FOLDED_RUNS
_TRIM_RUN = """
    UPDATE op_runs SET first_nonce = :upto + 1, ops = :ops, deltas = :deltas
    WHERE variable = :variable AND node_id = :node_id AND incarnation = :incarnation
      AND first_nonce = :first
"""
_UNPRUNED = """
    SELECT b.variable, b.node_id, b.incarnation, b.upto FROM bases AS b
    WHERE EXISTS (
        SELECT 1 FROM op_runs AS r
        WHERE r.variable = b.variable AND r.node_id = b.node_id
          AND r.incarnation = b.incarnation AND r.first_nonce <= b.upto
    )
"""
_LIVE_RUNS = """
    SELECT r.variable, r.node_id, r.incarnation, r.first_nonce, r.deltas, b.upto
    FROM op_runs AS r LEFT JOIN bases AS b
        ON b.variable = r.variable AND b.node_id = r.node_id
        AND b.incarnation = r.incarnation
    WHERE b.upto IS NULL OR b.upto < r.first_nonce + (r.ops - 1)
    ORDER BY r.variable, r.node_id, r.incarnation, r.first_nonce
"""
RUN_MAX = 1024
"""Ops in one row of ``op_runs`` at most (8 KiB of deltas): a longer run of an append
takes several rows, so that trimming a run a fold straddles rewrites little."""
PRUNE_SLICE = 20_000
"""Folded ops deleted by one `Store.prune` (give or take a run): with an op per row, 6
to 12 ms of SQLite's time here, where one DELETE of a 1M-op fold took 335 ms
(`bench/store_fold.py`)."""
_INSERT_GRAVE = "INSERT INTO graves (variable) VALUES (?) ON CONFLICT DO NOTHING"
_FORGET_MARKS = "DELETE FROM grave_marks WHERE variable = ?"
_INSERT_MARK = """
    INSERT INTO grave_marks (variable, node_id, incarnation, upto, total)
    VALUES (:variable, :node_id, :incarnation, :upto, :total)
"""
_ADVANCE_EPOCH = "UPDATE node SET epoch = max(epoch, ?)"
_NAME_ADD = """
    INSERT INTO named_adds (request_id, variable, delta, nonce, value, incarnation)
    VALUES (?, ?, ?, ?, ?, ?)
    ON CONFLICT (request_id) DO NOTHING
"""
_START_INCARNATION = "UPDATE node SET incarnation = max(incarnation, ?)"
_FORGET_OLD_NAMES = "DELETE FROM named_adds WHERE seq <= (SELECT max(seq) FROM named_adds) - ?"
_FORGET_OLD_FLOORS = """
    DELETE FROM replay_floors WHERE written < (
        SELECT written FROM replay_floors ORDER BY written DESC LIMIT 1 OFFSET ?
    )
"""
FLOORS_KEPT = 1024
"""Replay floors kept, the most recently written first: a node keeps at most
``4 * peers_max`` windows in memory anyway (256 peers by default), and a live peer's
floor is written again whenever it moves."""
_RAISE_FLOOR = """
    INSERT INTO replay_floors (node_id, incarnation, seq, written)
    VALUES (?, ?, ?, (SELECT coalesce(max(written), 0) + 1 FROM replay_floors))
    ON CONFLICT (node_id, incarnation) DO UPDATE
        SET seq = max(replay_floors.seq, excluded.seq), written = excluded.written
"""


class StoreError(Exception):
    """The state directory cannot be used; the message names the path and what to do."""


class Store:
    """The durable state of one node. Get one with `Store.open`; `close` it when done."""

    def __init__(
        self,
        connection: sqlite3.Connection,
        lock_fd: int,
        db_path: Path,
        node_id: str,
    ) -> None:
        self._connection = connection
        self._lock_fd = lock_fd
        self._db_path = db_path
        self._node_id = node_id
        # Folds whose covered ops are still on disk: (variable, node_id, stored
        # incarnation) -> stored upto. Found again on open, so a crash loses no work.
        # (variable, node_id, stored incarnation) -> no stored nonce is higher, learnt on
        # the first append of ops of each since open. Never too low; too high (after a
        # rollback, a prune, a run a base refused) only costs the slower insert.
        self._highest: dict[tuple[str, str, int], int] = {}
        self._unpruned: dict[tuple[str, str, int], int] = {
            (variable, node, incarnation): upto
            for variable, node, incarnation, upto in connection.execute(_UNPRUNED)
        }

    @classmethod
    def open(cls, state_dir: Path, node_id: str | None, new_node_id: Callable[[], str]) -> Store:
        """Open the state in *state_dir*, creating it on first start.

        *node_id* None means "auto": a new state takes ``new_node_id()``, and an existing
        one keeps the id it has. Raises `StoreError` for any state this module refuses
        (see the module docstring).
        """
        _prepare_directory(state_dir)
        db_path = state_dir / DB_NAME
        with contextlib.ExitStack() as undo:
            lock_fd = _lock(state_dir)
            undo.callback(os.close, lock_fd)
            _refuse_orphaned_sidecars(state_dir)
            with _translated(db_path, "opening the database"):
                connection = sqlite3.connect(db_path, isolation_level=None, check_same_thread=False)
                undo.callback(connection.close)
                node_id = _open_state(connection, db_path, node_id, new_node_id)
            undo.pop_all()
        return cls(connection, lock_fd, db_path, node_id)

    @property
    def node_id(self) -> str:
        return self._node_id

    def load(self) -> list[Record]:
        """Records that rebuild the node: the latest incarnation started (if any),
        variables, bases, graves, ops, the epoch if any, the replay floors, then the
        named adds, oldest first."""
        query = self._connection.execute
        with _translated(self._db_path, "reading the state"):
            ((incarnation, epoch),) = query("SELECT incarnation, epoch FROM node").fetchall()
            records: list[Record] = []
            if _from_u64(incarnation) > 0:
                records.append(IncarnationStarted(_from_u64(incarnation)))
            records += [
                VariableCreated(name)
                for (name,) in query("SELECT name FROM variables ORDER BY name")
            ]
            records += [
                BaseFolded(variable, Origin(node_id, _from_u64(inc)), _from_u64(upto), int(total))
                for variable, node_id, inc, upto, total in query(
                    "SELECT variable, node_id, incarnation, upto, total FROM bases"
                    " ORDER BY variable, node_id, incarnation"
                )
            ]
            records += self._graves()
            records += _expanded(query(_LIVE_RUNS))
            floors = [
                ReplayFloor(Origin(node_id, _from_u64(inc)), _from_u64(seq))
                for node_id, inc, seq in query(
                    "SELECT node_id, incarnation, seq FROM replay_floors ORDER BY written, seq"
                )
            ]
            named = [
                AddNamed(request_id, variable, delta, _from_u64(nonce), int(value), _from_u64(inc))
                for request_id, variable, delta, nonce, value, inc in query(
                    "SELECT request_id, variable, delta, nonce, value, incarnation"
                    " FROM named_adds ORDER BY seq"
                )
            ]
        if epoch > 0:
            records.append(EpochAdvanced(epoch))
        return records + floors + named

    def append(self, records: Sequence[Record]) -> None:
        """Apply *records* in one transaction and return once it is durable.

        - `VariableCreated`: insert unless present.
        - `OpRecorded`: insert unless present, or unless the base of its variable and
          origin already covers its nonce. Ops of one variable and origin that come one
          after the other with consecutive nonces are stored as one row (a run, of at
          most `RUN_MAX`); `load` gives them back one by one.
        - `OpsRecorded`: the same for each of its ops (a run already).
        - `BaseFolded`: raise the base to ``(upto, total)`` if ``upto`` is higher than the
          stored one; the ops it covers are deleted by `prune`.
        - `Buried`: the variable's grave becomes the one given, whole.
        - `EpochAdvanced`: the epoch becomes the higher of the stored and the new one.
        - `IncarnationStarted`: likewise the incarnation in the node row.
        - `ReplayFloor`: the sender's floor becomes the higher of the stored and the new;
          then only the `FLOORS_KEPT` most recently written floors are kept.
        - `AddNamed`: insert unless the request id is present; then only the latest
          `REQUESTS_KEPT` are kept.
        """
        if not records:
            return
        with _translated(self._db_path, "writing records"), _transaction(self._connection):
            # Ops go a run of consecutive nonces to a row (a populate step, a repair),
            # in one executemany: the loop and the binding run in C, with the GIL
            # released while SQLite works, so the owner task keeps its turn while a big
            # step is written.
            for is_op, group in itertools.groupby(records, key=_is_op):
                if is_op:
                    self._append_ops(group)  # type: ignore[arg-type]
                else:
                    for record in group:
                        self._apply(record)
            if any(isinstance(record, AddNamed) for record in records):
                self._connection.execute(_FORGET_OLD_NAMES, (REQUESTS_KEPT,))
            if any(isinstance(record, ReplayFloor) for record in records):
                self._connection.execute(_FORGET_OLD_FLOORS, (FLOORS_KEPT - 1,))

    @property
    def unpruned(self) -> bool:
        """Whether folded ops are still on disk for `prune` to delete."""
        return bool(self._unpruned)

    def prune(self, limit: int = PRUNE_SLICE) -> bool:
        """Delete about *limit* ops that a base covers (at most ``limit + RUN_MAX``), in
        one transaction; return whether more are left. Correctness does not depend on it
        (a base hides what it covers), only the size of the database.

        A run wholly covered goes whole; the one run a base may straddle is trimmed to
        the ops above it."""
        with _translated(self._db_path, "deleting folded ops"), _transaction(self._connection):
            execute = self._connection.execute
            while self._unpruned and limit > 0:
                (variable, node_id, incarnation), upto = next(iter(self._unpruned.items()))
                key = {"variable": variable, "node_id": node_id, "incarnation": incarnation}
                lowest = execute(_LOWEST_RUN, key).fetchone()
                if lowest is None or lowest[0] > upto:
                    del self._unpruned[(variable, node_id, incarnation)]
                    continue
                first, ops, deltas = lowest
                if first + ops - 1 > upto:  # it straddles the base: nothing lies below
                    kept = _unpacked(deltas)[upto - first + 1 :]
                    trim = {"upto": upto, "first": first, "ops": len(kept), "deltas": _packed(kept)}
                    execute(_TRIM_RUN, {**key, **trim})
                    limit -= upto - first + 1
                    continue
                # Runs never overlap, so the runs that start in this range hold at most
                # limit + RUN_MAX - 1 ops, and a range on the primary key deletes fast.
                bounds = {**key, "upto": upto, "end": min(upto, first + limit - 1)}
                ((deleted,),) = execute(_COUNT_FOLDED_OPS, bounds).fetchall()
                execute(_DELETE_FOLDED_RUNS, bounds)
                limit -= deleted
        return bool(self._unpruned)

    def close(self) -> None:
        """Close the database (checkpointing the WAL) and release the directory lock.

        Closing again does nothing; it must not close whatever file reused the lock's fd.
        """
        if self._lock_fd < 0:
            return
        try:
            self._connection.close()
        finally:
            os.close(self._lock_fd)
            self._lock_fd = -1

    def _append_ops(self, ops: Iterable[OpRecorded | OpsRecorded]) -> None:
        """Store *ops*, a run to a row: in one go when no run overlaps what is stored or
        what a base covers (what a node sends), else what is new of each run."""
        runs = list(_runs(ops))
        # A run above every nonce stored of its variable and origin overlaps none (what
        # a node's own adds and in-order replication make); only the others need the
        # search for an overlapping run, which costs as much as the insert itself.
        highest = self._highest
        above: list[RunRow] = []
        others: list[RunRow] = []
        for run in runs:
            key = run[:3]
            top = highest.get(key)
            if top is None:
                row = self._connection.execute(_HIGHEST_NONCE, key).fetchone()
                top = _NO_NONCE if row is None else row[0]
            (above if run[3] > top else others).append(run)
            highest[key] = max(top, run[3] + run[4] - 1)
        executemany = self._connection.executemany
        inserted = executemany(_INSERT_RUN_ABOVE, above).rowcount if above else 0
        if others:
            inserted += executemany(_INSERT_RUN, others).rowcount
        if inserted == len(runs):
            return
        # Some run overlaps: the runs inserted above are stored now, so this skips them.
        execute = self._connection.execute
        for variable, node_id, incarnation, first, count, deltas in runs:
            key = (variable, node_id, incarnation)
            last = first + count - 1
            taken: set[int] = set()
            for low, high in execute(
                _RUNS_WITHIN, (*key, max(-_U64_BIAS, first - RUN_MAX + 1), last)
            ):
                taken.update(range(max(low, first), min(high, last) + 1))
            base = execute(_BASE_UPTO, key).fetchone()
            floor = first if base is None else max(first, base[0] + 1)
            values = _unpacked(deltas)
            kept = [
                (nonce, values[nonce - first])
                for nonce in range(floor, last + 1)
                if nonce not in taken
            ]
            for _, piece in itertools.groupby(
                enumerate(kept), key=lambda item: item[1][0] - item[0]
            ):
                nonces = [op for _, op in piece]
                row = (*key, nonces[0][0], len(nonces), _packed([delta for _, delta in nonces]))
                execute(_INSERT_RUN_AS_IS, row)

    def _graves(self) -> list[Buried]:
        """One `Buried` per deleted variable, its marks ordered by origin."""
        query = self._connection.execute
        marks: dict[str, list[tuple[Origin, int, int]]] = {
            name: [] for (name,) in query("SELECT variable FROM graves ORDER BY variable")
        }
        for variable, node_id, inc, upto, total in query(
            "SELECT variable, node_id, incarnation, upto, total FROM grave_marks"
            " ORDER BY variable, node_id, incarnation"
        ):
            marks[variable].append((Origin(node_id, _from_u64(inc)), _from_u64(upto), int(total)))
        return [Buried(variable, tuple(held)) for variable, held in marks.items()]

    def _apply(self, record: Record) -> None:
        execute = self._connection.execute
        match record:
            case VariableCreated(variable):
                execute(_INSERT_VARIABLE, (variable,))
            case BaseFolded(variable, origin, upto, total):
                stored_upto = _to_u64(upto)
                key = {**_origin_key(variable, origin), "upto": stored_upto}
                execute(_RAISE_BASE, {**key, "total": str(total)})
                slot = (variable, origin.node_id, _to_u64(origin.incarnation))
                self._unpruned[slot] = max(self._unpruned.get(slot, stored_upto), stored_upto)
            case Buried(variable, marks):
                execute(_INSERT_GRAVE, (variable,))
                execute(_FORGET_MARKS, (variable,))
                for origin, upto, total in marks:
                    row = {**_origin_key(variable, origin), "upto": _to_u64(upto)}
                    execute(_INSERT_MARK, {**row, "total": str(total)})
            case EpochAdvanced(epoch):
                execute(_ADVANCE_EPOCH, (epoch,))
            case IncarnationStarted(incarnation):
                execute(_START_INCARNATION, (_to_u64(incarnation),))
            case AddNamed(request_id, variable, delta, nonce, value, incarnation):
                row = (
                    request_id,
                    variable,
                    delta,
                    _to_u64(nonce),
                    str(value),
                    _to_u64(incarnation),
                )
                execute(_NAME_ADD, row)
            case ReplayFloor(sender, seq):
                execute(_RAISE_FLOOR, (sender.node_id, _to_u64(sender.incarnation), _to_u64(seq)))
            case _:
                raise TypeError(f"not a record: {record!r}")


def _open_state(
    connection: sqlite3.Connection,
    db_path: Path,
    node_id: str | None,
    new_node_id: Callable[[], str],
) -> str:
    """Check the database is ours and sound, create it if empty; return its node id."""
    # Set before the first write: the setting is per connection, not stored in the file.
    connection.execute("PRAGMA synchronous = FULL")
    application_id = _scalar(connection, "PRAGMA application_id")
    version = _scalar(connection, "PRAGMA user_version")
    tables = _scalar(connection, "SELECT count(*) FROM sqlite_master")
    empty = application_id == 0 and version == 0 and tables == 0
    if not empty:
        _refuse_foreign_or_newer(db_path, application_id, version)
        _refuse_damaged(connection, db_path)
    # journal_mode=WAL is stored in the file, and only a checked database is written to.
    mode = _scalar(connection, "PRAGMA journal_mode = WAL")
    if mode != "wal":
        raise StoreError(
            f"{db_path}: SQLite could not switch to WAL mode (journal_mode is {mode!r}); "
            "put node.state_dir on a local filesystem"
        )
    if empty:
        # A kill before this commit leaves an empty database again: nothing used the
        # identity yet, so the next start simply draws a new one.
        return _create(connection, db_path, node_id or new_node_id())
    rows = connection.execute("SELECT node_id FROM node").fetchall()
    if len(rows) != 1:
        raise StoreError(_damaged(db_path, f"{len(rows)} identity rows instead of 1"))
    ((stored_id,),) = rows
    if node_id is not None and node_id != stored_id:
        raise StoreError(
            f"{db_path}: this state belongs to node id {stored_id!r}, but node.id is "
            f"configured as {node_id!r}. Set node.id to {stored_id!r} (or leave it unset "
            "to reuse the stored id), or point node.state_dir at a new directory to run "
            f"as a new node {node_id!r}"
        )
    _migrate(connection, version)  # only a state we will run on: an older crdtd may want it
    return str(stored_id)


def _create(connection: sqlite3.Connection, db_path: Path, node_id: str) -> str:
    with _transaction(connection):
        for statement in (*_SCHEMA, *_CURRENT_TABLES):
            connection.execute(statement)
        connection.execute(
            "INSERT INTO node (only_row, node_id, incarnation, epoch) VALUES (1, ?, ?, 0)",
            (node_id, _to_u64(0)),
        )
        # Both pragmas are part of this transaction, so "ours" and "has a schema" agree.
        connection.execute(f"PRAGMA application_id = {APPLICATION_ID}")
        connection.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
    # SQLite syncs the directory for the WAL it creates but not for the database file.
    _fsync_directory(db_path.parent)
    return node_id


def _migrate(connection: sqlite3.Connection, version: int) -> None:
    """Bring a checked database of an older schema *version* up to `SCHEMA_VERSION`,
    one step per transaction, so a kill midway leaves a consistent older version."""
    for step in range(version, SCHEMA_VERSION):
        with _transaction(connection):
            for statement in _MIGRATIONS[step]:
                if isinstance(statement, str):
                    connection.execute(statement)
                else:
                    statement(connection)
            connection.execute(f"PRAGMA user_version = {step + 1}")


def _refuse_foreign_or_newer(db_path: Path, application_id: int, version: int) -> None:
    if application_id != APPLICATION_ID:
        raise StoreError(
            f"{db_path}: an SQLite database that crdtd did not create (application_id "
            f"{application_id:#010x}, crdtd uses {APPLICATION_ID:#010x}). crdtd will not "
            "write into another program's database: move the file away, or point "
            "node.state_dir at an empty directory"
        )
    if version > SCHEMA_VERSION:
        raise StoreError(
            f"{db_path}: schema version {version} was written by a newer crdtd; this one "
            f"reads version {SCHEMA_VERSION}. Run the newer crdtd, or move the directory's "
            "contents away to start this node fresh (it loses its local state)"
        )
    if version < 1:
        raise StoreError(_damaged(db_path, f"unknown schema version {version}"))


def _refuse_damaged(connection: sqlite3.Connection, db_path: Path) -> None:
    problems = [row for (row,) in connection.execute("PRAGMA quick_check")]
    if problems != ["ok"]:
        raise StoreError(_damaged(db_path, "; ".join(problems[:3])))


def _damaged(db_path: Path, detail: str) -> str:
    return (
        f"{db_path}: the database is damaged ({detail}). crdtd will not start on damaged "
        "state, nor reset it by itself: restore the state directory from a backup, or "
        "move its contents away to start this node fresh (it rejoins with a new "
        "incarnation)"
    )


@contextlib.contextmanager
def _transaction(connection: sqlite3.Connection) -> Iterator[None]:
    """One transaction: committed (durably) at the end, rolled back if anything raises."""
    # IMMEDIATE takes the write lock at BEGIN instead of upgrading to it mid-transaction.
    connection.execute("BEGIN IMMEDIATE")
    try:
        yield
        connection.execute("COMMIT")
    except BaseException:
        if connection.in_transaction:
            connection.execute("ROLLBACK")
        raise


@contextlib.contextmanager
def _translated(db_path: Path, doing: str) -> Iterator[None]:
    """Turn errors SQLite reports about the file into `StoreError`.

    Errors without an SQLite code (a closed connection, a bad binding) are our misuse and
    pass through unchanged.
    """
    try:
        yield
    except sqlite3.Error as error:
        name = getattr(error, "sqlite_errorname", None)
        if name is None:
            raise
        if name in _DAMAGED_SQLITE_ERRORS:
            raise StoreError(_damaged(db_path, str(error))) from error
        raise StoreError(
            f"{db_path}: {doing} failed: {error} ({name}). Check the permissions, the free "
            "space and the health of the disk under node.state_dir"
        ) from error


def _prepare_directory(state_dir: Path) -> None:
    """Create *state_dir* durably if missing; refuse it if it holds files not ours."""
    try:
        missing = [path for path in (state_dir, *state_dir.parents) if not path.exists()]
        state_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        if state_dir in missing:
            os.chmod(state_dir, 0o700)  # mkdir's mode is filtered through the umask
        for path in missing:
            _fsync_directory(path.parent)  # so the new entry survives a power cut
        strangers = sorted(set(os.listdir(state_dir)) - _OURS)
    except OSError as error:
        raise StoreError(
            f"{state_dir}: cannot use as the state directory: {error.strerror}. Create it "
            "(mode 0700, owned by the user crdtd runs as) or set node.state_dir"
        ) from error
    if strangers:
        shown = ", ".join(strangers[:5]) + (", ..." if len(strangers) > 5 else "")
        raise StoreError(
            f"{state_dir}: not a crdtd state directory: it holds {shown}, which crdtd did "
            "not create. crdtd keeps its state in a directory of its own: point "
            "node.state_dir at an empty or new directory, or move those files away"
        )


def _lock(state_dir: Path) -> int:
    """Take the directory's lock, or raise `StoreError` naming the process that has it."""
    path = state_dir / LOCK_NAME
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    except OSError as error:
        raise StoreError(f"{path}: cannot open the lock file: {error.strerror}") from error
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = os.read(fd, 32).decode(errors="replace").strip()
        os.close(fd)
        raise StoreError(
            f"{state_dir}: another crdtd (pid {holder or 'unknown'}) is using this state "
            "directory. Stop it, or give this instance its own node.state_dir"
        ) from None
    # The pid is only for that message; the flock is what excludes.
    try:
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
    except OSError as error:
        os.close(fd)
        raise StoreError(f"{path}: cannot write the lock file: {error.strerror}") from error
    return fd


def _refuse_orphaned_sidecars(state_dir: Path) -> None:
    if (state_dir / DB_NAME).exists():
        return
    orphans = [name for name in _SIDECARS if (state_dir / name).exists()]
    if orphans:
        raise StoreError(
            f"{state_dir}: {', '.join(orphans)} exist but {DB_NAME} does not: the database "
            "was removed without its log, which may hold its latest commits. Restore "
            f"{DB_NAME}, or remove {', '.join(orphans)} too to start this node fresh"
        )


def _fsync_directory(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _scalar(connection: sqlite3.Connection, sql: str) -> Any:
    ((value,),) = connection.execute(sql).fetchall()
    return value


def _is_op(record: Record) -> bool:
    return isinstance(record, OpRecorded | OpsRecorded)


Deltas = int | bytes
"""A run's deltas as stored: the delta of a run of one op, else them all packed."""
RunRow = tuple[str, str, int, int, int, Deltas]
"""A row of ``op_runs``: variable, node id, incarnation and first nonce (these two
stored minus 2**63), how many ops, and their `Deltas`."""


def _packed(deltas: Sequence[int]) -> Deltas:
    if len(deltas) == 1:
        delta = deltas[0]
        if INT64_MIN <= delta <= INT64_MAX:
            return delta
    else:
        with contextlib.suppress(struct.error):
            return struct.pack(f">{len(deltas)}q", *deltas)
    bad = next(delta for delta in deltas if not INT64_MIN <= delta <= INT64_MAX)
    raise ValueError(f"expected a signed 64-bit delta, got {bad!r}")


def _unpacked(deltas: Deltas) -> tuple[int, ...]:
    if isinstance(deltas, int):
        return (deltas,)
    return struct.unpack(f">{len(deltas) // 8}q", deltas)


def _runs(ops: Iterable[OpRecorded | OpsRecorded]) -> Iterator[RunRow]:
    """*ops* as rows of ``op_runs``: each run of consecutive nonces of one variable and
    origin, in the order given (an `OpsRecorded` is one already, and joins the ops
    next to it), up to `RUN_MAX` ops a row."""
    variable = ""
    origin = None
    first = last = 0
    deltas: list[int] = []
    more: tuple[int, ...]
    for op in ops:
        if isinstance(op, OpRecorded):
            start, more = op.nonce, (op.delta,)
        else:
            start, more = op.first, op.deltas
        if not more:
            continue
        if start != last + 1 or op.origin != origin or op.variable != variable:
            if origin is not None:
                yield from _run_rows(variable, origin, first, deltas)
            variable, origin, first, deltas = op.variable, op.origin, start, []
        deltas.extend(more)
        last = start + len(more) - 1
    if origin is not None:
        yield from _run_rows(variable, origin, first, deltas)


def _run_rows(variable: str, origin: Origin, first: int, deltas: list[int]) -> Iterator[RunRow]:
    """The run of *deltas* from nonce *first*, `RUN_MAX` ops a row."""
    for start in range(0, len(deltas), RUN_MAX):
        part = deltas[start : start + RUN_MAX]
        yield _run_row(variable, origin, first + start, first + start + len(part) - 1, part)


def _run_row(variable: str, origin: Origin, first: int, last: int, deltas: list[int]) -> RunRow:
    incarnation = origin.incarnation
    # The nonces between the first and the last are in range if these two are.
    if not (first >= 0 and last <= UINT64_MAX and 0 <= incarnation <= UINT64_MAX):
        for value in (incarnation, first, last):
            _to_u64(value)  # raises for the one out of range
    bias = _U64_BIAS
    return (
        variable,
        origin.node_id,
        incarnation - bias,
        first - bias,
        len(deltas),
        _packed(deltas),
    )


def _expanded(rows: Iterable[tuple[str, str, int, int, Deltas, int | None]]) -> list[OpRecorded]:
    """The ops of rows of `_LIVE_RUNS`, one by one, without those the base covers."""
    ops: list[OpRecorded] = []
    origin = Origin("", 0)
    for variable, node_id, incarnation, first, deltas, upto in rows:
        if origin.node_id != node_id or origin.incarnation != _from_u64(incarnation):
            origin = Origin(node_id, _from_u64(incarnation))
        values = _unpacked(deltas)
        skip = 0 if upto is None else max(0, upto - first + 1)
        start = _from_u64(first)
        ops += [
            OpRecorded(variable, origin, start + k, values[k]) for k in range(skip, len(values))
        ]
    return ops


def _ops_into_runs(connection: sqlite3.Connection) -> None:
    """Schema 5 to 6: each run of consecutive nonces in ``ops`` becomes a row."""
    rows = connection.execute(
        "SELECT variable, node_id, incarnation, nonce, delta FROM ops"
        " ORDER BY variable, node_id, incarnation, nonce"
    )
    ops = (
        OpRecorded(variable, Origin(node_id, _from_u64(inc)), _from_u64(nonce), delta)
        for variable, node_id, inc, nonce, delta in rows
    )
    connection.executemany(_INSERT_RUN_AS_IS, _runs(ops))


def _origin_key(variable: str, origin: Origin) -> dict[str, object]:
    return {
        "variable": variable,
        "node_id": origin.node_id,
        "incarnation": _to_u64(origin.incarnation),
    }


def _to_u64(value: int) -> int:
    if not 0 <= value <= UINT64_MAX:
        raise ValueError(f"expected an unsigned 64-bit integer, got {value}")
    return value - _U64_BIAS


def _from_u64(stored: int) -> int:
    return stored + _U64_BIAS
