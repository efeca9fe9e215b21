"""Embedded MemVault on one SQLite file: WAL, FTS5 (BM25, an index per cube), version
history, float32 vectors.

Several threads and several processes may share one file. Writes take the database write
lock up front (BEGIN IMMEDIATE) so version checks and the cube clock are race-free.
Each process keeps an in-memory vector index per cube and catches up with other writers
through `vec_log`, an append-only list of vector changes.
"""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager, suppress
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from memosys.errors import ConflictError, NotFoundError, StorageError, ValidationError
from memosys.infra.vault import sqlite_fts as fts
from memosys.infra.vault.base import (
    Change,
    Snapshot,
    Vault,
    VersionRecord,
    Write,
)
from memosys.infra.vault.events_sql import record_commit, record_purge
from memosys.infra.vault.graph_sql import SQLGraph
from memosys.infra.vault.graph_writes import on_commit, on_purge
from memosys.infra.vault.sqlite_events import DIALECT as EVENTS
from memosys.infra.vault.sqlite_events import EVENTS_SCHEMA
from memosys.infra.vault.sqlite_fts import FTS_SCHEMA
from memosys.infra.vault.sqlite_graph import GRAPH_SCHEMA, SQLiteGraphDB
from memosys.infra.vault.sqlite_import import SQLiteImportMixin
from memosys.infra.vault.sqlite_jobs import SQLiteJobsMixin
from memosys.infra.vault.sqlite_rows import chunks, from_ts, to_ts
from memosys.infra.vault.sqlite_search import SQLiteSearchMixin, _CubeVectors
from memosys.infra.vault.sqlite_topics import TOPIC_SCHEMA
from memosys.infra.vault.topic_sql import SQLTopics, on_commit_topics, on_purge_topics
from memosys.types import CubeConfig, MemCube, MemoryItem, Stats

