"""MemVault on PostgreSQL + pgvector: the scale-out backend, same contract as SQLite.

Many stateless workers (threads, processes, machines) share one database. Connections come
from a psycopg_pool ConnectionPool. Writes are race-free through row locks, not a global
write lock: `commit` locks the cube row (`SELECT ... FOR UPDATE`), which serialises the
cube's version clock, then the item rows it touches (in id order, so lockers never
deadlock), checks versions and writes everything in one transaction.

Full-text search is BM25 computed in SQL over a tsvector + GIN index (English stemming,
no stop words, like FTS5's porter tokenizer), with corpus statistics kept per cube.
Vector search is exact within a cube until the cube reaches `ann_threshold` vectors; from
then on a partial HNSW index for that cube (cosine, `embedding::vector(dim)`) answers,
with exact search as the fallback when a selective filter leaves too few hits.
The schema is versioned: see `postgres_schema`.
"""

from __future__ import annotations

import logging
import random
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, TypeVar

import numpy as np
import psycopg
from psycopg import errors as pg_errors
from psycopg import sql
from psycopg.types import TypeInfo
from psycopg_pool import ConnectionPool

from memosys.errors import ConflictError, NotFoundError, StorageError, ValidationError
from memosys.infra.vault.base import (
    Change,
    ItemFilter,
    Snapshot,
    Vault,
    VersionRecord,
    Write,
)
from memosys.infra.vault.events_sql import record_commit, record_purge
from memosys.infra.vault.graph_sql import SQLGraph
from memosys.infra.vault.graph_writes import on_commit, on_purge
from memosys.infra.vault.postgres_events import DIALECT as EVENTS
from memosys.infra.vault.postgres_graph import PostgresGraphDB
from memosys.infra.vault.postgres_import import PostgresImportMixin
from memosys.infra.vault.postgres_jobs import JobsMixin
from memosys.infra.vault.postgres_schema import (
    LATEST,
    TEXT_SEARCH_CONFIG,
    check_version,
)
from memosys.infra.vault.postgres_schema import migrate as apply_migrations
from memosys.infra.vault.postgres_search import SearchMixin, _clean, _utc, where_clause
from memosys.infra.vault.topic_sql import SQLTopics, on_commit_topics, on_purge_topics
from memosys.types import CubeConfig, MemCube, MemoryItem, Stats

_log = logging.getLogger(__name__)

T = TypeVar("T")

_RETRIES = 8
"""Deadlocks and serialization failures roll the whole transaction back; it is retried."""


def _item_doc(item: MemoryItem) -> str:
    return item.model_dump_json(exclude={"stats"})


def _search_text(item: MemoryItem) -> str:
    """What the text index sees: the text and the tags."""
    return " ".join([item.text, *item.tags]).replace("\x00", " ")


@dataclass
class _Current:
    version: int
    cube_id: str
    doc_len: int
    has_vector: bool


