"""Search on PostgreSQL: BM25 over tsvector, exact and HNSW vector search, and the
per-cube HNSW index that takes over when a cube grows past `ann_threshold`.

A mixin of `PostgresVault` (kept apart to keep each file readable); it needs the vault's
`url`, `_ann_threshold`, `_read` and `connection`.
"""

from __future__ import annotations

import hashlib
import logging
import math
import threading
from collections.abc import Sequence
from contextlib import AbstractContextManager
from datetime import UTC, datetime
from typing import Any

import numpy as np
import psycopg
from psycopg import sql

from memosys.errors import NotFoundError, ValidationError
from memosys.infra.vault.base import ItemFilter
from memosys.infra.vault.fts_query import query_terms
from memosys.infra.vault.postgres_schema import TEXT_SEARCH_CONFIG

_log = logging.getLogger(__name__)

# BM25 parameters, as FTS5 uses them.
_K1 = 1.2
_B = 0.75

_ANN_LOCK_BASE = 0x6D656D6F73797400
"""Advisory lock keys for building one cube's HNSW index (one builder per cube)."""


def _idf(n: float, df: float) -> float:
    """FTS5's idf, floored as the SQL floors it."""
    return max(math.log((n - df + 0.5) / (df + 0.5)), 1e-6)


def _quoted(lexeme: str) -> str:
    """A lexeme as a tsquery operand, matched as it is (no parsing, no stemming)."""
    return "'" + lexeme.replace("\\", "\\\\").replace("'", "''") + "'"


def _clean(value: str | None) -> str | None:
    """PostgreSQL text cannot hold NUL; filter columns map it to U+FFFD (queries too).
    The item itself is stored verbatim as JSON, where NUL is an escape sequence."""
    return value.replace("\x00", "\ufffd") if value is not None else None


def _utc(value: datetime | None) -> datetime | None:
    return value.astimezone(UTC) if value is not None else None


def ann_index_name(cube_id: str) -> str:
    return "vectors_hnsw_" + hashlib.sha256(cube_id.encode()).hexdigest()[:20]


def where_clause(flt: ItemFilter, alias: str = "i") -> tuple[str, list[Any]]:
    """The filter as SQL over `items` (aliased) with %s placeholders, and their values."""
    clauses: list[str] = []
    params: list[Any] = []

    def add(clause: str, *values: Any) -> None:
        clauses.append(clause)
        params.extend(values)

    if flt.cube_ids:
        add(f"{alias}.cube_id = ANY(%s)", [_clean(c) for c in flt.cube_ids])
    if flt.ids:
        add(f"{alias}.id = ANY(%s)", [_clean(c) for c in flt.ids])
    if flt.memory_types:
        add(f"{alias}.memory_type = ANY(%s)", [t.value for t in flt.memory_types])
    if flt.states:
        add(f"{alias}.state = ANY(%s)", [s.value for s in flt.states])
    for column, value in (("user_id", flt.user), ("agent_id", flt.agent),
                          ("session_id", flt.session), ("owner", flt.owner)):
        if value is not None:
            add(f"{alias}.{column} = %s", _clean(value))
    if flt.tags:
        add(f"{alias}.tags @> %s::text[]", [_clean(t) for t in flt.tags])
    if flt.since is not None:
        add(f"{alias}.event_time >= %s", flt.since)
    if flt.until is not None:
        add(f"{alias}.event_time <= %s", flt.until)
    if flt.valid_at is not None:
        add(f"{alias}.event_time <= %s AND ({alias}.valid_to IS NULL "
            f"OR {alias}.valid_to > %s)", flt.valid_at, flt.valid_at)
    if flt.kinds:
        add(f"({alias}.doc::json ->> 'kind') = ANY(%s)", [k.value for k in flt.kinds])
    if flt.viewer is not None:  # governance: private memories only for their owner
        add(f"(({alias}.doc::json ->> 'visibility') <> 'private' OR {alias}.owner = %s)",
            _clean(flt.viewer))
    if flt.public_only_cubes:
        add(f"(NOT ({alias}.cube_id = ANY(%s)) OR ({alias}.doc::json ->> 'visibility') = "
            "'public')", [_clean(c) for c in flt.public_only_cubes])
    return (" AND ".join(clauses) or "TRUE"), params


