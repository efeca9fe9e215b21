"""`memosys db copy`: move a whole installation between SQLite and PostgreSQL.

Copies everything a vault holds, row for row: cubes with their version clocks, items with
their usage statistics, every stored version (with its clock, operation and time),
embeddings, snapshots and background jobs. The item and version documents are copied
verbatim, so ids, versions, timestamps and texts are identical on both sides.

Afterwards both sides are read back and compared per table: a row count and a checksum.
The checksum is order-independent (the sum, modulo 2**256, of one SHA-256 per row over the
row's identity and content), so it is computed while streaming and does not depend on
either database's sort order. Each side is loaded in one transaction: a failed copy
leaves the target as it was.
"""

from __future__ import annotations

import hashlib
import json
import sqlite3
from collections.abc import Callable, Iterator, Sequence
from contextlib import closing
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np

from memosys.errors import ConflictError, StorageError, ValidationError
from memosys.infra.vault import sqlite_fts as fts
from memosys.types import MemoryItem

TABLES = ("cubes", "items", "item_versions", "vectors", "item_stats", "snapshots", "jobs")
_BATCH = 1000
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)

Progress = Callable[[str, int], None]
"""Called with (table, rows copied so far)."""


# --- rows ----------------------------------------------------------------------------------
# Every side reads and writes the same plain tuples:
#   cube     (id, name, clock, doc)
#   item     (id, cube_id, doc, access_count, last_accessed, used_in_answer_count,
#             feedback_score, heat)                      -- stats travel with the item
#   version  (item_id, version, cube_id, clock, op, at, doc)
#   vector   (item_id, cube_id, float32 array)
#   snapshot (id, cube_id, clock, label, at)
#   job      (id, kind, cube_id, payload, state, attempts, lease_until, created_at,
#             updated_at, result, error)
# Times are aware datetimes (UTC).