class PostgresVault(SearchMixin, JobsMixin, PostgresImportMixin, SQLGraph, SQLTopics, Vault):
    """`url`: a libpq URL (postgresql://user:pass@host:port/db?sslmode=...).

    `pool_size` bounds this process's connections. `migrate=False` refuses to open a
    database whose schema is not current instead of upgrading it (`memosys db upgrade`)."""

    def __init__(
        self,
        url: str,
        *,
        pool_size: int = 10,
        ann_threshold: int | None = 20_000,
        migrate: bool = True,
        connect_timeout: float = 30.0,
    ) -> None:
        self.url = url
        self._ann_threshold = ann_threshold
        self._closed = False
        self._ann_lock = threading.Lock()
        try:
            if migrate:
                apply_migrations(url)
            with psycopg.connect(url, autocommit=True) as conn:
                version = check_version(conn)
                if version < LATEST:
                    raise StorageError(
                        f"the database schema is at version {version}, this memosys needs "
                        f"{LATEST}: run `memosys db upgrade`"
                    )
                info = TypeInfo.fetch(conn, "vector")
        except psycopg.OperationalError as exc:
            raise StorageError(f"cannot connect to PostgreSQL: {exc}") from None
        except psycopg.Error as exc:  # e.g. no right to CREATE EXTENSION vector
            raise StorageError(f"preparing the PostgreSQL schema failed: {exc}") from None
        if info is None:
            raise StorageError("the pgvector extension is not installed in this database")
        self._vector_info = info
        self._pool: ConnectionPool[psycopg.Connection[Any]] = ConnectionPool(
            url,
            min_size=1,
            max_size=max(1, pool_size),
            open=False,
            kwargs={"autocommit": True},  # reads need no COMMIT; writes use transaction()
            configure=self._configure,
            name="memosys",
            timeout=connect_timeout,
        )
        try:
            self._pool.open(wait=True, timeout=connect_timeout)
        except Exception as exc:
            self._pool.close()
            raise StorageError(f"cannot open a PostgreSQL connection pool: {exc}") from None

    def _configure(self, conn: psycopg.Connection[Any]) -> None:
        from pgvector.psycopg.vector import register_vector_info

        register_vector_info(conn, self._vector_info)

    # --- connections -----------------------------------------------------------------
    @contextmanager
    def connection(self) -> Iterator[psycopg.Connection[Any]]:
        """A pooled connection in autocommit mode: each statement stands alone unless run
        inside `conn.transaction()`. Used by `db copy` for bulk loads."""
        if self._closed:
            raise StorageError("the vault is closed")
        try:
            with self._pool.connection() as conn:
                yield conn
        except pg_errors.TransactionRollback:
            raise  # deadlock or serialization failure: `_tx` retries
        except psycopg.Error as exc:
            raise StorageError(f"PostgreSQL: {exc}") from None

    def _tx(self, work: Callable[[psycopg.Connection[Any]], T]) -> T:
        """Run `work` in one transaction, retrying it whole after a deadlock or a
        serialization failure (both roll everything back)."""
        for attempt in range(_RETRIES):
            try:
                with self.connection() as conn, conn.transaction():
                    return work(conn)
            except pg_errors.TransactionRollback:
                if attempt == _RETRIES - 1:
                    raise StorageError("gave up after repeated deadlocks") from None
                time.sleep(random.uniform(0, 0.005 * 2**attempt))
        raise AssertionError("unreachable")

    def _statement(self, query: str, params: Sequence[Any] = ()) -> int:
        """One write statement, atomic on its own (autocommit), retried after a deadlock;
        returns the affected row count."""
        for attempt in range(_RETRIES):
            try:
                with self.connection() as conn:
                    return conn.execute(query, params).rowcount  # type: ignore[arg-type]
            except pg_errors.TransactionRollback:
                if attempt == _RETRIES - 1:
                    raise StorageError("gave up after repeated deadlocks") from None
                time.sleep(random.uniform(0, 0.005 * 2**attempt))
        raise AssertionError("unreachable")

    def _read(self, query: str | sql.Composable, params: Sequence[Any] = ()) -> list[Any]:
        with self.connection() as conn:
            return conn.execute(query, params).fetchall()  # type: ignore[arg-type]

    @contextmanager
    def _graph_read(self) -> Iterator[PostgresGraphDB]:
        with self.connection() as conn:
            yield PostgresGraphDB(conn)

    @contextmanager
    def _graph_write(self) -> Iterator[PostgresGraphDB]:
        with self.connection() as conn, conn.transaction():
            yield PostgresGraphDB(conn)

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            self._pool.close()

    # --- cubes -----------------------------------------------------------------------
    def create_cube(self, cube: MemCube) -> MemCube:
        def work(conn: psycopg.Connection[Any]) -> None:
            try:
                conn.execute(
                    "INSERT INTO cubes (id, name, clock, dim, doc) VALUES (%s, %s, %s, %s, %s)",
                    (cube.id, cube.name, cube.clock, cube.config.embedding_dim,
                     cube.model_dump_json()),
                )
            except pg_errors.UniqueViolation:
                raise ConflictError(f"a cube named {cube.name!r} already exists") from None

        self._tx(work)
        return cube

    @staticmethod
    def _cube(doc: str, clock: int) -> MemCube:
        return MemCube.model_validate_json(doc).model_copy(update={"clock": clock})

    def get_cube(self, id_or_name: str) -> MemCube:
        rows = self._read(
            "SELECT doc, clock FROM cubes WHERE id = %s OR name = %s ORDER BY id = %s DESC",
            (_clean(id_or_name), _clean(id_or_name), _clean(id_or_name)),
        )
        if not rows:
            raise NotFoundError(f"no cube {id_or_name!r}")
        return self._cube(*rows[0])

    def list_cubes(self) -> list[MemCube]:
        return [self._cube(d, c) for d, c in self._read(
            'SELECT doc, clock FROM cubes ORDER BY name COLLATE "C"')]  # SQLite's order

    def replace_vectors(
        self, cube_id: str, vectors: dict[str, np.ndarray], config: CubeConfig
    ) -> None:
        cube = self.get_cube(cube_id)
        dim = config.embedding_dim
        rows = [(item_id, _vector(vec, dim)) for item_id, vec in vectors.items()]

        def work(conn: psycopg.Connection[Any]) -> None:
            locked = conn.execute(
                "SELECT dim, ann_index FROM cubes WHERE id = %s FOR UPDATE", (cube.id,)
            ).fetchone()
            if locked is None:
                raise NotFoundError(f"no cube {cube_id!r}")
            found = {r[0] for r in conn.execute(
                "SELECT id FROM items WHERE id = ANY(%s) AND cube_id = %s ORDER BY id "
                "FOR UPDATE", ([r[0] for r in rows], cube.id))}
            missing = [item_id for item_id, _ in rows if item_id not in found]
            if missing:
                raise NotFoundError(f"no memory {missing[0]!r} in cube {cube.name}")
            if locked[1] is not None and locked[0] != dim:
                # the index casts to the old dimension: it must go before new vectors come
                conn.execute(sql.SQL("DROP INDEX IF EXISTS {}").format(
                    sql.Identifier(locked[1])))
            with conn.cursor() as cur:
                cur.executemany(
                    "INSERT INTO vectors (item_id, cube_id, embedding) VALUES (%s, %s, %b) "
                    "ON CONFLICT (item_id) DO UPDATE SET embedding = EXCLUDED.embedding, "
                    "cube_id = EXCLUDED.cube_id",
                    [(item_id, cube.id, vec) for item_id, vec in rows],
                )
            doc = cube.model_copy(update={"config": config}).model_dump_json()
            conn.execute(
                "UPDATE cubes SET doc = %s, dim = %s, ann_index = CASE WHEN dim = %s "
                "THEN ann_index END WHERE id = %s",
                (doc, dim, dim, cube.id),
            )

        self._tx(work)
        self._maybe_build_ann(cube.id)

    # --- items -----------------------------------------------------------------------
    def commit(self, cube_id: str, writes: Sequence[Write]) -> list[MemoryItem]:
        if not writes:
            return []
        now = datetime.now(UTC)
        stored, before, after, indexed = self._tx(
            lambda conn: self._commit(conn, cube_id, writes, now))
        if after > before:
            self._after_growth(cube_id, before, after, indexed)
        return stored

    def _commit(
        self,
        conn: psycopg.Connection[Any],
        cube_id: str,
        writes: Sequence[Write],
        now: datetime,
    ) -> tuple[list[MemoryItem], int, int, bool]:
        row = conn.execute(
            "SELECT clock, dim, doc_count, ann_index FROM cubes WHERE id = %s FOR UPDATE",
            (cube_id,),
        ).fetchone()
        if row is None:
            raise NotFoundError(f"no cube {cube_id!r}")
        clock, dim, doc_count, ann_index = row[0] + 1, row[1], row[2], row[3]
        ids = sorted({w.item.id for w in writes})
        current = {
            r[0]: _Current(r[1], r[2], r[3], r[4])
            for r in conn.execute(
                "SELECT i.id, i.version, i.cube_id, i.doc_len, "
                "EXISTS (SELECT 1 FROM vectors v WHERE v.item_id = i.id) "
                "FROM items i WHERE i.id = ANY(%s) ORDER BY i.id FOR UPDATE",
                (ids,),
            )
        }
        existed = {k: v.doc_len for k, v in current.items()}
        final: dict[str, tuple[MemoryItem, str]] = {}  # id -> (item, "insert" | "update")
        versions: list[tuple[Any, ...]] = []
        new_vectors: dict[str, np.ndarray] = {}
        stored: list[MemoryItem] = []
        for write in writes:
            item = write.item
            if item.cube_id != cube_id:
                raise ValidationError(
                    f"item {item.id} belongs to cube {item.cube_id}, not {cube_id}")
            cur = current.get(item.id)
            if write.expected_version is None:
                if cur is not None:
                    raise ConflictError(f"memory {item.id} already exists")
                version = 1
            else:
                if cur is None:
                    raise NotFoundError(f"no memory {item.id!r}")
                if cur.cube_id != cube_id:
                    raise ValidationError(
                        f"memory {item.id} is stored in cube {cur.cube_id}, not {cube_id}")
                if cur.version != write.expected_version:
                    raise ConflictError(
                        f"memory {item.id} is at version {cur.version}, "
                        f"expected {write.expected_version}: it changed meanwhile"
                    )
                version = cur.version + 1
                if write.vector is None and not cur.has_vector:
                    raise ValidationError(f"memory {item.id} has no embedding; pass one")
            if write.expected_version is None and write.vector is None:
                raise ValidationError(f"new memory {item.id} needs an embedding")
            if write.vector is not None:
                new_vectors[item.id] = _vector(write.vector, dim)
            item = item.model_copy(
                update={"version": version, "updated_at": now if version > 1 else item.updated_at}
            )
            kind = "update" if item.id in existed else "insert"
            final[item.id] = (item, kind)
            had_vector = cur.has_vector if cur is not None else False
            current[item.id] = _Current(version, cube_id, 0,
                                        had_vector or write.vector is not None)
            versions.append((item.id, version, cube_id, clock, write.op, now, _item_doc(item)))
            stored.append(item)

        inserts = [_item_row(i) for i, kind in final.values() if kind == "insert"]
        updates = [_item_row(i) for i, kind in final.values() if kind == "update"]
        with conn.cursor() as cur:
            if inserts:
                try:
                    cur.executemany(_INSERT_ITEM, inserts)
                except pg_errors.UniqueViolation:  # created meanwhile in another cube
                    raise ConflictError("a memory with one of these ids already exists") \
                        from None
                cur.executemany(
                    "INSERT INTO item_stats (item_id) VALUES (%s)", [(r[0],) for r in inserts])
            if updates:
                cur.executemany(_UPDATE_ITEM, [(*r[1:], r[0]) for r in updates])
            cur.executemany(
                "INSERT INTO item_versions (item_id, version, cube_id, clock, op, at, doc) "
                "VALUES (%s, %s, %s, %s, %s, %s, %s)",
                versions,
            )
            if new_vectors:
                cur.executemany(
                    "INSERT INTO vectors (item_id, cube_id, embedding) VALUES (%s, %s, %b) "
                    "ON CONFLICT (item_id) DO UPDATE SET embedding = EXCLUDED.embedding",
                    [(item_id, cube_id, vec) for item_id, vec in new_vectors.items()],
                )
        # the memories' graph edges change in the same transaction (graph_base.py)
        on_commit(PostgresGraphDB(conn), cube_id,
                  [(item, kind == "insert") for item, kind in final.values()],
                  self.graph_deriver)
        on_commit_topics(PostgresGraphDB(conn), cube_id,
                         [(item, new_vectors.get(item.id)) for item, _ in final.values()],
                         self.topic_policy)
        conn.execute(
            "UPDATE cubes SET clock = %s, doc_count = doc_count + %s, "
            "token_count = token_count - %s + "
            "(SELECT coalesce(sum(doc_len), 0) FROM items WHERE id = ANY(%s)) WHERE id = %s",
            (clock, len(inserts), sum(existed.values()), list(final), cube_id),
        )
        # change events, in this transaction and last (postgres_events.py)
        record_commit(conn, EVENTS, stored, [w.op for w in writes])
        return stored, doc_count, doc_count + len(inserts), ann_index is not None

    def _after_growth(self, cube_id: str, before: int, after: int, indexed: bool) -> None:
        """A cube that grows fast (a bulk load) outruns autovacuum's statistics, and plans
        made on stale ones can be twice as slow: ANALYZE each time a cube passes 1k, 4k,
        16k, ... items. Past `ann_threshold`, build the cube's HNSW index."""
        mark = 1000
        while mark <= after:
            if before < mark:
                try:
                    with self.connection() as conn:
                        conn.execute("ANALYZE items, item_stats, vectors")
                except StorageError as exc:  # the write is done; this is only for speed
                    _log.warning("ANALYZE after growth failed: %s", exc)
                break
            mark *= 4
        if not indexed and self._ann_threshold is not None and after >= self._ann_threshold:
            self._maybe_build_ann(cube_id)

    _ITEM_SELECT = (
        "SELECT i.doc, s.access_count, s.last_accessed, s.used_in_answer_count, "
        "s.feedback_score, s.heat FROM items i JOIN item_stats s ON s.item_id = i.id"
    )

    @staticmethod
    def _row_to_item(row: Sequence[Any]) -> MemoryItem:
        doc, access, last, used, feedback, heat = row
        item = MemoryItem.model_validate_json(doc)
        item.stats = Stats(
            access_count=access,
            last_accessed=_utc(last),
            used_in_answer_count=used,
            feedback_score=feedback,
            heat=heat,
        )
        return item

    def get_many(self, ids: Sequence[str]) -> dict[str, MemoryItem]:
        wanted = list(dict.fromkeys(_clean(i) for i in ids))
        if not wanted:
            return {}
        rows = self._read(f"{self._ITEM_SELECT} WHERE i.id = ANY(%s)", (wanted,))
        items = (self._row_to_item(r) for r in rows)
        return {item.id: item for item in items}

    def history(self, item_id: str) -> list[VersionRecord]:
        rows = self._read(
            "SELECT doc, clock, op, at FROM item_versions WHERE item_id = %s ORDER BY version",
            (_clean(item_id),),
        )
        return [VersionRecord(MemoryItem.model_validate_json(d), c, op, _utc(at) or at)
                for d, c, op, at in rows]

    def changes_since(self, cube_id: str, clock: int) -> list[Change]:
        # One statement, so one consistent snapshot of current and past states.
        rows = self._read(
            "WITH changed AS (SELECT DISTINCT item_id FROM item_versions "
            "                 WHERE cube_id = %s AND clock > %s) "
            "SELECT i.doc, s.access_count, s.last_accessed, s.used_in_answer_count, "
            "s.feedback_score, s.heat, "
            "(SELECT v.doc FROM item_versions v WHERE v.item_id = c.item_id AND v.clock <= %s "
            " ORDER BY v.version DESC LIMIT 1) "
            "FROM changed c JOIN items i ON i.id = c.item_id "
            "JOIN item_stats s ON s.item_id = i.id ORDER BY i.seq",
            (cube_id, clock, clock),
        )
        changes = []
        for row in rows:
            current = self._row_to_item(row[:6])
            then = MemoryItem.model_validate_json(row[6]) if row[6] is not None else None
            changes.append(Change(current.id, current, then))
        return changes

    def purge(self, ids: Sequence[str]) -> int:
        wanted = sorted({c for c in (_clean(i) for i in ids) if c is not None})
        if not wanted:
            return 0

        def work(conn: psycopg.Connection[Any]) -> int:
            cubes: set[str] = set()
            while True:
                # Lock the cubes first (the order `commit` locks in), then the items.
                conn.execute("SELECT id FROM cubes WHERE id = ANY(%s) ORDER BY id FOR UPDATE",
                             (sorted(cubes),))
                rows = conn.execute(
                    "SELECT id, cube_id, doc_len FROM items WHERE id = ANY(%s) ORDER BY id "
                    "FOR UPDATE", (wanted,)).fetchall()
                needed = {r[1] for r in rows}
                if needed <= cubes:
                    break
                cubes |= needed
            found = [r[0] for r in rows]
            if not found:
                return 0
            record_purge(conn, EVENTS, found)  # before the rows go
            with conn.cursor() as cur:
                for table, column in (("vectors", "item_id"), ("item_stats", "item_id"),
                                      ("item_versions", "item_id"), ("items", "id")):
                    cur.execute(sql.SQL("DELETE FROM {} WHERE {} = ANY(%s)").format(
                        sql.Identifier(table), sql.Identifier(column)), (found,))
                per_cube: dict[str, tuple[int, int]] = {}
                for _, cube_id, doc_len in rows:
                    n, tokens = per_cube.get(cube_id, (0, 0))
                    per_cube[cube_id] = (n + 1, tokens + doc_len)
                cur.executemany(
                    "UPDATE cubes SET doc_count = doc_count - %s, "
                    "token_count = token_count - %s WHERE id = %s",
                    [(n, tokens, cube_id) for cube_id, (n, tokens) in sorted(per_cube.items())],
                )
            on_purge(PostgresGraphDB(conn), found)
            on_purge_topics(PostgresGraphDB(conn), found, self.topic_policy)
            return len(found)

        return self._tx(work)

    # --- queries ---------------------------------------------------------------------
    def list_items(self, flt: ItemFilter, limit: int = 100, offset: int = 0) -> list[MemoryItem]:
        where, params = where_clause(flt)
        rows = self._read(
            f"{self._ITEM_SELECT} WHERE {where} "
            "ORDER BY i.created_at DESC, i.seq DESC LIMIT %s OFFSET %s",
            (*params, limit, offset),
        )
        return [self._row_to_item(r) for r in rows]

    def count(self, flt: ItemFilter) -> int:
        where, params = where_clause(flt)
        return int(self._read(f"SELECT count(*) FROM items i WHERE {where}", params)[0][0])

    # --- statistics ------------------------------------------------------------------
    def record_access(self, ids: Sequence[str], *, used_in_answer: bool = False) -> None:
        counts: dict[str, int] = {}
        for item_id in ids:
            key = _clean(item_id) or ""
            counts[key] = counts.get(key, 0) + 1
        if not counts:
            return
        now = datetime.now(UTC)
        keys = sorted(counts)
        per_hit = 2.0 if used_in_answer else 1.0

        # One statement (no BEGIN/COMMIT round trips on every search); the CTE locks the
        # rows in id order first, so concurrent bumps of overlapping hits never deadlock.
        self._statement(
            "WITH locked AS (SELECT item_id FROM item_stats WHERE item_id = ANY(%s) "
            "                ORDER BY item_id FOR UPDATE) "
            "UPDATE item_stats s SET access_count = s.access_count + c.n, "
            "last_accessed = %s, used_in_answer_count = s.used_in_answer_count + c.n * %s, "
            "heat = s.heat + c.n * %s "
            "FROM unnest(%s::text[], %s::int[]) AS c(id, n), locked "
            "WHERE s.item_id = c.id AND locked.item_id = c.id",
            (keys, now, int(used_in_answer), per_hit, keys, [counts[k] for k in keys]),
        )

    def add_feedback(self, item_id: str, delta: float) -> None:
        if not self._statement(
            "UPDATE item_stats SET feedback_score = feedback_score + %s WHERE item_id = %s",
            (float(delta), _clean(item_id)),
        ):
            raise NotFoundError(f"no memory {item_id!r}")

    # --- snapshots -------------------------------------------------------------------
    def create_snapshot(self, cube_id: str, label: str = "") -> Snapshot:
        now = datetime.now(UTC)

        def work(conn: psycopg.Connection[Any]) -> Snapshot:
            row = conn.execute(
                "INSERT INTO snapshots (cube_id, clock, label, at) "
                "SELECT id, clock, %s, %s FROM cubes WHERE id = %s RETURNING id, clock",
                (_clean(label) or "", now, cube_id),
            ).fetchone()
            if row is None:
                raise NotFoundError(f"no cube {cube_id!r}")
            return Snapshot(cube_id, int(row[1]), now, label, int(row[0]))

        return self._tx(work)

    def list_snapshots(self, cube_id: str) -> list[Snapshot]:
        rows = self._read(
            "SELECT id, clock, label, at FROM snapshots WHERE cube_id = %s ORDER BY id",
            (cube_id,),
        )
        return [Snapshot(cube_id, int(c), _utc(at) or at, lb, int(i)) for i, c, lb, at in rows]


