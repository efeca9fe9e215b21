"""Queries on SQLite (a mixin of `SQLiteVault`): filters as SQL, listing, BM25 over each
cube's FTS5 index, and vector search over each process's in-memory index, caught up from
`vec_log`."""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Sequence
from dataclasses import replace
from typing import TYPE_CHECKING, Any

import numpy as np

from memosys.errors import ValidationError
from memosys.infra.vault import sqlite_fts as fts
from memosys.infra.vault.base import ItemFilter
from memosys.infra.vault.fts_query import fts_match_expression
from memosys.infra.vault.sqlite_rows import chunks
from memosys.infra.vault.vector_index import VectorIndex
from memosys.types import MemCube, MemoryItem

if TYPE_CHECKING:
    from memosys.infra.vault.sqlite import SQLiteVault


class _CubeVectors:
    """One cube's in-memory index and how far it has read `vec_log`."""

    def __init__(self, dim: int) -> None:
        self.index = VectorIndex(dim)
        self.seq = 0
        self.lock = threading.Lock()


class SQLiteSearchMixin:
    @staticmethod
    def _where(flt: ItemFilter, alias: str = "i") -> tuple[str, list[Any]]:
        clauses: list[str] = []
        params: list[Any] = []

        def any_of(column: str, values: Sequence[Any]) -> None:
            clauses.append(f"{alias}.{column} IN ({','.join('?' * len(values))})")
            params.extend(values)

        if flt.cube_ids:
            any_of("cube_id", flt.cube_ids)
        if flt.ids:
            any_of("id", flt.ids)
        if flt.memory_types:
            any_of("memory_type", [t.value for t in flt.memory_types])
        if flt.states:
            any_of("state", [s.value for s in flt.states])
        for column, value in (
            ("user_id", flt.user),
            ("agent_id", flt.agent),
            ("session_id", flt.session),
            ("owner", flt.owner),
        ):
            if value is not None:
                clauses.append(f"{alias}.{column} = ?")
                params.append(value)
        for tag in flt.tags:
            clauses.append(
                f"EXISTS (SELECT 1 FROM item_tags t WHERE t.tag = ? "
                f"AND t.item_rowid = {alias}.rowid)"
            )
            params.append(tag)
        if flt.since is not None:
            clauses.append(f"{alias}.event_time >= ?")
            params.append(flt.since.timestamp())
        if flt.until is not None:
            clauses.append(f"{alias}.event_time <= ?")
            params.append(flt.until.timestamp())
        if flt.valid_at is not None:
            at = flt.valid_at.timestamp()
            clauses.append(
                f"{alias}.event_time <= ? AND ({alias}.valid_to IS NULL OR {alias}.valid_to > ?)"
            )
            params.extend([at, at])
        if flt.kinds:
            clauses.append(f"json_extract({alias}.doc, '$.kind') IN "
                           f"({','.join('?' * len(flt.kinds))})")
            params.extend(k.value for k in flt.kinds)
        if flt.viewer is not None:  # governance: private memories only for their owner
            clauses.append(f"(json_extract({alias}.doc, '$.visibility') != 'private' "
                           f"OR {alias}.owner = ?)")
            params.append(flt.viewer)
        if flt.public_only_cubes:
            clauses.append(f"({alias}.cube_id NOT IN ({','.join('?' * len(flt.public_only_cubes))})"
                           f" OR json_extract({alias}.doc, '$.visibility') = 'public')")
            params.extend(flt.public_only_cubes)
        return (" AND ".join(clauses) or "1"), params

    def list_items(
        self: SQLiteVault, flt: ItemFilter, limit: int = 100, offset: int = 0
    ) -> list[MemoryItem]:
        where, params = self._where(flt)
        rows = self._conn().execute(
            f"SELECT {self._ITEM_COLS} FROM items i WHERE {where} "
            "ORDER BY i.created_at DESC, i.rowid DESC LIMIT ? OFFSET ?",
            (*params, limit, offset),
        ).fetchall()
        return [self._row_to_item(r) for r in rows]

    def count(self: SQLiteVault, flt: ItemFilter) -> int:
        where, params = self._where(flt)
        return int(self._conn().execute(f"SELECT count(*) FROM items i WHERE {where}", params)
                   .fetchone()[0])

    def search_text(
        self: SQLiteVault, query: str, flt: ItemFilter, limit: int
    ) -> list[tuple[str, float]]:
        """BM25 within each searched cube's own index (sqlite_fts.py), merged by score."""
        match = fts_match_expression(query)
        if match is None:
            return []
        conn = self._conn()
        hits: list[tuple[str, float]] = []
        for cube_id, table in fts.tables_of(conn, flt.cube_ids):
            hits.extend(self._cube_text_hits(conn, table, match, _with_cube(flt, cube_id),
                                             limit))
        hits.sort(key=lambda h: -h[1])
        return hits[:limit]

    def _cube_text_hits(
        self, conn: sqlite3.Connection, table: str, match: str, flt: ItemFilter, limit: int
    ) -> list[tuple[str, float]]:
        where, params = self._where(flt)
        # Most searches filter little: rank in FTS5 alone, over-fetch, then check the filter
        # by rowid. Only a selective filter pays for the full filtered query.
        wanted = max(limit * 4, 50)
        rows = conn.execute(
            f"SELECT i.id, c.score FROM (SELECT rowid, rank AS score FROM {table} "
            f"WHERE {table} MATCH ? ORDER BY rank LIMIT ?) c "
            f"JOIN items i NOT INDEXED ON i.rowid = c.rowid WHERE {where} ORDER BY c.score",
            (match, wanted, *params),
        ).fetchall()
        if len(rows) < limit and conn.execute(
            f"SELECT count(*) FROM (SELECT 1 FROM {table} WHERE {table} MATCH ? LIMIT ?)",
            (match, wanted + 1),
        ).fetchone()[0] > wanted:
            rows = conn.execute(
                f"SELECT i.id, bm25({table}) AS score FROM {table} "
                f"JOIN items i ON i.rowid = {table}.rowid "
                f"WHERE {table} MATCH ? AND {where} ORDER BY score LIMIT ?",
                (match, *params, limit),
            ).fetchall()
        # bm25() is lower-is-better; negate so every search reports higher-is-better.
        return [(item_id, -score) for item_id, score in rows[:limit]]

    def search_vector(
        self, vector: np.ndarray, flt: ItemFilter, limit: int
    ) -> list[tuple[str, float]]:
        conn = self._conn()
        cube_ids = list(flt.cube_ids) or [c.id for c in self.list_cubes()]
        query = np.asarray(vector, dtype=np.float32).reshape(-1)
        hits: list[tuple[int, float]] = []
        for cube_id in cube_ids:
            index = self._synced_index(conn, cube_id)
            if index is None or len(index) == 0:
                continue
            if query.shape[0] != index.dim:
                raise ValidationError(
                    f"query embedding has dimension {query.shape[0]}, cube expects {index.dim}"
                )
            hits.extend(self._filtered_vector_hits(conn, index, query, flt, cube_id, limit))
        hits.sort(key=lambda h: -h[1])
        hits = hits[:limit]
        ids = self._ids_for_rowids(conn, [h[0] for h in hits])
        return [(ids[r], s) for r, s in hits if r in ids]

    def _filtered_vector_hits(
        self,
        conn: sqlite3.Connection,
        index: VectorIndex,
        query: np.ndarray,
        flt: ItemFilter,
        cube_id: str,
        limit: int,
    ) -> list[tuple[int, float]]:
        cube_flt = _with_cube(flt, cube_id)
        where, params = self._where(cube_flt)
        # Most searches filter little: over-fetch and check the filter on the candidates.
        wanted = min(len(index), max(limit * 4, 50))
        candidates = index.search(query, wanted)
        passing = self._rowids_passing(conn, [k for k, _ in candidates], where, params)
        hits = [(k, s) for k, s in candidates if k in passing]
        if len(hits) >= limit or wanted >= len(index):
            return hits[:limit]
        # A selective filter: search exactly within the rows it allows.
        allowed = np.fromiter(
            (r for (r,) in conn.execute(f"SELECT i.rowid FROM items i WHERE {where}", params)),
            dtype=np.int64,
        )
        if allowed.size == 0:
            return []
        return index.search(query, limit, allowed=allowed)

    @staticmethod
    def _rowids_passing(
        conn: sqlite3.Connection, rowids: list[int], where: str, params: list[Any]
    ) -> set[int]:
        passing: set[int] = set()
        for chunk in chunks(rowids, 500):
            marks = ",".join("?" * len(chunk))
            passing.update(
                r for (r,) in conn.execute(
                    # NOT INDEXED: look rows up by rowid; a filter-column index would scan
                    f"SELECT i.rowid FROM items i NOT INDEXED WHERE i.rowid IN ({marks}) "
                    f"AND {where}",
                    (*chunk, *params),
                )
            )
        return passing

    @staticmethod
    def _ids_for_rowids(conn: sqlite3.Connection, rowids: list[int]) -> dict[int, str]:
        out: dict[int, str] = {}
        for chunk in chunks(rowids, 500):
            marks = ",".join("?" * len(chunk))
            out.update(
                conn.execute(f"SELECT rowid, id FROM items WHERE rowid IN ({marks})", chunk)
            )
        return out

    def vector_index(self: SQLiteVault, cube_id: str) -> VectorIndex | None:
        """This process's up-to-date vector index of a cube (diagnostics, benchmarks)."""
        return self._synced_index(self._conn(), cube_id)

    def _synced_index(
        self: SQLiteVault, conn: sqlite3.Connection, cube_id: str
    ) -> VectorIndex | None:
        with self._vectors_lock:
            state = self._vectors.get(cube_id)
            if state is None:
                row = conn.execute("SELECT doc FROM cubes WHERE id = ?", (cube_id,)).fetchone()
                if row is None:
                    return None
                dim = MemCube.model_validate_json(row[0]).config.embedding_dim
                state = _CubeVectors(dim)
                if self._ann_threshold is not None:
                    state.index = VectorIndex(dim, ann_threshold=self._ann_threshold)
                self._vectors[cube_id] = state
        with state.lock:
            self._catch_up(conn, cube_id, state)
        return state.index

    @staticmethod
    def _catch_up(conn: sqlite3.Connection, cube_id: str, state: _CubeVectors) -> None:
        conn.execute("BEGIN")  # the log and the vectors read from one snapshot
        try:
            changes = conn.execute(
                "SELECT seq, item_rowid, removed FROM vec_log WHERE cube_id = ? AND seq > ? "
                "ORDER BY seq",
                (cube_id, state.seq),
            ).fetchall()
            if not changes:
                return
            latest: dict[int, int] = {}
            for _, rowid, removed in changes:
                latest[rowid] = removed
            removed_rows = [r for r, gone in latest.items() if gone]
            live_rows = [r for r, gone in latest.items() if not gone]
            keys: list[int] = []
            vecs: list[np.ndarray] = []
            for chunk in chunks(live_rows, 500):
                marks = ",".join("?" * len(chunk))
                for rowid, blob in conn.execute(
                    f"SELECT item_rowid, vec FROM vectors WHERE item_rowid IN ({marks})", chunk
                ):
                    keys.append(rowid)
                    vecs.append(np.frombuffer(blob, dtype=np.float32))
            state.seq = changes[-1][0]
        finally:
            conn.execute("COMMIT")
        if removed_rows:
            state.index.remove(removed_rows)
        if keys:
            state.index.upsert(np.asarray(keys, dtype=np.int64), np.vstack(vecs))


def _with_cube(flt: ItemFilter, cube_id: str) -> ItemFilter:
    return replace(flt, cube_ids=(cube_id,))
