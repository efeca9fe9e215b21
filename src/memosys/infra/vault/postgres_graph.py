"""The graph tables in PostgreSQL (migration step `GRAPH_MIGRATION_SQL`) and the
`GraphDB` adapter for pooled psycopg connections. Same tables and columns as SQLite
(`sqlite_graph.py`); the SQL itself is shared (`graph_sql.py`)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import psycopg

from memosys.infra.vault.graph_sql import GraphDB

GRAPH_MIGRATION_SQL = """
CREATE TABLE graph_entities (
    id text PRIMARY KEY,
    cube_id text NOT NULL,
    name text NOT NULL,
    key text NOT NULL,
    head text NOT NULL,
    type text NOT NULL,
    owner_id text,
    role text,
    mentions integer NOT NULL DEFAULT 0
);
CREATE INDEX graph_entities_cube ON graph_entities (cube_id, mentions);
CREATE INDEX graph_entities_role ON graph_entities (owner_id, role);
CREATE INDEX graph_entities_key ON graph_entities (cube_id, key);
CREATE INDEX graph_entities_head ON graph_entities (cube_id, head);

CREATE TABLE graph_mentions (
    cube_id text NOT NULL,
    item_id text NOT NULL,
    item_version integer NOT NULL,
    entity_id text NOT NULL,
    surface text NOT NULL,
    key text NOT NULL,
    speaker integer NOT NULL DEFAULT 0,
    PRIMARY KEY (item_id, entity_id, key)
);
CREATE INDEX graph_mentions_entity ON graph_mentions (entity_id, item_id);
CREATE INDEX graph_mentions_key ON graph_mentions (cube_id, key);

CREATE TABLE graph_relations (
    id text PRIMARY KEY,
    cube_id text NOT NULL,
    subject_id text NOT NULL,
    predicate text NOT NULL,
    object_id text NOT NULL,
    valid_from double precision NOT NULL,
    valid_to double precision,
    source_valid_to double precision,
    confidence double precision NOT NULL,
    functional integer NOT NULL DEFAULT 0,
    item_id text NOT NULL,
    item_version integer NOT NULL
);
CREATE INDEX graph_relations_subject ON graph_relations (subject_id, predicate);
CREATE INDEX graph_relations_object ON graph_relations (object_id);
CREATE INDEX graph_relations_item ON graph_relations (item_id);
CREATE INDEX graph_relations_cube ON graph_relations (cube_id, subject_id, predicate);

CREATE TABLE graph_follows (
    item_id text PRIMARY KEY,
    prev_id text NOT NULL,
    cube_id text NOT NULL
);
CREATE INDEX graph_follows_prev ON graph_follows (prev_id);
CREATE INDEX graph_follows_cube ON graph_follows (cube_id);

CREATE TABLE graph_derived (
    item_id text NOT NULL,
    source_id text NOT NULL,
    cube_id text NOT NULL,
    PRIMARY KEY (item_id, source_id)
);
CREATE INDEX graph_derived_source ON graph_derived (source_id);
CREATE INDEX graph_derived_cube ON graph_derived (cube_id);
"""


def _param(value: Any) -> Any:
    # PostgreSQL text cannot hold NUL (the item JSON keeps it escaped).
    return value.replace("\x00", "\ufffd") if isinstance(value, str) else value


def _sql(query: str) -> str:
    return query.replace("%", "%%").replace("?", "%s")


class PostgresGraphDB(GraphDB):
    order_col = "seq"

    def __init__(self, conn: psycopg.Connection[Any]) -> None:
        self.conn = conn

    def rows(self, query: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        return self.conn.execute(_sql(query), [_param(p) for p in params]).fetchall()  # type: ignore[arg-type]

    def run(self, query: str, params: Sequence[Any] = ()) -> None:
        self.conn.execute(_sql(query), [_param(p) for p in params])  # type: ignore[arg-type]

    def many(self, query: str, rows: Sequence[Sequence[Any]]) -> None:
        with self.conn.cursor() as cur:
            cur.executemany(_sql(query), [[_param(p) for p in r] for r in rows])  # type: ignore[arg-type]

    def any_of(self, column: str, values: Sequence[Any]) -> tuple[str, list[Any]]:
        return f"{column} = ANY(?)", [[_param(v) for v in values]]

    def vectors(self, ids: Sequence[str]) -> dict[str, Any]:
        if not ids:
            return {}
        rows = self.rows("SELECT item_id, embedding FROM vectors WHERE item_id = ANY(?)",
                         [list(ids)])
        return {item_id: np.asarray(vec.to_numpy(), dtype=np.float32) for item_id, vec in rows}

    def lock_cube(self, cube_id: str) -> bool:
        # the order `commit` locks in: the cube row first
        return bool(self.rows("SELECT 1 FROM cubes WHERE id = ? FOR UPDATE", (cube_id,)))