SCHEMA_VERSION = 2
"""2: one full-text index per cube (sqlite_fts.py); 1 had one for the whole file."""

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS cubes (
    id TEXT PRIMARY KEY,
    name TEXT NOT NULL UNIQUE,
    clock INTEGER NOT NULL DEFAULT 0,
    doc TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS items (
    rowid INTEGER PRIMARY KEY,
    id TEXT NOT NULL UNIQUE,
    cube_id TEXT NOT NULL REFERENCES cubes(id),
    memory_type TEXT NOT NULL,
    state TEXT NOT NULL,
    user_id TEXT, agent_id TEXT, session_id TEXT, owner TEXT,
    event_time REAL NOT NULL,
    valid_from REAL, valid_to REAL,
    created_at REAL NOT NULL,
    version INTEGER NOT NULL,
    doc TEXT NOT NULL,
    access_count INTEGER NOT NULL DEFAULT 0,
    last_accessed REAL,
    used_in_answer_count INTEGER NOT NULL DEFAULT 0,
    feedback_score REAL NOT NULL DEFAULT 0,
    heat REAL NOT NULL DEFAULT 0
);
CREATE INDEX IF NOT EXISTS items_cube_state ON items(cube_id, state, created_at);
CREATE INDEX IF NOT EXISTS items_cube_session ON items(cube_id, session_id);
CREATE INDEX IF NOT EXISTS items_cube_user ON items(cube_id, user_id);
CREATE INDEX IF NOT EXISTS items_cube_event ON items(cube_id, event_time);
CREATE TABLE IF NOT EXISTS item_tags (
    item_rowid INTEGER NOT NULL REFERENCES items(rowid) ON DELETE CASCADE,
    tag TEXT NOT NULL,
    PRIMARY KEY (tag, item_rowid)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS item_tags_item ON item_tags(item_rowid);
CREATE TABLE IF NOT EXISTS item_versions (
    item_id TEXT NOT NULL,
    version INTEGER NOT NULL,
    cube_id TEXT NOT NULL,
    clock INTEGER NOT NULL,
    op TEXT NOT NULL,
    at REAL NOT NULL,
    doc TEXT NOT NULL,
    PRIMARY KEY (item_id, version)
);
CREATE INDEX IF NOT EXISTS item_versions_clock ON item_versions(cube_id, clock);
CREATE TABLE IF NOT EXISTS vectors (
    item_rowid INTEGER PRIMARY KEY REFERENCES items(rowid) ON DELETE CASCADE,
    cube_id TEXT NOT NULL,
    vec BLOB NOT NULL
);
CREATE TABLE IF NOT EXISTS vec_log (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    cube_id TEXT NOT NULL,
    item_rowid INTEGER NOT NULL,
    removed INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS vec_log_cube ON vec_log(cube_id, seq);
CREATE TABLE IF NOT EXISTS snapshots (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    cube_id TEXT NOT NULL REFERENCES cubes(id),
    clock INTEGER NOT NULL,
    label TEXT NOT NULL,
    at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS jobs (
    id TEXT PRIMARY KEY,
    kind TEXT NOT NULL,
    cube_id TEXT,
    payload TEXT NOT NULL,
    state TEXT NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0,
    lease_until REAL,
    created_at REAL NOT NULL,
    updated_at REAL NOT NULL,
    result TEXT,
    error TEXT
);
CREATE INDEX IF NOT EXISTS jobs_claim ON jobs(state, kind, created_at);
"""


def _item_doc(item: MemoryItem) -> str:
    return item.model_dump_json(exclude={"stats"})


class SQLiteVault(SQLiteSearchMixin, SQLiteJobsMixin, SQLiteImportMixin, SQLGraph, SQLTopics,
                  Vault):
    def __init__(self, path: str | Path, *, ann_threshold: int | None = None) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._local = threading.local()
        self._conns: list[sqlite3.Connection] = []
        self._conns_lock = threading.Lock()
        self._vectors: dict[str, _CubeVectors] = {}
        self._vectors_lock = threading.Lock()
        self._ann_threshold = ann_threshold
        self._closed = False
        # Idempotent DDL, run outside a transaction: executescript commits on its own.
        self._conn().executescript(_SCHEMA)
        self._conn().executescript(GRAPH_SCHEMA)
        self._conn().executescript(TOPIC_SCHEMA)
        self._conn().executescript(EVENTS_SCHEMA)  # change events (infra/events.py)
        self._conn().executescript(FTS_SCHEMA)
        with self._write() as conn:
            found = conn.execute("SELECT value FROM meta WHERE key='schema_version'").fetchone()
            if found is None:
                conn.execute(
                    "INSERT INTO meta VALUES ('schema_version', ?)", (str(SCHEMA_VERSION),)
                )
            elif int(found[0]) > SCHEMA_VERSION:
                raise StorageError(
                    f"{self.path} has schema version {found[0]}; this memosys knows "
                    f"{SCHEMA_VERSION}. Upgrade memosys."
                )
            elif int(found[0]) < SCHEMA_VERSION:
                if fts.has_legacy_index(conn):
                    fts.split_legacy_index(conn)
                conn.execute("UPDATE meta SET value = ? WHERE key = 'schema_version'",
                             (str(SCHEMA_VERSION),))

    # --- connections -----------------------------------------------------------------
    def _conn(self) -> sqlite3.Connection:
        if self._closed:
            raise StorageError("the vault is closed")
        conn: sqlite3.Connection | None = getattr(self._local, "conn", None)
        if conn is None:
            conn = sqlite3.connect(self.path, timeout=60, isolation_level=None)
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=NORMAL")
            conn.execute("PRAGMA foreign_keys=ON")
            # Erased pages are zeroed so purged text does not linger in free pages.
            conn.execute("PRAGMA secure_delete=ON")
            conn.execute("PRAGMA busy_timeout=60000")
            self._local.conn = conn
            with self._conns_lock:
                self._conns.append(conn)
        return conn

    @contextmanager
    def _write(self) -> Iterator[sqlite3.Connection]:
        conn = self._conn()
        try:
            conn.execute("BEGIN IMMEDIATE")
        except sqlite3.OperationalError as exc:
            raise StorageError(f"could not lock {self.path} for writing: {exc}") from exc
        try:
            yield conn
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        else:
            conn.execute("COMMIT")

    @contextmanager
    def _graph_read(self) -> Iterator[SQLiteGraphDB]:
        yield SQLiteGraphDB(self._conn())

    @contextmanager
    def _graph_write(self) -> Iterator[SQLiteGraphDB]:
        with self._write() as conn:
            yield SQLiteGraphDB(conn)

    def close(self) -> None:
        with self._conns_lock:
            for conn in self._conns:
                # A connection made by another thread refuses close(); sqlite frees it
                # when that thread's objects go.
                with suppress(sqlite3.ProgrammingError):
                    conn.close()
            self._conns.clear()
        self._closed = True

    # --- cubes -----------------------------------------------------------------------
    def create_cube(self, cube: MemCube) -> MemCube:
        with self._write() as conn:
            try:
                conn.execute(
                    "INSERT INTO cubes (id, name, clock, doc) VALUES (?, ?, ?, ?)",
                    (cube.id, cube.name, cube.clock, cube.model_dump_json()),
                )
            except sqlite3.IntegrityError:
                raise ConflictError(f"a cube named {cube.name!r} already exists") from None
            fts.table_for(conn, cube.id)
        return cube

    def get_cube(self, id_or_name: str) -> MemCube:
        row = self._conn().execute(
            "SELECT doc, clock FROM cubes WHERE id = ? OR name = ?", (id_or_name, id_or_name)
        ).fetchone()
        if row is None:
            raise NotFoundError(f"no cube {id_or_name!r}")
        return MemCube.model_validate_json(row[0]).model_copy(update={"clock": row[1]})

    def list_cubes(self) -> list[MemCube]:
        rows = self._conn().execute("SELECT doc, clock FROM cubes ORDER BY name").fetchall()
        return [MemCube.model_validate_json(d).model_copy(update={"clock": c}) for d, c in rows]

    def replace_vectors(
        self, cube_id: str, vectors: dict[str, np.ndarray], config: CubeConfig
    ) -> None:
        cube = self.get_cube(cube_id)
        with self._write() as conn:
            rowids = self._rowids(conn, list(vectors))
            for item_id, vec in vectors.items():
                self._store_vector(conn, cube.id, rowids[item_id], vec, config.embedding_dim)
            doc = cube.model_copy(update={"config": config}).model_dump_json()
            conn.execute("UPDATE cubes SET doc = ? WHERE id = ?", (doc, cube.id))
        with self._vectors_lock:
            self._vectors.pop(cube.id, None)  # dimension may have changed: rebuild lazily

    # --- items -----------------------------------------------------------------------
    def commit(self, cube_id: str, writes: Sequence[Write]) -> list[MemoryItem]:
        if not writes:
            return []
        now = datetime.now(UTC)
        stored: list[MemoryItem] = []
        with self._write() as conn:
            row = conn.execute(
                "SELECT clock, doc FROM cubes WHERE id = ?", (cube_id,)
            ).fetchone()
            if row is None:
                raise NotFoundError(f"no cube {cube_id!r}")
            clock = row[0] + 1
            dim = MemCube.model_validate_json(row[1]).config.embedding_dim
            conn.execute("UPDATE cubes SET clock = ? WHERE id = ?", (clock, cube_id))
            for write in writes:
                stored.append(self._apply(conn, cube_id, clock, dim, write, now))
            # the memories' graph edges change in the same transaction (graph_base.py)
            on_commit(SQLiteGraphDB(conn), cube_id, [(i, i.version == 1) for i in stored],
                      self.graph_deriver)
            on_commit_topics(SQLiteGraphDB(conn), cube_id,
                             [(i, w.vector) for i, w in zip(stored, writes, strict=True)],
                             self.topic_policy)
            # and their change events, in the same transaction (infra/events.py)
            record_commit(conn, EVENTS, stored, [w.op for w in writes])
        return stored

    def _apply(
        self,
        conn: sqlite3.Connection,
        cube_id: str,
        clock: int,
        dim: int,
        write: Write,
        now: datetime,
    ) -> MemoryItem:
        item = write.item
        if item.cube_id != cube_id:
            raise ValidationError(f"item {item.id} belongs to cube {item.cube_id}, not {cube_id}")
        current = conn.execute(
            "SELECT rowid, version FROM items WHERE id = ?", (item.id,)
        ).fetchone()
        if write.expected_version is None:
            if current is not None:
                raise ConflictError(f"memory {item.id} already exists")
            version = 1
        else:
            if current is None:
                raise NotFoundError(f"no memory {item.id!r}")
            if current[1] != write.expected_version:
                raise ConflictError(
                    f"memory {item.id} is at version {current[1]}, "
                    f"expected {write.expected_version}: it changed meanwhile"
                )
            version = current[1] + 1
            if write.vector is None and conn.execute(
                "SELECT 1 FROM vectors WHERE item_rowid = ?", (current[0],)
            ).fetchone() is None:
                raise ValidationError(f"memory {item.id} has no embedding; pass one")
        if write.expected_version is None and write.vector is None:
            raise ValidationError(f"new memory {item.id} needs an embedding")
        item = item.model_copy(
            update={"version": version, "updated_at": now if version > 1 else item.updated_at}
        )
        rowid = self._write_item_row(conn, cube_id, item, None if current is None else current[0])
        conn.execute(
            "INSERT INTO item_versions (item_id, version, cube_id, clock, op, at, doc) "
            "VALUES (?,?,?,?,?,?,?)",
            (item.id, version, cube_id, clock, write.op, now.timestamp(), _item_doc(item)),
        )
        if write.vector is not None:
            self._store_vector(conn, cube_id, rowid, write.vector, dim)
        return item

    @staticmethod
    def _write_item_row(
        conn: sqlite3.Connection, cube_id: str, item: MemoryItem, rowid: int | None
    ) -> int:
        """Insert (rowid None) or overwrite an item's current row, tags and text index."""
        src = item.source
        values = (
            item.id, cube_id, item.memory_type.value, item.state.value, src.user, src.agent,
            src.session, item.owner, item.event_time.timestamp(), to_ts(item.valid_from),
            to_ts(item.valid_to), item.created_at.timestamp(), item.version, _item_doc(item),
        )
        if rowid is None:
            cur = conn.execute(
                "INSERT INTO items (id, cube_id, memory_type, state, user_id, agent_id, "
                "session_id, owner, event_time, valid_from, valid_to, created_at, version, doc)"
                " VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?)",
                values,
            )
            rowid = int(cur.lastrowid or 0)
        else:
            (was_in,) = conn.execute("SELECT cube_id FROM items WHERE rowid = ?",
                                     (rowid,)).fetchone()
            fts.unindex(conn, was_in, rowid)
            conn.execute(
                "UPDATE items SET id=?, cube_id=?, memory_type=?, state=?, user_id=?, "
                "agent_id=?, session_id=?, owner=?, event_time=?, valid_from=?, valid_to=?, "
                "created_at=?, version=?, doc=? WHERE rowid = ?",
                (*values, rowid),
            )
            conn.execute("DELETE FROM item_tags WHERE item_rowid = ?", (rowid,))
        conn.executemany(
            "INSERT INTO item_tags (item_rowid, tag) VALUES (?, ?)",
            [(rowid, tag) for tag in item.tags],
        )
        fts.index(conn, cube_id, rowid, item.text, item.tags)
        return rowid

    def _store_vector(
        self, conn: sqlite3.Connection, cube_id: str, rowid: int, vec: np.ndarray, dim: int
    ) -> None:
        arr = np.asarray(vec, dtype=np.float32).reshape(-1)
        if arr.shape[0] != dim:
            raise ValidationError(f"embedding has dimension {arr.shape[0]}, cube expects {dim}")
        conn.execute(
            "INSERT OR REPLACE INTO vectors (item_rowid, cube_id, vec) VALUES (?, ?, ?)",
            (rowid, cube_id, arr.tobytes()),
        )
        conn.execute(
            "INSERT INTO vec_log (cube_id, item_rowid, removed) VALUES (?, ?, 0)",
            (cube_id, rowid),
        )

    @staticmethod
    def _rowids(conn: sqlite3.Connection, ids: Sequence[str]) -> dict[str, int]:
        out: dict[str, int] = {}
        for chunk in chunks(list(ids), 500):
            marks = ",".join("?" * len(chunk))
            for item_id, rowid in conn.execute(
                f"SELECT id, rowid FROM items WHERE id IN ({marks})", chunk
            ):
                out[item_id] = rowid
        missing = [i for i in ids if i not in out]
        if missing:
            raise NotFoundError(f"no memory {missing[0]!r}")
        return out

    def _row_to_item(self, row: sqlite3.Row | tuple[Any, ...]) -> MemoryItem:
        doc, access, last, used, feedback, heat = row
        item = MemoryItem.model_validate_json(doc)
        item.stats = Stats(
            access_count=access,
            last_accessed=from_ts(last),
            used_in_answer_count=used,
            feedback_score=feedback,
            heat=heat,
        )
        return item

    _ITEM_COLS = "doc, access_count, last_accessed, used_in_answer_count, feedback_score, heat"

    def get_many(self, ids: Sequence[str]) -> dict[str, MemoryItem]:
        out: dict[str, MemoryItem] = {}
        conn = self._conn()
        for chunk in chunks(list(dict.fromkeys(ids)), 500):
            marks = ",".join("?" * len(chunk))
            for row in conn.execute(
                f"SELECT {self._ITEM_COLS} FROM items WHERE id IN ({marks})", chunk
            ):
                item = self._row_to_item(row)
                out[item.id] = item
        return out

    def history(self, item_id: str) -> list[VersionRecord]:
        rows = self._conn().execute(
            "SELECT doc, clock, op, at FROM item_versions WHERE item_id = ? ORDER BY version",
            (item_id,),
        ).fetchall()
        return [
            VersionRecord(MemoryItem.model_validate_json(d), c, op,
                          from_ts(at) or datetime.now(UTC))
            for d, c, op, at in rows
        ]

    def changes_since(self, cube_id: str, clock: int) -> list[Change]:
        conn = self._conn()
        conn.execute("BEGIN")  # one consistent read across the queries below
        try:
            ids = [
                r[0]
                for r in conn.execute(
                    "SELECT DISTINCT item_id FROM item_versions WHERE cube_id = ? AND clock > ?",
                    (cube_id, clock),
                )
            ]
            current = self.get_many(ids)
            changes = []
            for item_id in ids:
                if item_id not in current:
                    continue  # purged since: nothing left to restore
                row = conn.execute(
                    "SELECT doc FROM item_versions WHERE item_id = ? AND clock <= ? "
                    "ORDER BY version DESC LIMIT 1",
                    (item_id, clock),
                ).fetchone()
                then = MemoryItem.model_validate_json(row[0]) if row else None
                changes.append(Change(item_id, current[item_id], then))
        finally:
            conn.execute("COMMIT")
        return changes

    def purge(self, ids: Sequence[str]) -> int:
        erased = 0
        touched: set[str] = set()
        with self._write() as conn:
            for chunk in chunks(list(dict.fromkeys(ids)), 500):
                marks = ",".join("?" * len(chunk))
                rows = conn.execute(
                    f"SELECT rowid, id, cube_id FROM items WHERE id IN ({marks})", chunk
                ).fetchall()
                record_purge(conn, EVENTS, [r[1] for r in rows])  # before the rows go
                for rowid, item_id, cube_id in rows:
                    fts.unindex(conn, cube_id, rowid)
                    touched.add(cube_id)
                    conn.execute("DELETE FROM vectors WHERE item_rowid = ?", (rowid,))
                    conn.execute("DELETE FROM item_tags WHERE item_rowid = ?", (rowid,))
                    conn.execute("DELETE FROM item_versions WHERE item_id = ?", (item_id,))
                    conn.execute("DELETE FROM items WHERE rowid = ?", (rowid,))
                    conn.execute(
                        "INSERT INTO vec_log (cube_id, item_rowid, removed) VALUES (?, ?, 1)",
                        (cube_id, rowid),
                    )
                    erased += 1
            on_purge(SQLiteGraphDB(conn), [i for i in dict.fromkeys(ids)])
            on_purge_topics(SQLiteGraphDB(conn), [i for i in dict.fromkeys(ids)],
                            self.topic_policy)
            fts.optimize(conn, sorted(touched))
        if erased:
            conn = self._conn()
            # Old page images in the WAL would still hold the text.
            conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        return erased

    # --- statistics ------------------------------------------------------------------
    def record_access(self, ids: Sequence[str], *, used_in_answer: bool = False) -> None:
        if not ids:
            return
        now = datetime.now(UTC).timestamp()
        with self._write() as conn:
            conn.executemany(
                "UPDATE items SET access_count = access_count + 1, last_accessed = ?, "
                "used_in_answer_count = used_in_answer_count + ?, "
                "heat = heat + ? WHERE id = ?",
                [(now, int(used_in_answer), 2.0 if used_in_answer else 1.0, i) for i in ids],
            )

    def add_feedback(self, item_id: str, delta: float) -> None:
        with self._write() as conn:
            cur = conn.execute(
                "UPDATE items SET feedback_score = feedback_score + ? WHERE id = ?",
                (delta, item_id),
            )
            if cur.rowcount == 0:
                raise NotFoundError(f"no memory {item_id!r}")

    # --- snapshots -------------------------------------------------------------------
    def create_snapshot(self, cube_id: str, label: str = "") -> Snapshot:
        now = datetime.now(UTC)
        with self._write() as conn:
            row = conn.execute("SELECT clock FROM cubes WHERE id = ?", (cube_id,)).fetchone()
            if row is None:
                raise NotFoundError(f"no cube {cube_id!r}")
            cur = conn.execute(
                "INSERT INTO snapshots (cube_id, clock, label, at) VALUES (?, ?, ?, ?)",
                (cube_id, row[0], label, now.timestamp()),
            )
        return Snapshot(cube_id, row[0], now, label, int(cur.lastrowid or 0))

    def list_snapshots(self, cube_id: str) -> list[Snapshot]:
        rows = self._conn().execute(
            "SELECT id, clock, label, at FROM snapshots WHERE cube_id = ? ORDER BY id",
            (cube_id,),
        ).fetchall()
        return [Snapshot(cube_id, c, from_ts(at) or datetime.now(UTC), lb, i)
                for i, c, lb, at in rows]
