"""The graph tables in the SQLite vault file, and the `GraphDB` adapter for its connections.

The DDL is idempotent (CREATE ... IF NOT EXISTS), so an older vault file gains the tables
on open; its graph is then empty until `memosys graph build`.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Sequence
from typing import Any

import numpy as np

from memosys.infra.vault.graph_sql import GraphDB

GRAPH_SCHEMA = """
CREATE TABLE IF NOT EXISTS graph_entities (
    id TEXT PRIMARY KEY,
    cube_id TEXT NOT NULL,
    name TEXT NOT NULL,
    key TEXT NOT NULL,
    head TEXT NOT NULL,
    type TEXT NOT NULL,
    owner_id TEXT,
    role TEXT,
    mentions INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX IF NOT EXISTS graph_entities_cube ON graph_entities(cube_id, mentions);
CREATE INDEX IF NOT EXISTS graph_entities_role ON graph_entities(owner_id, role);
CREATE INDEX IF NOT EXISTS graph_entities_key ON graph_entities(cube_id, key);
CREATE INDEX IF NOT EXISTS graph_entities_head ON graph_entities(cube_id, head);
CREATE TABLE IF NOT EXISTS graph_mentions (
    cube_id TEXT NOT NULL,
    item_id TEXT NOT NULL,
    item_version INTEGER NOT NULL,
    entity_id TEXT NOT NULL,
    surface TEXT NOT NULL,
    key TEXT NOT NULL,
    speaker INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (item_id, entity_id, key)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS graph_mentions_entity ON graph_mentions(entity_id, item_id);
CREATE INDEX IF NOT EXISTS graph_mentions_key ON graph_mentions(cube_id, key);
CREATE TABLE IF NOT EXISTS graph_relations (
    id TEXT PRIMARY KEY,
    cube_id TEXT NOT NULL,
    subject_id TEXT NOT NULL,
    predicate TEXT NOT NULL,
    object_id TEXT NOT NULL,
    valid_from REAL NOT NULL,
    valid_to REAL,
    source_valid_to REAL,
    confidence REAL NOT NULL,
    functional INTEGER NOT NULL DEFAULT 0,
    item_id TEXT NOT NULL,
    item_version INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS graph_relations_subject ON graph_relations(subject_id, predicate);
CREATE INDEX IF NOT EXISTS graph_relations_object ON graph_relations(object_id);
CREATE INDEX IF NOT EXISTS graph_relations_item ON graph_relations(item_id);
CREATE INDEX IF NOT EXISTS graph_relations_cube ON graph_relations(cube_id, subject_id, predicate);
CREATE TABLE IF NOT EXISTS graph_follows (
    item_id TEXT PRIMARY KEY,
    prev_id TEXT NOT NULL,
    cube_id TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS graph_follows_prev ON graph_follows(prev_id);
CREATE INDEX IF NOT EXISTS graph_follows_cube ON graph_follows(cube_id);
CREATE TABLE IF NOT EXISTS graph_derived (
    item_id TEXT NOT NULL,
    source_id TEXT NOT NULL,
    cube_id TEXT NOT NULL,
    PRIMARY KEY (item_id, source_id)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS graph_derived_source ON graph_derived(source_id);
CREATE INDEX IF NOT EXISTS graph_derived_cube ON graph_derived(cube_id);
"""


class SQLiteGraphDB(GraphDB):
    order_col = "rowid"

    def __init__(self, conn: sqlite3.Connection) -> None:
        self.conn = conn

    def rows(self, query: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        return self.conn.execute(query, tuple(params)).fetchall()

    def run(self, query: str, params: Sequence[Any] = ()) -> None:
        self.conn.execute(query, tuple(params))

    def many(self, query: str, rows: Sequence[Sequence[Any]]) -> None:
        self.conn.executemany(query, [tuple(r) for r in rows])

    def any_of(self, column: str, values: Sequence[Any]) -> tuple[str, list[Any]]:
        return f"{column} IN ({','.join('?' * len(values))})", list(values)

    def vectors(self, ids: Sequence[str]) -> dict[str, Any]:
        where, params = self.any_of("i.id", list(ids))
        return {item_id: np.frombuffer(blob, dtype=np.float32).copy() for item_id, blob in
                self.rows("SELECT i.id, v.vec FROM vectors v JOIN items i ON i.rowid = "
                          f"v.item_rowid WHERE {where}", params)} if ids else {}
