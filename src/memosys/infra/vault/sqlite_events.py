"""The event outbox, webhooks and delivery log in the SQLite vault's file (additive tables,
created idempotently; the vault's schema version is untouched). Every write already runs
under the database write lock (BEGIN IMMEDIATE), so AUTOINCREMENT sequence numbers grow
in commit order and claims need no row locks."""

from __future__ import annotations

import sqlite3
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from memosys.infra.events import NewEvent
from memosys.infra.vault.events_sql import SQLEventStore, event_row

if TYPE_CHECKING:
    from memosys.infra.vault.sqlite import SQLiteVault

EVENTS_SCHEMA = """
CREATE TABLE IF NOT EXISTS events (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    id TEXT NOT NULL UNIQUE,
    kind TEXT NOT NULL,
    cube_id TEXT NOT NULL,
    memory_id TEXT,
    version INTEGER,
    op TEXT NOT NULL,
    actor TEXT NOT NULL,
    at REAL NOT NULL,
    payload TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS events_cube ON events(cube_id, seq);
CREATE INDEX IF NOT EXISTS events_memory ON events(memory_id);
CREATE INDEX IF NOT EXISTS events_at ON events(at);
CREATE TABLE IF NOT EXISTS event_webhooks (
    id TEXT PRIMARY KEY,
    owner TEXT NOT NULL,
    url TEXT NOT NULL,
    secret TEXT NOT NULL,
    kinds TEXT NOT NULL,
    cube_ids TEXT NOT NULL,
    created_at REAL NOT NULL,
    active INTEGER NOT NULL,
    cursor INTEGER NOT NULL,
    scopes TEXT NOT NULL,
    description TEXT NOT NULL DEFAULT ''
);
CREATE INDEX IF NOT EXISTS event_webhooks_owner ON event_webhooks(owner);
CREATE TABLE IF NOT EXISTS event_deliveries (
    id TEXT PRIMARY KEY,
    webhook_id TEXT NOT NULL,
    event_seq INTEGER NOT NULL,
    event_id TEXT NOT NULL,
    state TEXT NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0,
    retry_budget INTEGER NOT NULL DEFAULT 0,
    next_at REAL NOT NULL,
    lease_until REAL,
    last_status INTEGER,
    last_error TEXT,
    updated_at REAL NOT NULL,
    UNIQUE (webhook_id, event_seq)
);
CREATE INDEX IF NOT EXISTS event_deliveries_due ON event_deliveries(state, next_at);
CREATE TABLE IF NOT EXISTS event_attempts (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    delivery_id TEXT NOT NULL,
    webhook_id TEXT NOT NULL,
    event_seq INTEGER NOT NULL,
    attempt INTEGER NOT NULL,
    at REAL NOT NULL,
    status_code INTEGER,
    error TEXT,
    duration_ms REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS event_attempts_hook ON event_attempts(webhook_id, at);
"""

_INSERT = ("INSERT INTO events (id, kind, cube_id, memory_id, version, op, actor, at, payload)"
           " VALUES (?,?,?,?,?,?,?,?,?)")


class SQLiteEventDialect:
    mark = "?"
    skip_locked = ""

    def insert_events(self, conn: sqlite3.Connection, events: Sequence[NewEvent]) -> None:
        if events:
            conn.executemany(_INSERT, [event_row(e) for e in events])


DIALECT = SQLiteEventDialect()


class SQLiteEventStore(SQLEventStore):
    dialect = DIALECT

    def __init__(self, vault: SQLiteVault) -> None:
        self._vault = vault

    def _tx(self, work: Callable[[Any], Any]) -> Any:
        with self._vault._write() as conn:
            return work(conn)

    def _read(self, query: str, params: Sequence[Any] = ()) -> list[Any]:
        return self._vault._conn().execute(query, params).fetchall()
