"""The SQLite vault's full-text indexes: one FTS5 table per cube.

BM25 scores a document against its corpus (idf from how many documents hold a term, length
normalised by the average length). A cube is a corpus of its own: with one index for the
whole file, a cube's words moved every other cube's scores (on five LoCoMo conversations in
one vault, recall@10 fell from 0.7993 searched one vault each to 0.7852), and a cube's
consolidation reordered searches in cubes it never touched. PostgreSQL computes the same
statistics per searched cube in SQL (postgres_search.py).

A cube's table is `fts_<n>`, `n` from `fts_tables`: a cube id is user-visible text, an
integer is a safe SQL name. `create_cube` makes the table; wiping a cube empties it.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterable, Sequence

FTS_SCHEMA = """
CREATE TABLE IF NOT EXISTS fts_tables (
    n INTEGER PRIMARY KEY,
    cube_id TEXT NOT NULL UNIQUE
);
"""

_TOKENIZER = "porter unicode61 remove_diacritics 2"
_LEGACY = "items_fts"
"""Schema version 1's single index for every cube (migrated by `split_legacy_index`)."""


def _name(n: int) -> str:
    return f"fts_{int(n)}"


def table_for(conn: sqlite3.Connection, cube_id: str) -> str:
    """The cube's FTS table, created on first use (inside the caller's write transaction)."""
    conn.execute("INSERT OR IGNORE INTO fts_tables (cube_id) VALUES (?)", (cube_id,))
    (n,) = conn.execute("SELECT n FROM fts_tables WHERE cube_id = ?", (cube_id,)).fetchone()
    name = _name(n)
    conn.execute(f"CREATE VIRTUAL TABLE IF NOT EXISTS {name} USING fts5("
                 f"text, tags, tokenize = '{_TOKENIZER}')")
    return name


def tables_of(conn: sqlite3.Connection, cube_ids: Sequence[str]) -> list[tuple[str, str]]:
    """(cube id, FTS table) for the given cubes that have one, or for every cube."""
    if cube_ids:
        marks = ",".join("?" * len(cube_ids))
        rows = conn.execute(
            f"SELECT cube_id, n FROM fts_tables WHERE cube_id IN ({marks}) ORDER BY n",
            list(cube_ids)).fetchall()
    else:
        rows = conn.execute("SELECT cube_id, n FROM fts_tables ORDER BY n").fetchall()
    return [(cube_id, _name(n)) for cube_id, n in rows]


def index(conn: sqlite3.Connection, cube_id: str, rowid: int, text: str,
          tags: Iterable[str]) -> None:
    found = conn.execute("SELECT n FROM fts_tables WHERE cube_id = ?", (cube_id,)).fetchone()
    table = _name(found[0]) if found else table_for(conn, cube_id)
    conn.execute(f"INSERT INTO {table} (rowid, text, tags) VALUES (?, ?, ?)",
                 (rowid, text, " ".join(tags)))


def unindex(conn: sqlite3.Connection, cube_id: str, rowid: int) -> None:
    for _, table in tables_of(conn, [cube_id]):
        conn.execute(f"DELETE FROM {table} WHERE rowid = ?", (rowid,))


def empty(conn: sqlite3.Connection, cube_ids: Sequence[str] = ()) -> None:
    """Remove every row from the cubes' tables (all cubes when none are named)."""
    for _, table in tables_of(conn, cube_ids):
        conn.execute(f"DELETE FROM {table}")


def optimize(conn: sqlite3.Connection, cube_ids: Sequence[str]) -> None:
    """Merge the cubes' index segments: FTS5 keeps deleted terms in old segments until then
    (a purge must leave no trace of the text)."""
    for _, table in tables_of(conn, cube_ids):
        conn.execute(f"INSERT INTO {table} ({table}) VALUES ('optimize')")


def has_legacy_index(conn: sqlite3.Connection) -> bool:
    return conn.execute("SELECT 1 FROM sqlite_master WHERE name = ?",
                        (_LEGACY,)).fetchone() is not None


def split_legacy_index(conn: sqlite3.Connection) -> int:
    """Move schema version 1's shared index into per-cube tables, inside the caller's
    write transaction; returns the rows moved."""
    moved = 0
    cube_ids = [c for (c,) in conn.execute("SELECT DISTINCT cube_id FROM items")]
    for cube_id in cube_ids:
        table = table_for(conn, cube_id)
        moved += conn.execute(
            f"INSERT INTO {table} (rowid, text, tags) SELECT f.rowid, f.text, f.tags "
            f"FROM {_LEGACY} f JOIN items i ON i.rowid = f.rowid WHERE i.cube_id = ?",
            (cube_id,)).rowcount
    conn.execute(f"DROP TABLE {_LEGACY}")
    return moved
