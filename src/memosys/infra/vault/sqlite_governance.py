"""GovernanceStore on the SQLite vault's file: users, keys, ACLs, audit, policies, reviews.

Tables are created idempotently next to the vault's own (additive; the vault schema
version is untouched). The audit table refuses UPDATE and DELETE through triggers; the
hash chain still catches whoever edits the file directly. Appends run under the vault's
write lock (BEGIN IMMEDIATE), which serialises the chain across threads and processes.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Callable, Sequence
from datetime import datetime
from typing import TYPE_CHECKING, Any

from memosys.errors import ConflictError, NotFoundError
from memosys.infra.governance import (
    GENESIS,
    ApiKey,
    AuditEntry,
    GovernanceStore,
    Grant,
    NewAuditEntry,
    ReviewEntry,
    User,
    entry_hash,
    utcnow,
)

if TYPE_CHECKING:
    from memosys.infra.vault.sqlite import SQLiteVault

GOVERNANCE_SCHEMA = """
CREATE TABLE IF NOT EXISTS gov_users (
    id TEXT PRIMARY KEY,
    role TEXT NOT NULL,
    created_at TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS gov_keys (
    id TEXT PRIMARY KEY,
    user_id TEXT NOT NULL,
    secret_hash TEXT NOT NULL,
    scopes TEXT NOT NULL,
    agent TEXT,
    created_at TEXT NOT NULL,
    revoked_at TEXT
);
CREATE INDEX IF NOT EXISTS gov_keys_user ON gov_keys(user_id);
CREATE TABLE IF NOT EXISTS gov_grants (
    cube_id TEXT NOT NULL,
    user_id TEXT NOT NULL,
    permissions TEXT NOT NULL,
    granted_by TEXT NOT NULL,
    at TEXT NOT NULL,
    PRIMARY KEY (cube_id, user_id)
);
CREATE INDEX IF NOT EXISTS gov_grants_user ON gov_grants(user_id);
CREATE TABLE IF NOT EXISTS gov_audit (
    seq INTEGER PRIMARY KEY,
    at TEXT NOT NULL,
    actor TEXT NOT NULL,
    agent TEXT,
    key_id TEXT,
    op TEXT NOT NULL,
    outcome TEXT NOT NULL,
    cube_id TEXT,
    items TEXT NOT NULL,
    detail TEXT NOT NULL,
    prev_hash TEXT NOT NULL,
    hash TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS gov_audit_cube ON gov_audit(cube_id, seq);
CREATE INDEX IF NOT EXISTS gov_audit_actor ON gov_audit(actor, seq);
CREATE TABLE IF NOT EXISTS gov_audit_items (
    item_id TEXT NOT NULL,
    seq INTEGER NOT NULL,
    PRIMARY KEY (item_id, seq)
) WITHOUT ROWID;
CREATE TRIGGER IF NOT EXISTS gov_audit_no_update BEFORE UPDATE ON gov_audit
BEGIN SELECT RAISE(ABORT, 'the audit log is append-only'); END;
CREATE TRIGGER IF NOT EXISTS gov_audit_no_delete BEFORE DELETE ON gov_audit
BEGIN SELECT RAISE(ABORT, 'the audit log is append-only'); END;
CREATE TABLE IF NOT EXISTS gov_policies (
    cube_id TEXT PRIMARY KEY,
    doc TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS gov_reviews (
    id TEXT PRIMARY KEY,
    cube_id TEXT NOT NULL,
    item_id TEXT NOT NULL,
    kind TEXT NOT NULL,
    reason TEXT NOT NULL,
    related TEXT NOT NULL,
    state TEXT NOT NULL,
    created_at TEXT NOT NULL,
    resolved_by TEXT,
    resolved_at TEXT
);
CREATE INDEX IF NOT EXISTS gov_reviews_cube ON gov_reviews(cube_id, state, created_at);
CREATE UNIQUE INDEX IF NOT EXISTS gov_reviews_open ON gov_reviews(item_id, kind)
    WHERE state = 'open';
"""


def _iso(value: datetime | None) -> str | None:
    return value.isoformat(timespec="microseconds") if value is not None else None


def _dt(value: str | None) -> datetime | None:
    return datetime.fromisoformat(value) if value is not None else None


def _user(row: tuple[Any, ...]) -> User:
    return User(row[0], row[1], datetime.fromisoformat(row[2]))


_KEY_COLS = "id, user_id, secret_hash, scopes, agent, created_at, revoked_at"


def _key(row: tuple[Any, ...]) -> ApiKey:
    kid, user_id, secret_hash, scopes, agent, created, revoked = row
    return ApiKey(kid, user_id, frozenset(json.loads(scopes)), agent,
                  datetime.fromisoformat(created), _dt(revoked), secret_hash)


_AUDIT_COLS = "seq, at, actor, agent, key_id, op, outcome, cube_id, items, detail, prev_hash, hash"


def chain_audit(entries: Sequence[NewAuditEntry], last_seq: int,
                last_hash: str) -> list[tuple[tuple[Any, ...], AuditEntry]]:
    """The entries that follow (last_seq, last_hash) in the hash chain, each with its
    gov_audit row (columns `_AUDIT_COLS`). One computation for both backends, so the chain
    verifies the same way whichever store wrote it."""
    out: list[tuple[tuple[Any, ...], AuditEntry]] = []
    seq, prev = last_seq, last_hash
    for raw in entries:
        e = normalised(raw)
        seq += 1
        at = datetime.fromisoformat(_iso(utcnow()) or "")  # hashed at the stored precision
        digest = entry_hash(prev, seq, at, e)
        row = (seq, _iso(at), e.actor, e.agent, e.key_id, e.op, e.outcome, e.cube_id,
               canonical([list(p) for p in e.items]), canonical(e.detail), prev, digest)
        out.append((row, AuditEntry(seq, at, e.actor, e.agent, e.key_id, e.op, e.outcome,
                                    e.cube_id, e.items, e.detail, prev, digest)))
        prev = digest
    return out


def audit_item_rows(entry: AuditEntry) -> list[tuple[str, int]]:
    """gov_audit_items rows of an entry: each memory id once."""
    return [(i, entry.seq) for i in dict.fromkeys(i for i, _ in entry.items)]


def audit_query(mark: str, *, after_seq: int, limit: int | None, cube_id: str | None,
                actor: str | None, item_id: str | None,
                newest_first: bool) -> tuple[str, list[Any]]:
    """The audit listing's SELECT with `mark` as the driver's placeholder (? or %s)."""
    clauses, params = [f"a.seq > {mark}"], [after_seq]
    if cube_id is not None:
        clauses.append(f"a.cube_id = {mark}")
        params.append(cube_id)
    if actor is not None:
        clauses.append(f"a.actor = {mark}")
        params.append(actor)
    if item_id is not None:
        clauses.append(f"a.seq IN (SELECT seq FROM gov_audit_items WHERE item_id = {mark})")
        params.append(item_id)
    cols = ", ".join(f"a.{c.strip()}" for c in _AUDIT_COLS.split(","))
    query = (f"SELECT {cols} FROM gov_audit a WHERE {' AND '.join(clauses)} "
             f"ORDER BY a.seq {'DESC' if newest_first else 'ASC'}")
    if limit is not None:
        query += f" LIMIT {mark}"
        params.append(limit)
    return query, params


def audit_from_row(row: Sequence[Any]) -> AuditEntry:
    seq, at, actor, agent, key_id, op, outcome, cube_id, items, detail, prev, digest = row
    return AuditEntry(
        int(seq), datetime.fromisoformat(at), actor, agent, key_id, op, outcome, cube_id,
        tuple((str(i), int(v)) for i, v in json.loads(items)), json.loads(detail), prev,
        digest,
    )


_REVIEW_COLS = ("id, cube_id, item_id, kind, reason, related, state, created_at, "
                "resolved_by, resolved_at")


def review_from_row(row: Sequence[Any]) -> ReviewEntry:
    rid, cube_id, item_id, kind, reason, related, state, created, by, resolved = row
    return ReviewEntry(rid, cube_id, item_id, kind, reason, tuple(json.loads(related)), state,
                       _to_dt(created), by, _to_dt(resolved) if resolved else None)


def _to_dt(value: Any) -> datetime:
    return value if isinstance(value, datetime) else datetime.fromisoformat(value)


def canonical(value: Any) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False,
                      default=str)


def normalised(entry: NewAuditEntry) -> NewAuditEntry:
    """What a JSON round trip gives back, so the hash computed now matches the one
    recomputed from the stored row."""
    items = tuple((str(i), int(v)) for i, v in entry.items)
    detail = json.loads(canonical(entry.detail))
    return NewAuditEntry(entry.actor, entry.op, entry.outcome, entry.cube_id, items, detail,
                         entry.agent, entry.key_id)


class SQLiteGovernance(GovernanceStore):
    def __init__(self, vault: SQLiteVault) -> None:
        self._vault = vault
        vault._conn().executescript(GOVERNANCE_SCHEMA)

    def _read(self, query: str, params: Sequence[Any] = ()) -> list[Any]:
        return self._vault._conn().execute(query, params).fetchall()

    # --- users -----------------------------------------------------------------------
    def create_user(self, user_id: str, role: str) -> User:
        now = utcnow()
        with self._vault._write() as conn:
            try:
                conn.execute("INSERT INTO gov_users VALUES (?, ?, ?)", (user_id, role, _iso(now)))
            except sqlite3.IntegrityError:
                raise ConflictError(f"user {user_id!r} already exists") from None
        return User(user_id, role, now)

    def get_user(self, user_id: str) -> User:
        rows = self._read("SELECT id, role, created_at FROM gov_users WHERE id = ?", (user_id,))
        if not rows:
            raise NotFoundError(f"no user {user_id!r}")
        return _user(rows[0])

    def list_users(self) -> list[User]:
        return [_user(r) for r in self._read(
            "SELECT id, role, created_at FROM gov_users ORDER BY id")]

    def set_role(self, user_id: str, role: str) -> User:
        with self._vault._write() as conn:
            if conn.execute("UPDATE gov_users SET role = ? WHERE id = ?",
                            (role, user_id)).rowcount == 0:
                raise NotFoundError(f"no user {user_id!r}")
        return self.get_user(user_id)

    def delete_user(self, user_id: str) -> None:
        now = _iso(utcnow())
        with self._vault._write() as conn:
            if conn.execute("DELETE FROM gov_users WHERE id = ?", (user_id,)).rowcount == 0:
                raise NotFoundError(f"no user {user_id!r}")
            conn.execute("UPDATE gov_keys SET revoked_at = ? WHERE user_id = ? AND "
                         "revoked_at IS NULL", (now, user_id))
            conn.execute("DELETE FROM gov_grants WHERE user_id = ?", (user_id,))

    # --- keys ------------------------------------------------------------------------
    def add_key(self, key: ApiKey) -> ApiKey:
        with self._vault._write() as conn:
            conn.execute(
                f"INSERT INTO gov_keys ({_KEY_COLS}) VALUES (?, ?, ?, ?, ?, ?, ?)",
                (key.id, key.user_id, key.secret_hash, json.dumps(sorted(key.scopes)),
                 key.agent, _iso(key.created_at), _iso(key.revoked_at)),
            )
        return key

    def get_key(self, key_id: str) -> ApiKey:
        rows = self._read(f"SELECT {_KEY_COLS} FROM gov_keys WHERE id = ?", (key_id,))
        if not rows:
            raise NotFoundError(f"no API key {key_id!r}")
        return _key(rows[0])

    def list_keys(self, user_id: str | None = None) -> list[ApiKey]:
        if user_id is None:
            rows = self._read(f"SELECT {_KEY_COLS} FROM gov_keys ORDER BY created_at, id")
        else:
            rows = self._read(f"SELECT {_KEY_COLS} FROM gov_keys WHERE user_id = ? "
                              "ORDER BY created_at, id", (user_id,))
        return [_key(r) for r in rows]

    def revoke_key(self, key_id: str) -> ApiKey:
        with self._vault._write() as conn:
            found = conn.execute("SELECT 1 FROM gov_keys WHERE id = ?", (key_id,)).fetchone()
            if found is None:
                raise NotFoundError(f"no API key {key_id!r}")
            conn.execute("UPDATE gov_keys SET revoked_at = ? WHERE id = ? AND revoked_at IS "
                         "NULL", (_iso(utcnow()), key_id))
        return self.get_key(key_id)

    # --- ACL -------------------------------------------------------------------------
    def grant(self, grant: Grant) -> Grant:
        with self._vault._write() as conn:
            conn.execute(
                "INSERT OR REPLACE INTO gov_grants VALUES (?, ?, ?, ?, ?)",
                (grant.cube_id, grant.user_id, json.dumps(sorted(grant.permissions)),
                 grant.granted_by, _iso(grant.at)),
            )
        return grant

    def revoke_grant(self, cube_id: str, user_id: str) -> bool:
        with self._vault._write() as conn:
            return conn.execute("DELETE FROM gov_grants WHERE cube_id = ? AND user_id = ?",
                                (cube_id, user_id)).rowcount > 0

    def grants_for_user(self, user_id: str) -> dict[str, frozenset[str]]:
        return {c: frozenset(json.loads(p)) for c, p in self._read(
            "SELECT cube_id, permissions FROM gov_grants WHERE user_id = ?", (user_id,))}

    def grants_for_cube(self, cube_id: str) -> list[Grant]:
        return [Grant(c, u, frozenset(json.loads(p)), by, datetime.fromisoformat(at))
                for c, u, p, by, at in self._read(
                    "SELECT cube_id, user_id, permissions, granted_by, at FROM gov_grants "
                    "WHERE cube_id = ? ORDER BY user_id", (cube_id,))]

    # --- audit -----------------------------------------------------------------------
    def append_audit(self, entries: Sequence[NewAuditEntry]) -> list[AuditEntry]:
        if not entries:
            return []
        with self._vault._write() as conn:
            last = conn.execute(
                "SELECT seq, hash FROM gov_audit ORDER BY seq DESC LIMIT 1").fetchone()
            chained = chain_audit(entries, *((int(last[0]), last[1]) if last else (0, GENESIS)))
            for row, entry in chained:
                conn.execute(
                    f"INSERT INTO gov_audit ({_AUDIT_COLS}) VALUES (?,?,?,?,?,?,?,?,?,?,?,?)",
                    row)
                conn.executemany(
                    "INSERT OR IGNORE INTO gov_audit_items (item_id, seq) VALUES (?, ?)",
                    audit_item_rows(entry))
        return [entry for _, entry in chained]

    def audit_entries(
        self,
        *,
        after_seq: int = 0,
        limit: int | None = None,
        cube_id: str | None = None,
        actor: str | None = None,
        item_id: str | None = None,
        newest_first: bool = False,
    ) -> list[AuditEntry]:
        query, params = audit_query("?", after_seq=after_seq, limit=limit, cube_id=cube_id,
                                    actor=actor, item_id=item_id, newest_first=newest_first)
        return [audit_from_row(r) for r in self._read(query, params)]

    # --- policies --------------------------------------------------------------------
    def get_policy(self, cube_id: str) -> dict[str, Any]:
        rows = self._read("SELECT doc FROM gov_policies WHERE cube_id = ?", (cube_id,))
        return json.loads(rows[0][0]) if rows else {}

    def set_policy(self, cube_id: str, policy: dict[str, Any]) -> None:
        with self._vault._write() as conn:
            conn.execute("INSERT OR REPLACE INTO gov_policies VALUES (?, ?)",
                         (cube_id, canonical(policy)))

    def update_policy(self, cube_id: str,
                      change: Callable[[dict[str, Any]], dict[str, Any]]) -> dict[str, Any]:
        with self._vault._write() as conn:  # BEGIN IMMEDIATE: no writer in between
            row = conn.execute("SELECT doc FROM gov_policies WHERE cube_id = ?",
                               (cube_id,)).fetchone()
            policy = change(json.loads(row[0]) if row else {})
            conn.execute("INSERT OR REPLACE INTO gov_policies VALUES (?, ?)",
                         (cube_id, canonical(policy)))
        return policy

    # --- reviews ---------------------------------------------------------------------
    def add_review(self, entry: ReviewEntry) -> ReviewEntry:
        with self._vault._write() as conn:
            row = conn.execute(
                f"SELECT {_REVIEW_COLS} FROM gov_reviews WHERE item_id = ? AND kind = ? AND "
                "state = 'open'", (entry.item_id, entry.kind)).fetchone()
            if row is not None:
                return review_from_row(row)
            conn.execute(
                f"INSERT INTO gov_reviews ({_REVIEW_COLS}) VALUES (?,?,?,?,?,?,?,?,?,?)",
                (entry.id, entry.cube_id, entry.item_id, entry.kind, entry.reason,
                 json.dumps(list(entry.related_ids)), entry.state, _iso(entry.created_at),
                 entry.resolved_by, _iso(entry.resolved_at)),
            )
        return entry

    def get_review(self, review_id: str) -> ReviewEntry:
        rows = self._read(f"SELECT {_REVIEW_COLS} FROM gov_reviews WHERE id = ?", (review_id,))
        if not rows:
            raise NotFoundError(f"no review entry {review_id!r}")
        return review_from_row(rows[0])

    def list_reviews(
        self, cube_ids: Sequence[str] | None = None, state: str | None = "open",
        limit: int = 100,
    ) -> list[ReviewEntry]:
        clauses: list[str] = []
        params: list[Any] = []
        if cube_ids is not None:
            if not cube_ids:
                return []
            clauses.append(f"cube_id IN ({','.join('?' * len(cube_ids))})")
            params.extend(cube_ids)
        if state is not None:
            clauses.append("state = ?")
            params.append(state)
        where = " AND ".join(clauses) or "1"
        return [review_from_row(r) for r in self._read(
            f"SELECT {_REVIEW_COLS} FROM gov_reviews WHERE {where} ORDER BY created_at, id "
            "LIMIT ?", (*params, limit))]

    def resolve_review(self, review_id: str, state: str, by: str) -> ReviewEntry:
        with self._vault._write() as conn:
            cur = conn.execute(
                "UPDATE gov_reviews SET state = ?, resolved_by = ?, resolved_at = ? "
                "WHERE id = ? AND state = 'open'", (state, by, _iso(utcnow()), review_id))
            if cur.rowcount == 0:
                if conn.execute("SELECT 1 FROM gov_reviews WHERE id = ?",
                                (review_id,)).fetchone() is None:
                    raise NotFoundError(f"no review entry {review_id!r}")
                raise ConflictError(f"review entry {review_id} is already resolved")
        return self.get_review(review_id)

    def forget_items(self, item_ids: Sequence[str]) -> None:
        ids = list(item_ids)
        if not ids:
            return
        with self._vault._write() as conn:
            for start in range(0, len(ids), 500):
                chunk = ids[start : start + 500]
                conn.execute(f"DELETE FROM gov_reviews WHERE item_id IN "
                             f"({','.join('?' * len(chunk))})", chunk)