def _us(value: datetime | None) -> str:
    if value is None:
        return "-"
    return str((value - _EPOCH) // timedelta(microseconds=1))


def _sha(text: str | bytes) -> str:
    data = text.encode() if isinstance(text, str) else text
    return hashlib.sha256(data).hexdigest()


def _row_keys(table: str, row: tuple[Any, ...]) -> str:
    """The canonical text of one row for its table's checksum."""
    if table == "cubes":
        return "\t".join((row[0], row[1], str(row[2]), _sha(row[3])))
    if table == "items":
        item = MemoryItem.model_validate_json(row[2])
        return "\t".join((row[0], row[1], str(item.version), _sha(item.text), _sha(row[2])))
    if table == "item_stats":
        return "\t".join((row[0], str(row[3]), _us(row[4]), str(row[5]), repr(float(row[6])),
                          repr(float(row[7]))))
    if table == "item_versions":
        return "\t".join((row[0], str(row[1]), row[2], str(row[3]), row[4], _us(row[5]),
                          _sha(row[6])))
    if table == "vectors":
        vec = np.asarray(row[2], dtype="<f4")
        return "\t".join((row[0], row[1], _sha(vec.tobytes())))
    if table == "snapshots":
        return "\t".join((str(row[0]), row[1], str(row[2]), row[3], _us(row[4])))
    if table == "jobs":
        return "\t".join((row[0], row[1], row[2] or "-", _sha(row[3]), row[4], str(row[5]),
                          _us(row[6]), _us(row[7]), _us(row[8]), _sha(row[9] or "-"),
                          _sha(row[10] or "-")))
    raise ValueError(table)


@dataclass
class Tally:
    rows: int = 0
    total: int = 0

    def add(self, table: str, row: tuple[Any, ...]) -> None:
        self.rows += 1
        self.total = (self.total + int(_sha(_row_keys(table, row)), 16)) % (1 << 256)

    @property
    def checksum(self) -> str:
        return f"{self.total:064x}"


@dataclass(frozen=True)
class TableCheck:
    table: str
    source_rows: int
    target_rows: int
    source_checksum: str
    target_checksum: str

    @property
    def ok(self) -> bool:
        return (self.source_rows, self.source_checksum) == (self.target_rows,
                                                             self.target_checksum)


# --- sides ---------------------------------------------------------------------------------
class _Side:
    """One database, as `db copy` reads and writes it."""

    name = ""

    def is_empty(self) -> bool: ...
    def read(self, table: str) -> Iterator[list[tuple[Any, ...]]]: ...
    def close(self) -> None: ...

    def load(self, source: _Side, progress: Progress | None, *, wipe: bool = False) -> None:
        """Write everything `source` holds, in one transaction; `wipe` first empties the
        memosys tables in that same transaction."""

    def checksums(self) -> dict[str, Tally]:
        out: dict[str, Tally] = {}
        for table in TABLES:
            tally = Tally()
            for batch in self.read("items" if table == "item_stats" else table):
                for row in batch:
                    tally.add(table, row)
            out[table] = tally
        return out


class SQLiteSide(_Side):
    """The embedded file, read and written with its own schema (its SCHEMA_VERSION)."""

    def __init__(self, path: Path) -> None:
        from memosys.infra.vault.sqlite import SCHEMA_VERSION, SQLiteVault

        self.name = f"sqlite:///{path}"
        self.path = path
        SQLiteVault(path).close()  # creates or checks the schema
        self.conn = sqlite3.connect(path, isolation_level=None, timeout=60)
        found = self.conn.execute("SELECT value FROM meta WHERE key='schema_version'").fetchone()
        if found is None or int(found[0]) != SCHEMA_VERSION:
            raise StorageError(f"{path}: unexpected schema version {found}")

    def close(self) -> None:
        self.conn.close()

    def _has_jobs(self) -> bool:
        return self.conn.execute(
            "SELECT 1 FROM sqlite_master WHERE type='table' AND name='jobs'").fetchone() is not None

    def is_empty(self) -> bool:
        tables = ["cubes", "items", "snapshots"] + (["jobs"] if self._has_jobs() else [])
        return not any(self.conn.execute(f"SELECT 1 FROM {t} LIMIT 1").fetchone() for t in tables)

    def _wipe(self, conn: sqlite3.Connection) -> None:
        fts.empty(conn)
        for table in ("item_tags", "vectors", "vec_log", "item_versions",
                      "items", "snapshots", "cubes"):
            conn.execute(f"DELETE FROM {table}")
        if self._has_jobs():
            conn.execute("DELETE FROM jobs")

    def read(self, table: str) -> Iterator[list[tuple[Any, ...]]]:
        queries = {
            "cubes": "SELECT id, name, clock, doc FROM cubes ORDER BY rowid",
            "items": "SELECT id, cube_id, doc, access_count, last_accessed, "
                     "used_in_answer_count, feedback_score, heat FROM items ORDER BY rowid",
            "item_versions": "SELECT item_id, version, cube_id, clock, op, at, doc "
                             "FROM item_versions ORDER BY rowid",
            "vectors": "SELECT i.id, v.cube_id, v.vec FROM vectors v "
                       "JOIN items i ON i.rowid = v.item_rowid ORDER BY v.item_rowid",
            "snapshots": "SELECT id, cube_id, clock, label, at FROM snapshots ORDER BY id",
            "jobs": "SELECT id, kind, cube_id, payload, state, attempts, lease_until, "
                    "created_at, updated_at, result, error FROM jobs ORDER BY rowid",
        }
        if table == "jobs" and not self._has_jobs():
            return
        cur = self.conn.execute(queries[table])
        while rows := cur.fetchmany(_BATCH):
            yield [_from_sqlite(table, r) for r in rows]

    def load(self, source: _Side, progress: Progress | None, *, wipe: bool = False) -> None:
        with _sqlite_tx(self.conn) as conn:
            if wipe:
                self._wipe(conn)
            for table in ("cubes", "items", "item_versions", "vectors", "snapshots", "jobs"):
                done = 0
                for batch in source.read(table):
                    self._write(conn, table, batch)
                    done += len(batch)
                    if progress:
                        progress(table, done)

    def _write(self, conn: sqlite3.Connection, table: str, rows: list[tuple[Any, ...]]) -> None:
        if table == "cubes":
            conn.executemany("INSERT INTO cubes (id, name, clock, doc) VALUES (?,?,?,?)", rows)
        elif table == "items":
            for item_id, cube_id, doc, access, last, used, feedback, heat in rows:
                item = MemoryItem.model_validate_json(doc)
                src = item.source
                cur = conn.execute(
                    "INSERT INTO items (id, cube_id, memory_type, state, user_id, agent_id, "
                    "session_id, owner, event_time, valid_from, valid_to, created_at, version, "
                    "doc, access_count, last_accessed, used_in_answer_count, feedback_score, "
                    "heat) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)",
                    (item_id, cube_id, item.memory_type.value, item.state.value, src.user,
                     src.agent, src.session, item.owner, item.event_time.timestamp(),
                     _ts(item.valid_from), _ts(item.valid_to), item.created_at.timestamp(),
                     item.version, doc, access, _ts(last), used, feedback, heat),
                )
                rowid = cur.lastrowid
                conn.executemany("INSERT INTO item_tags (item_rowid, tag) VALUES (?, ?)",
                                 [(rowid, tag) for tag in item.tags])
                fts.index(conn, cube_id, int(rowid or 0), item.text, item.tags)
        elif table == "item_versions":
            conn.executemany(
                "INSERT INTO item_versions (item_id, version, cube_id, clock, op, at, doc) "
                "VALUES (?,?,?,?,?,?,?)",
                [(i, v, c, k, op, _ts(at), doc) for i, v, c, k, op, at, doc in rows],
            )
        elif table == "vectors":
            ids = [r[0] for r in rows]
            marks = ",".join("?" * len(ids))
            rowids = dict(conn.execute(f"SELECT id, rowid FROM items WHERE id IN ({marks})", ids))
            conn.executemany(
                "INSERT INTO vectors (item_rowid, cube_id, vec) VALUES (?, ?, ?)",
                [(rowids[i], c, np.asarray(v, dtype=np.float32).tobytes()) for i, c, v in rows],
            )
            conn.executemany("INSERT INTO vec_log (cube_id, item_rowid, removed) VALUES (?, ?, 0)",
                             [(c, rowids[i]) for i, c, _ in rows])
        elif table == "snapshots":
            conn.executemany(
                "INSERT INTO snapshots (id, cube_id, clock, label, at) VALUES (?,?,?,?,?)",
                [(i, c, k, lb, _ts(at)) for i, c, k, lb, at in rows],
            )
        elif table == "jobs":
            if not self._has_jobs():
                raise StorageError(f"{self.path} has no jobs table; upgrade memosys")
            conn.executemany(
                "INSERT INTO jobs (id, kind, cube_id, payload, state, attempts, lease_until, "
                "created_at, updated_at, result, error) VALUES (?,?,?,?,?,?,?,?,?,?,?)",
                [(r[0], r[1], r[2], r[3], r[4], r[5], _ts(r[6]), _ts(r[7]), _ts(r[8]), r[9],
                  r[10]) for r in rows],
            )


class PostgresSide(_Side):
    def __init__(self, url: str) -> None:
        from memosys.infra.vault.postgres import PostgresVault

        self.name = _redact(url)
        self.vault = PostgresVault(url, pool_size=2)

    def close(self) -> None:
        self.vault.close()

    def is_empty(self) -> bool:
        with self.vault.connection() as conn:
            return not any(conn.execute(f"SELECT 1 FROM {t} LIMIT 1").fetchone()
                           for t in ("cubes", "items", "snapshots", "jobs"))

    @staticmethod
    def _wipe(conn: Any) -> None:
        from psycopg import sql

        for (name,) in conn.execute(
                "SELECT ann_index FROM cubes WHERE ann_index IS NOT NULL").fetchall():
            conn.execute(sql.SQL("DROP INDEX IF EXISTS {}").format(sql.Identifier(name)))
        conn.execute("TRUNCATE cubes, items, item_stats, item_versions, vectors, snapshots, jobs")

    def read(self, table: str) -> Iterator[list[tuple[Any, ...]]]:
        queries = {
            "cubes": "SELECT id, name, clock, doc FROM cubes",
            "items": "SELECT i.id, i.cube_id, i.doc, s.access_count, s.last_accessed, "
                     "s.used_in_answer_count, s.feedback_score, s.heat "
                     "FROM items i JOIN item_stats s ON s.item_id = i.id ORDER BY i.seq",
            "item_versions": "SELECT item_id, version, cube_id, clock, op, at, doc "
                             "FROM item_versions",
            "vectors": "SELECT v.item_id, v.cube_id, v.embedding FROM vectors v "
                       "JOIN items i ON i.id = v.item_id ORDER BY i.seq",
            "snapshots": "SELECT id, cube_id, clock, label, at FROM snapshots ORDER BY id",
            "jobs": "SELECT id, kind, cube_id, payload, state, attempts, lease_until, "
                    "created_at, updated_at, result, error FROM jobs ORDER BY seq",
        }
        # A server-side cursor streams big tables instead of loading them whole.
        with self.vault.connection() as conn, conn.transaction(), conn.cursor(
                name=f"copy_{table}") as cur:
            cur.itersize = _BATCH
            cur.execute(queries[table])
            while rows := cur.fetchmany(_BATCH):
                yield [_from_postgres(table, r) for r in rows]

    def load(self, source: _Side, progress: Progress | None, *, wipe: bool = False) -> None:
        from memosys.infra.vault.postgres import _INSERT_ITEM, _item_row

        with self.vault.connection() as conn, conn.transaction(), conn.cursor() as cur:
            if wipe:
                self._wipe(conn)
            for table in ("cubes", "items", "item_versions", "vectors", "snapshots", "jobs"):
                done = 0
                for rows in source.read(table):
                    if table == "cubes":
                        cur.executemany(
                            "INSERT INTO cubes (id, name, clock, dim, doc) VALUES (%s,%s,%s,%s,%s)",
                            [(i, n, c, json.loads(d)["config"]["embedding_dim"], d)
                             for i, n, c, d in rows])
                    elif table == "items":
                        # the document goes in verbatim; the index columns come from it
                        values = [_item_row(MemoryItem.model_validate_json(r[2])) for r in rows]
                        cur.executemany(_INSERT_ITEM, [
                            (*v[:14], r[2], v[15]) for v, r in zip(values, rows, strict=True)])
                        cur.executemany(
                            "INSERT INTO item_stats (item_id, access_count, last_accessed, "
                            "used_in_answer_count, feedback_score, heat) "
                            "VALUES (%s,%s,%s,%s,%s,%s)",
                            [(r[0], r[3], r[4], r[5], r[6], r[7]) for r in rows])
                    elif table == "item_versions":
                        cur.executemany(
                            "INSERT INTO item_versions (item_id, version, cube_id, clock, op, at, "
                            "doc) VALUES (%s,%s,%s,%s,%s,%s,%s)", rows)
                    elif table == "vectors":
                        cur.executemany(
                            "INSERT INTO vectors (item_id, cube_id, embedding) "
                            "VALUES (%s, %s, %b)",
                            [(i, c, np.asarray(v, dtype=np.float32)) for i, c, v in rows])
                    elif table == "snapshots":
                        cur.executemany(
                            "INSERT INTO snapshots (id, cube_id, clock, label, at) "
                            "VALUES (%s,%s,%s,%s,%s)", rows)
                    elif table == "jobs":
                        cur.executemany(
                            "INSERT INTO jobs (id, kind, cube_id, payload, state, attempts, "
                            "lease_until, created_at, updated_at, result, error) "
                            "VALUES (%s,%s,%s,%s,%s,%s,%s,%s,%s,%s,%s)", rows)
                    done += len(rows)
                    if progress:
                        progress(table, done)
            # BM25 corpus statistics and identity counters follow the copied rows.
            cur.execute(
                "UPDATE cubes c SET doc_count = s.n, token_count = s.tokens "
                "FROM (SELECT cube_id, count(*) AS n, coalesce(sum(doc_len), 0) AS tokens "
                "      FROM items GROUP BY cube_id) s WHERE s.cube_id = c.id")
            cur.execute("SELECT setval(pg_get_serial_sequence('snapshots', 'id'), "
                        "coalesce((SELECT max(id) FROM snapshots), 0) + 1, false)")
        with self.vault.connection() as conn:  # fresh planner statistics for the new rows
            conn.execute("ANALYZE cubes, items, item_stats, item_versions, vectors")
        for cube_id, in self.vault._read("SELECT id FROM cubes"):
            self.vault._maybe_build_ann(cube_id)


def _ts(value: datetime | None) -> float | None:
    return value.timestamp() if value is not None else None


def _dt(value: float | None) -> datetime | None:
    return datetime.fromtimestamp(value, UTC) if value is not None else None


def _utc(value: datetime | None) -> datetime | None:
    return value.astimezone(UTC) if value is not None else None


def _from_sqlite(table: str, r: tuple[Any, ...]) -> tuple[Any, ...]:
    if table == "items":
        return (*r[:4], _dt(r[4]), *r[5:])
    if table == "item_versions":
        return (*r[:5], _dt(r[5]), r[6])
    if table == "vectors":
        return (r[0], r[1], np.frombuffer(r[2], dtype=np.float32))
    if table == "snapshots":
        return (*r[:4], _dt(r[4]))
    if table == "jobs":
        return (*r[:6], _dt(r[6]), _dt(r[7]), _dt(r[8]), r[9], r[10])
    return tuple(r)


def _from_postgres(table: str, r: tuple[Any, ...]) -> tuple[Any, ...]:
    if table == "items":
        return (*r[:4], _utc(r[4]), *r[5:])
    if table == "item_versions":
        return (*r[:5], _utc(r[5]), r[6])
    if table == "vectors":
        return (r[0], r[1], np.asarray(r[2].to_numpy(), dtype=np.float32))
    if table == "snapshots":
        return (*r[:4], _utc(r[4]))
    if table == "jobs":
        return (*r[:6], _utc(r[6]), _utc(r[7]), _utc(r[8]), r[9], r[10])
    return tuple(r)


class _sqlite_tx:  # noqa: N801 - used like a function
    def __init__(self, conn: sqlite3.Connection) -> None:
        self.conn = conn

    def __enter__(self) -> sqlite3.Connection:
        self.conn.execute("BEGIN IMMEDIATE")
        return self.conn

    def __exit__(self, exc_type: object, *rest: object) -> None:
        self.conn.execute("ROLLBACK" if exc_type is not None else "COMMIT")


def _redact(url: str) -> str:
    """The URL without its password, for printing."""
    from urllib.parse import urlsplit, urlunsplit

    parts = urlsplit(url)
    if parts.password:
        netloc = parts.netloc.replace(f":{parts.password}@", ":***@")
        return urlunsplit(parts._replace(netloc=netloc))
    return url


def open_side(url: str) -> _Side:
    if url.startswith("sqlite:///"):
        return SQLiteSide(Path(url.removeprefix("sqlite:///")).expanduser())
    if url.startswith(("postgresql://", "postgres://")):
        return PostgresSide(url)
    raise ValidationError(f"unsupported database URL {url!r}: expected sqlite:///PATH or "
                          "postgresql://...")


def compare(source: _Side, target: _Side) -> list[TableCheck]:
    src, dst = source.checksums(), target.checksums()
    return [TableCheck(t, src[t].rows, dst[t].rows, src[t].checksum, dst[t].checksum)
            for t in TABLES]


def copy_database(
    from_url: str, to_url: str, *, force: bool = False, progress: Progress | None = None
) -> list[TableCheck]:
    """Copy everything from one vault to another and verify it; returns the per-table
    comparison (raise nothing on a mismatch: the caller reports it)."""
    if from_url == to_url:
        raise ValidationError("--from and --to are the same database")
    with closing(open_side(from_url)) as source, closing(open_side(to_url)) as target:
        wipe = not target.is_empty()
        if wipe and not force:
            raise ConflictError(
                f"{target.name} already holds memories; pass --force to replace them")
        target.load(source, progress, wipe=wipe)
        return compare(source, target)


def verify(from_url: str, to_url: str) -> list[TableCheck]:
    with closing(open_side(from_url)) as source, closing(open_side(to_url)) as target:
        return compare(source, target)


__all__: Sequence[str] = ("TABLES", "TableCheck", "copy_database", "open_side", "verify")
