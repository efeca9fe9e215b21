"""`Vault.import_versions` on SQLite: whole version histories in one write transaction."""

from __future__ import annotations

import sqlite3
from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np

from memosys.errors import ConflictError, NotFoundError
from memosys.infra.vault import sqlite_fts as fts
from memosys.infra.vault.base import ImportedItem
from memosys.infra.vault.events_sql import record_import, record_wipe
from memosys.infra.vault.import_batch import check_batch, clock_map
from memosys.infra.vault.sqlite_events import DIALECT as EVENTS
from memosys.infra.vault.sqlite_rows import chunks
from memosys.types import MemCube, MemoryItem

if TYPE_CHECKING:
    from memosys.infra.vault.sqlite import SQLiteVault


class SQLiteImportMixin:
    def import_versions(
        self: SQLiteVault,
        cube_id: str,
        batch: Sequence[ImportedItem],
        *,
        wipe: bool = False,
        new_cube: MemCube | None = None,
    ) -> int:
        check_batch(cube_id, batch, new_cube)
        with self._write() as conn:
            if new_cube is not None:
                try:
                    conn.execute(
                        "INSERT INTO cubes (id, name, clock, doc) VALUES (?, ?, 0, ?)",
                        (new_cube.id, new_cube.name,
                         new_cube.model_copy(update={"clock": 0}).model_dump_json()),
                    )
                except sqlite3.IntegrityError:
                    raise ConflictError(
                        f"a cube named {new_cube.name!r} (or with id {new_cube.id}) "
                        "already exists") from None
                fts.table_for(conn, new_cube.id)
            row = conn.execute("SELECT clock, doc FROM cubes WHERE id = ?", (cube_id,)).fetchone()
            if row is None:
                raise NotFoundError(f"no cube {cube_id!r}")
            clock, dim = row[0], MemCube.model_validate_json(row[1]).config.embedding_dim
            if wipe:
                record_wipe(conn, EVENTS, cube_id)
                _wipe_cube(conn, cube_id)
            clocks = clock_map(batch, clock, wipe)
            for entry in batch:
                _load_entry(self, conn, cube_id, dim, entry, clocks)
            new_clock = max([clock, *clocks.values()])
            conn.execute("UPDATE cubes SET clock = ? WHERE id = ?", (new_clock, cube_id))
            record_import(conn, EVENTS, cube_id, [
                (e.versions[-1].item, e.expected_version is not None and not wipe)
                for e in batch])
        return new_clock

    def vectors(self: SQLiteVault, ids: Sequence[str]) -> dict[str, np.ndarray]:
        out: dict[str, np.ndarray] = {}
        conn = self._conn()
        for chunk in chunks(list(dict.fromkeys(ids)), 500):
            marks = ",".join("?" * len(chunk))
            for item_id, blob in conn.execute(
                "SELECT i.id, v.vec FROM vectors v JOIN items i ON i.rowid = v.item_rowid "
                f"WHERE i.id IN ({marks})", chunk
            ):
                out[item_id] = np.frombuffer(blob, dtype=np.float32).copy()
        return out


def _load_entry(
    vault: SQLiteVault,
    conn: sqlite3.Connection,
    cube_id: str,
    dim: int,
    entry: ImportedItem,
    clocks: dict[int, int],
) -> None:
    from memosys.infra.vault.sqlite import _item_doc

    first = entry.versions[0].item
    current = conn.execute(
        "SELECT rowid, version, cube_id FROM items WHERE id = ?", (first.id,)
    ).fetchone()
    if entry.expected_version is None and current is not None:
        raise ConflictError(f"memory {first.id} already exists")
    if entry.expected_version is not None:
        if current is None:
            raise NotFoundError(f"no memory {first.id!r}")
        if current[2] != cube_id or current[1] != entry.expected_version:
            raise ConflictError(
                f"memory {first.id} is at version {current[1]} in cube {current[2]}, "
                f"expected version {entry.expected_version} in {cube_id}"
            )
    try:
        conn.executemany(
            "INSERT INTO item_versions (item_id, version, cube_id, clock, op, at, doc) "
            "VALUES (?,?,?,?,?,?,?)",
            [(r.item.id, r.item.version, cube_id, clocks[r.clock], r.op, r.at.timestamp(),
              _item_doc(r.item)) for r in entry.versions],
        )
    except sqlite3.IntegrityError:
        raise ConflictError(f"memory {first.id} already has one of these versions") from None
    latest: MemoryItem = entry.versions[-1].item
    rowid = vault._write_item_row(conn, cube_id, latest, None if current is None else current[0])
    if current is None and entry.stats is not None:
        s = entry.stats
        conn.execute(
            "UPDATE items SET access_count = ?, last_accessed = ?, used_in_answer_count = ?, "
            "feedback_score = ?, heat = ? WHERE rowid = ?",
            (s.access_count, s.last_accessed.timestamp() if s.last_accessed else None,
             s.used_in_answer_count, s.feedback_score, s.heat, rowid),
        )
    if entry.vector is not None:
        vault._store_vector(conn, cube_id, rowid, entry.vector, dim)


def _wipe_cube(conn: sqlite3.Connection, cube_id: str) -> None:
    """Erase every item of the cube (as `purge` does), inside the caller's transaction."""
    rowids = [r for (r,) in conn.execute("SELECT rowid FROM items WHERE cube_id = ?",
                                         (cube_id,))]
    fts.empty(conn, [cube_id])
    conn.execute("DELETE FROM vectors WHERE cube_id = ?", (cube_id,))
    conn.execute("DELETE FROM item_tags WHERE item_rowid IN (SELECT rowid FROM items "
                 "WHERE cube_id = ?)", (cube_id,))
    conn.execute("DELETE FROM item_versions WHERE cube_id = ?", (cube_id,))
    conn.execute("DELETE FROM items WHERE cube_id = ?", (cube_id,))
    conn.executemany("INSERT INTO vec_log (cube_id, item_rowid, removed) VALUES (?, ?, 1)",
                     [(cube_id, r) for r in rowids])
