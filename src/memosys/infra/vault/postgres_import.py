"""`Vault.import_versions` on PostgreSQL: whole version histories in one transaction, under
the cube's row lock (the lock `commit` takes), item rows locked in id order."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import psycopg
from psycopg import errors as pg_errors

from memosys.errors import ConflictError, NotFoundError
from memosys.infra.vault.base import ImportedItem
from memosys.infra.vault.events_sql import record_import, record_wipe
from memosys.infra.vault.import_batch import check_batch, clock_map
from memosys.infra.vault.postgres_events import DIALECT as EVENTS
from memosys.types import MemCube

if TYPE_CHECKING:
    from memosys.infra.vault.postgres import PostgresVault


class PostgresImportMixin:
    def import_versions(
        self: PostgresVault,
        cube_id: str,
        batch: Sequence[ImportedItem],
        *,
        wipe: bool = False,
        new_cube: MemCube | None = None,
    ) -> int:
        check_batch(cube_id, batch, new_cube)

        def work(conn: psycopg.Connection[Any]) -> tuple[int, int, int, bool]:
            if new_cube is not None:
                try:
                    conn.execute(
                        "INSERT INTO cubes (id, name, clock, dim, doc) "
                        "VALUES (%s, %s, 0, %s, %s)",
                        (new_cube.id, new_cube.name, new_cube.config.embedding_dim,
                         new_cube.model_copy(update={"clock": 0}).model_dump_json()),
                    )
                except pg_errors.UniqueViolation:
                    raise ConflictError(
                        f"a cube named {new_cube.name!r} (or with id {new_cube.id}) "
                        "already exists") from None
            return _import(conn, cube_id, batch, wipe)

        new_clock, before, after, indexed = self._tx(work)
        if after > before:
            self._after_growth(cube_id, before, after, indexed)
        return new_clock

    def vectors(self: PostgresVault, ids: Sequence[str]) -> dict[str, np.ndarray]:
        wanted = list(dict.fromkeys(ids))
        if not wanted:
            return {}
        rows = self._read("SELECT item_id, embedding FROM vectors WHERE item_id = ANY(%s)",
                          (wanted,))
        return {item_id: np.asarray(vec.to_numpy(), dtype=np.float32) for item_id, vec in rows}


def _import(
    conn: psycopg.Connection[Any], cube_id: str, batch: Sequence[ImportedItem], wipe: bool
) -> tuple[int, int, int, bool]:
    from memosys.infra.vault.postgres import (
        _INSERT_ITEM,
        _UPDATE_ITEM,
        _item_doc,
        _item_row,
        _vector,
    )

    row = conn.execute(
        "SELECT clock, dim, doc_count, ann_index FROM cubes WHERE id = %s FOR UPDATE",
        (cube_id,),
    ).fetchone()
    if row is None:
        raise NotFoundError(f"no cube {cube_id!r}")
    clock, dim, doc_count, ann_index = row
    if wipe:
        record_wipe(conn, EVENTS, cube_id)
        with conn.cursor() as cur:
            for table in ("vectors", "item_stats", "item_versions"):
                key = "item_id IN (SELECT id FROM items WHERE cube_id = %s)"
                cur.execute(f"DELETE FROM {table} WHERE {key}", (cube_id,))
            cur.execute("DELETE FROM items WHERE cube_id = %s", (cube_id,))
            cur.execute("UPDATE cubes SET doc_count = 0, token_count = 0 WHERE id = %s",
                        (cube_id,))
        doc_count = 0
    clocks = clock_map(batch, clock, wipe)
    ids = sorted(e.versions[0].item.id for e in batch)
    current = {
        r[0]: (r[1], r[2], r[3])
        for r in conn.execute(
            "SELECT id, version, cube_id, doc_len FROM items WHERE id = ANY(%s) ORDER BY id "
            "FOR UPDATE", (ids,))
    }
    inserts, updates, versions, vectors, stats = [], [], [], [], []
    old_tokens = 0
    for entry in batch:
        first = entry.versions[0].item
        found = current.get(first.id)
        if entry.expected_version is None and found is not None:
            raise ConflictError(f"memory {first.id} already exists")
        if entry.expected_version is not None:
            if found is None:
                raise NotFoundError(f"no memory {first.id!r}")
            if found[1] != cube_id or found[0] != entry.expected_version:
                raise ConflictError(
                    f"memory {first.id} is at version {found[0]} in cube {found[1]}, "
                    f"expected version {entry.expected_version} in {cube_id}"
                )
            old_tokens += found[2]
        latest = entry.versions[-1].item
        (updates if found else inserts).append(_item_row(latest))
        versions.extend((r.item.id, r.item.version, cube_id, clocks[r.clock], r.op, r.at,
                         _item_doc(r.item)) for r in entry.versions)
        if entry.vector is not None:
            vectors.append((latest.id, cube_id, _vector(entry.vector, dim)))
        if found is None:
            s = entry.stats
            stats.append((latest.id, s.access_count if s else 0, s.last_accessed if s else None,
                          s.used_in_answer_count if s else 0, s.feedback_score if s else 0.0,
                          s.heat if s else 0.0))
    with conn.cursor() as cur:
        try:
            if inserts:
                cur.executemany(_INSERT_ITEM, inserts)
            if updates:
                cur.executemany(_UPDATE_ITEM, [(*r[1:], r[0]) for r in updates])
            cur.executemany(
                "INSERT INTO item_versions (item_id, version, cube_id, clock, op, at, doc) "
                "VALUES (%s, %s, %s, %s, %s, %s, %s)", versions)
        except pg_errors.UniqueViolation:  # an id held by another cube, or a version clash
            raise ConflictError("a memory or version in this import already exists") from None
        if stats:
            cur.executemany(
                "INSERT INTO item_stats (item_id, access_count, last_accessed, "
                "used_in_answer_count, feedback_score, heat) VALUES (%s, %s, %s, %s, %s, %s)",
                stats)
        if vectors:
            cur.executemany(
                "INSERT INTO vectors (item_id, cube_id, embedding) VALUES (%s, %s, %b) "
                "ON CONFLICT (item_id) DO UPDATE SET embedding = EXCLUDED.embedding", vectors)
    new_clock = max([clock, *clocks.values()])
    conn.execute(
        "UPDATE cubes SET clock = %s, doc_count = doc_count + %s, "
        "token_count = token_count - %s + "
        "(SELECT coalesce(sum(doc_len), 0) FROM items WHERE id = ANY(%s)) WHERE id = %s",
        (new_clock, len(inserts), old_tokens, ids, cube_id),
    )
    record_import(conn, EVENTS, cube_id, [(e.versions[-1].item, e.versions[0].item.id in current)
                                          for e in batch])
    return new_clock, doc_count, doc_count + len(inserts), ann_index is not None