class SearchMixin:
    url: str
    _ann_threshold: int | None
    _ann_lock: threading.Lock

    def _read(self, query: str | sql.Composable, params: Sequence[Any] = ()) -> list[Any]:
        raise NotImplementedError

    def connection(self) -> AbstractContextManager[psycopg.Connection[Any]]:
        raise NotImplementedError

    def search_text(self, query: str, flt: ItemFilter, limit: int) -> list[tuple[str, float]]:
        """BM25 (k1 1.2, b 0.75, FTS5's idf) over the searched cubes: N and the average
        length from the cubes' counters, document frequencies counted in the searched cubes.

        Exact top ``limit`` with MaxScore pruning: a word can add at most idf × (k1 + 1) to a
        score, so once the rarer words' matches hold ``limit`` results scoring above what the
        common words could add together, documents holding only common words cannot enter
        the top and are never scored (a question with a name that is in every tenth memory
        then scores hundreds of rows, not tens of thousands). User text never becomes
        tsquery syntax: lexemes are quoted."""
        terms = query_terms(query)
        if not terms:
            return []
        cubes = [_clean(c) for c in flt.cube_ids]
        scope, scope_params = ("id = ANY(%s)", [cubes]) if cubes else ("TRUE", [])
        item_scope = "i.cube_id = ANY(%s)" if cubes else "TRUE"
        words = " ".join(_clean(t) or "" for t in terms)
        with self.connection() as conn:
            rows = conn.execute(
                f"""
                WITH stats AS (
                    SELECT greatest(sum(doc_count), 1)::float8 AS n,
                           greatest(sum(token_count)::float8 / greatest(sum(doc_count), 1), 1)
                               AS avgdl
                    FROM cubes WHERE {scope}),
                q AS (SELECT DISTINCT unnest(tsvector_to_array(
                          to_tsvector('{TEXT_SEARCH_CONFIG}', %s))) AS lexeme)
                SELECT q.lexeme, s.n, s.avgdl,
                       (SELECT count(*) FROM items i
                        WHERE i.tsv @@ quote_literal(q.lexeme)::tsquery AND {item_scope})
                FROM q, stats s ORDER BY q.lexeme
                """,  # type: ignore[arg-type]
                (*scope_params, words, *scope_params),
            ).fetchall()
            df = {lexeme: float(count) for lexeme, _, _, count in rows if count}
            if not df:
                return []
            n, avgdl = float(rows[0][1]), float(rows[0][2])
            bound = {lex: _idf(n, d) * (_K1 + 1) for lex, d in df.items()}
            # the words in order of what they can add, the rarest first
            ordered = sorted(df, key=lambda lex: (-bound[lex], lex))
            hits: list[tuple[str, float]] = []
            for k in range(1, len(ordered) + 1):
                essential, rest = ordered[:k], ordered[k:]
                if rest and sum(df[lex] for lex in essential) < limit:
                    continue  # too few matches yet to know the top's lowest score
                hits = self._bm25(conn, essential, df, n, avgdl, flt, item_scope,
                                  scope_params, limit)
                if not rest or (len(hits) >= limit
                                and hits[limit - 1][1] > sum(bound[lex] for lex in rest)):
                    return hits
        return hits

    def _bm25(self, conn: psycopg.Connection[Any], essential: list[str], df: dict[str, float],
              n: float, avgdl: float, flt: ItemFilter, item_scope: str,
              scope_params: list[Any], limit: int) -> list[tuple[str, float]]:
        """Top ``limit`` by BM25 over every query lexeme, among the documents holding one of
        the ``essential`` lexemes."""
        where, params = where_clause(flt)
        lexemes = sorted(df)
        tsquery = " | ".join(_quoted(lex) for lex in essential)
        rows = conn.execute(
            f"""
            WITH d AS (SELECT * FROM unnest(%s::text[], %s::float8[]) AS d(lexeme, df)),
            hits AS MATERIALIZED (
                -- each hit's tsvector cut down to the query's lexemes (weight-tag, filter)
                SELECT i.id, i.seq, i.doc_len,
                       ts_filter(setweight(i.tsv, 'A', %s::text[]), '{{a}}') AS matched
                FROM items i
                WHERE i.tsv @@ %s::tsquery AND {item_scope} AND {where}),
            tf AS (
                SELECT h.id, u.lexeme, coalesce(array_length(u.positions, 1), 1) AS tf
                FROM hits h, unnest(h.matched) u)
            SELECT h.id, sum(greatest(ln((%s - d.df + 0.5) / (d.df + 0.5)), 1e-6)
                             * tf.tf * {_K1 + 1}
                             / (tf.tf + {_K1} * (1 - {_B} + {_B} * h.doc_len / %s))) AS score
            FROM hits h JOIN tf ON tf.id = h.id JOIN d ON d.lexeme = tf.lexeme
            GROUP BY h.id, h.seq ORDER BY score DESC, h.seq LIMIT %s
            """,  # type: ignore[arg-type]
            (lexemes, [df[lex] for lex in lexemes], lexemes, tsquery, *scope_params, *params,
             n, avgdl, limit),
        ).fetchall()
        return [(item_id, float(score)) for item_id, score in rows]

    def search_vector(
        self, vector: np.ndarray, flt: ItemFilter, limit: int
    ) -> list[tuple[str, float]]:
        query = np.asarray(vector, dtype=np.float32).reshape(-1)
        if not np.all(np.isfinite(query)) or not np.any(query):
            raise ValidationError("query embedding is zero or not finite")
        if flt.cube_ids:
            cubes = self._read(
                "SELECT id, dim, doc_count, ann_index FROM cubes WHERE id = ANY(%s)",
                ([_clean(c) for c in flt.cube_ids],))
        else:
            cubes = self._read("SELECT id, dim, doc_count, ann_index FROM cubes")
        hits: list[tuple[str, float]] = []
        for cube_id, dim, doc_count, ann_index in cubes:
            if doc_count == 0:
                continue
            if query.shape[0] != dim:
                raise ValidationError(
                    f"query embedding has dimension {query.shape[0]}, cube expects {dim}")
            hits.extend(self._cube_vector_hits(
                cube_id, dim, doc_count, ann_index, query, flt, limit))
        hits.sort(key=lambda h: -h[1])
        return hits[:limit]

    def _cube_vector_hits(
        self,
        cube_id: str,
        dim: int,
        doc_count: int,
        ann_index: str | None,
        query: np.ndarray,
        flt: ItemFilter,
        limit: int,
        *,
        exact: bool = False,
    ) -> list[tuple[str, float]]:
        where, params = where_clause(flt)
        if ann_index is not None and not exact:
            hits = self._ann_hits(cube_id, dim, query, where, params, limit)
            if len(hits) >= limit or len(hits) >= doc_count:
                return hits
            # a selective filter: the index ran out before enough rows passed it
        # Exact: every vector of the cube that passes the filter, one distance each.
        rows = self._read(
            "SELECT item_id, 1 - dist FROM ("
            "SELECT v.item_id, v.embedding <=> %b AS dist FROM vectors v WHERE v.cube_id = %s "
            f"AND EXISTS (SELECT 1 FROM items i WHERE i.id = v.item_id AND {where}) "
            "ORDER BY dist LIMIT %s) s ORDER BY dist, item_id",
            (query, cube_id, *params, limit),
        )
        return [(item_id, float(score)) for item_id, score in rows]

    def _ann_hits(
        self,
        cube_id: str,
        dim: int,
        query: np.ndarray,
        where: str,
        params: list[Any],
        limit: int,
    ) -> list[tuple[str, float]]:
        # The cube id is a literal so the planner can match the cube's partial index.
        typed = sql.SQL("vector({})").format(sql.Literal(int(dim)))
        stmt = sql.SQL(
            "SELECT item_id, 1 - dist FROM ("
            "SELECT v.item_id, (v.embedding::{typed}) <=> (%b::{typed}) AS dist "
            "FROM vectors v JOIN items i ON i.id = v.item_id "
            "WHERE v.cube_id = {cube} AND {where} ORDER BY dist LIMIT %s) s "
            "ORDER BY dist, item_id"
        ).format(typed=typed, cube=sql.Literal(cube_id), where=sql.SQL(where))  # type: ignore[arg-type]
        ef_search = str(min(1000, max(100, 2 * limit)))
        with self.connection() as conn, conn.transaction():  # the settings are local to it
            conn.execute(
                "SELECT set_config('hnsw.ef_search', %s, true), "
                "set_config('hnsw.iterative_scan', 'relaxed_order', true)",
                (ef_search,),
            )
            rows = conn.execute(stmt, (query, *params, limit)).fetchall()
        return [(item_id, float(score)) for item_id, score in rows]

    # --- the per-cube HNSW index -----------------------------------------------------
    def _maybe_build_ann(self, cube_id: str) -> None:
        """Build the cube's HNSW index once it has `ann_threshold` vectors. Runs in the
        writer that crossed the threshold, after its commit, with CREATE INDEX
        CONCURRENTLY (writers are not blocked); one builder per cube (advisory lock)."""
        if self._ann_threshold is None:
            return
        try:
            with self._ann_lock:
                self.build_ann_index(cube_id, min_count=self._ann_threshold)
        except psycopg.Error as exc:  # the index is an optimisation; exact search still works
            _log.warning("building the HNSW index of cube %s failed: %s", cube_id, exc)

    def build_ann_index(self, cube_id: str, *, min_count: int = 0) -> bool:
        """Build (or finish) the cube's HNSW index now; True if it exists afterwards."""
        key = _ANN_LOCK_BASE + int(hashlib.sha256(cube_id.encode()).hexdigest()[:6], 16)
        name = ann_index_name(cube_id)
        with psycopg.connect(self.url, autocommit=True) as conn:
            if not conn.execute("SELECT pg_try_advisory_lock(%s)", (key,)).fetchone()[0]:
                return False  # another worker is building it
            try:
                row = conn.execute(
                    "SELECT dim, doc_count, ann_index FROM cubes WHERE id = %s", (cube_id,)
                ).fetchone()
                if row is None:
                    raise NotFoundError(f"no cube {cube_id!r}")
                dim, doc_count, existing = row
                if existing is not None:
                    return True
                if doc_count < min_count:
                    return False
                valid = conn.execute(
                    "SELECT x.indisvalid FROM pg_index x JOIN pg_class c ON c.oid = x.indexrelid "
                    "WHERE c.relname = %s", (name,)).fetchone()
                if valid is not None and not valid[0]:  # a build that died half way
                    conn.execute(sql.SQL("DROP INDEX CONCURRENTLY IF EXISTS {}").format(
                        sql.Identifier(name)))
                conn.execute("SET maintenance_work_mem = '256MB'")
                conn.execute(sql.SQL(
                    "CREATE INDEX CONCURRENTLY IF NOT EXISTS {name} ON vectors USING hnsw "
                    "((embedding::vector({dim})) vector_cosine_ops) WHERE cube_id = {cube}"
                ).format(name=sql.Identifier(name), dim=sql.Literal(int(dim)),
                         cube=sql.Literal(cube_id)))
                conn.execute("UPDATE cubes SET ann_index = %s WHERE id = %s AND dim = %s",
                             (name, cube_id, dim))
                # a cube that just grew this large is what the planner's statistics miss
                conn.execute("ANALYZE vectors, items")
                return True
            finally:
                conn.execute("SELECT pg_advisory_unlock(%s)", (key,))

    def vector_index(self, cube_id: str) -> _VectorProbe | None:
        """Exact and served vector search of one cube (diagnostics, benchmarks)."""
        rows = self._read("SELECT dim, doc_count, ann_index FROM cubes WHERE id = %s",
                          (cube_id,))
        if not rows:
            return None
        return _VectorProbe(self, cube_id, *rows[0])


class _VectorProbe:
    """The part of the SQLite backend's VectorIndex that `memosys bench search` uses."""

    def __init__(self, vault: SearchMixin, cube_id: str, dim: int, count: int,
                 ann_index: str | None) -> None:
        self._vault = vault
        self.cube_id = cube_id
        self.dim = dim
        self._count = count
        self._ann_index = ann_index

    @property
    def uses_ann(self) -> bool:
        return self._ann_index is not None

    def __len__(self) -> int:
        return self._count

    def search(self, query: np.ndarray, k: int, *, exact: bool = False) -> list[tuple[str, float]]:
        return self._vault._cube_vector_hits(
            self.cube_id, self.dim, self._count, self._ann_index,
            np.asarray(query, dtype=np.float32).reshape(-1),
            ItemFilter(cube_ids=(self.cube_id,), states=()), k, exact=exact)