_INSERT_ITEM = f"""
INSERT INTO items (id, cube_id, memory_type, state, user_id, agent_id, session_id, owner,
                   event_time, valid_from, valid_to, created_at, version, tags, doc, tsv,
                   doc_len)
SELECT %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, t.tsv,
       memosys_token_count(t.tsv)
FROM (SELECT to_tsvector('{TEXT_SEARCH_CONFIG}', %s) AS tsv) t
"""

_UPDATE_ITEM = f"""
UPDATE items SET cube_id = %s, memory_type = %s, state = %s, user_id = %s, agent_id = %s,
    session_id = %s, owner = %s, event_time = %s, valid_from = %s, valid_to = %s,
    created_at = %s, version = %s, tags = %s, doc = %s, tsv = t.tsv,
    doc_len = memosys_token_count(t.tsv)
FROM (SELECT to_tsvector('{TEXT_SEARCH_CONFIG}', %s) AS tsv) t
WHERE id = %s
"""


def _item_row(item: MemoryItem) -> tuple[Any, ...]:
    src = item.source
    return (
        item.id, item.cube_id, item.memory_type.value, item.state.value, _clean(src.user),
        _clean(src.agent), _clean(src.session), _clean(item.owner), item.event_time,
        item.valid_from, item.valid_to, item.created_at, item.version,
        [_clean(t) for t in item.tags], _item_doc(item), _search_text(item),
    )


def _vector(vec: np.ndarray, dim: int) -> np.ndarray:
    arr = np.asarray(vec, dtype=np.float32).reshape(-1)
    if arr.shape[0] != dim:
        raise ValidationError(f"embedding has dimension {arr.shape[0]}, cube expects {dim}")
    if not np.all(np.isfinite(arr)):
        raise ValidationError("embedding has a NaN or infinite component")
    if not np.any(arr):
        raise ValidationError("embedding is all zeros: it has no cosine similarity")
    return arr

