"""GovernanceStore on PostgreSQL: users, keys, ACLs, audit, policies, reviews.

The tables come from migration step `GOVERNANCE_MIGRATION` (postgres_schema). The audit
table refuses UPDATE, DELETE and TRUNCATE through triggers; appends take a transaction-
scoped advisory lock, so concurrent workers extend one chain in order.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

import psycopg
from psycopg import errors as pg_errors

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
    utcnow,
)
from memosys.infra.vault.sqlite_governance import (
    _AUDIT_COLS,
    _KEY_COLS,
    _REVIEW_COLS,
    audit_from_row,
    audit_item_rows,
    audit_query,
    canonical,
    chain_audit,
    review_from_row,
)

if TYPE_CHECKING:
    from memosys.infra.vault.postgres import PostgresVault

AUDIT_LOCK = 0x6D656D6F73797302
"""pg_advisory_xact_lock key serialising audit appends ("memosys" + 2)."""

GOVERNANCE_SQL = """
CREATE TABLE gov_users (
    id text PRIMARY KEY,
    role text NOT NULL,
    created_at timestamptz NOT NULL
);
CREATE TABLE gov_keys (
    id text PRIMARY KEY,
    user_id text NOT NULL,
    secret_hash text NOT NULL,
    scopes text NOT NULL,
    agent text,
    created_at timestamptz NOT NULL,
    revoked_at timestamptz
);
CREATE INDEX gov_keys_user ON gov_keys (user_id);
CREATE TABLE gov_grants (
    cube_id text NOT NULL,
    user_id text NOT NULL,
    permissions text NOT NULL,
    granted_by text NOT NULL,
    at timestamptz NOT NULL,
    PRIMARY KEY (cube_id, user_id)
);
CREATE INDEX gov_grants_user ON gov_grants (user_id);
CREATE TABLE gov_audit (
    seq bigint PRIMARY KEY,
    at text NOT NULL,            -- ISO text: hashed exactly as written
    actor text NOT NULL,
    agent text,
    key_id text,
    op text NOT NULL,
    outcome text NOT NULL,
    cube_id text,
    items text NOT NULL,
    detail text NOT NULL,
    prev_hash text NOT NULL,
    hash text NOT NULL
);
CREATE INDEX gov_audit_cube ON gov_audit (cube_id, seq);
CREATE INDEX gov_audit_actor ON gov_audit (actor, seq);
CREATE TABLE gov_audit_items (
    item_id text NOT NULL,
    seq bigint NOT NULL,
    PRIMARY KEY (item_id, seq)
);
CREATE FUNCTION gov_audit_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN RAISE EXCEPTION 'the audit log is append-only'; END $$;
CREATE TRIGGER gov_audit_no_change BEFORE UPDATE OR DELETE ON gov_audit
    FOR EACH ROW EXECUTE FUNCTION gov_audit_append_only();
CREATE TRIGGER gov_audit_no_truncate BEFORE TRUNCATE ON gov_audit
    FOR EACH STATEMENT EXECUTE FUNCTION gov_audit_append_only();
CREATE TABLE gov_policies (
    cube_id text PRIMARY KEY,
    doc text NOT NULL
);
CREATE TABLE gov_reviews (
    id text PRIMARY KEY,
    cube_id text NOT NULL,
    item_id text NOT NULL,
    kind text NOT NULL,
    reason text NOT NULL,
    related text NOT NULL,
    state text NOT NULL,
    created_at timestamptz NOT NULL,
    resolved_by text,
    resolved_at timestamptz
);
CREATE INDEX gov_reviews_cube ON gov_reviews (cube_id, state, created_at);
CREATE UNIQUE INDEX gov_reviews_open ON gov_reviews (item_id, kind) WHERE state = 'open';
"""


def _key(row: Sequence[Any]) -> ApiKey:
    kid, user_id, secret_hash, scopes, agent, created, revoked = row
    return ApiKey(kid, user_id, frozenset(json.loads(scopes)), agent, created, revoked,
                  secret_hash)


class PostgresGovernance(GovernanceStore):
    def __init__(self, vault: PostgresVault) -> None:
        self._vault = vault

    def _read(self, query: str, params: Sequence[Any] = ()) -> list[Any]:
        return self._vault._read(query, params)

    def _tx(self, work: Any) -> Any:
        return self._vault._tx(work)

    # --- users -----------------------------------------------------------------------
    def create_user(self, user_id: str, role: str) -> User:
        now = utcnow()

        def work(conn: psycopg.Connection[Any]) -> None:
            try:
                conn.execute("INSERT INTO gov_users VALUES (%s, %s, %s)", (user_id, role, now))
            except pg_errors.UniqueViolation:
                raise ConflictError(f"user {user_id!r} already exists") from None

        self._tx(work)
        return User(user_id, role, now)

    def get_user(self, user_id: str) -> User:
        rows = self._read("SELECT id, role, created_at FROM gov_users WHERE id = %s",
                          (user_id,))
        if not rows:
            raise NotFoundError(f"no user {user_id!r}")
        return User(*rows[0])

    def list_users(self) -> list[User]:
        return [User(*r) for r in self._read(
            'SELECT id, role, created_at FROM gov_users ORDER BY id COLLATE "C"')]

    def set_role(self, user_id: str, role: str) -> User:
        if not self._vault._statement("UPDATE gov_users SET role = %s WHERE id = %s",
                                      (role, user_id)):
            raise NotFoundError(f"no user {user_id!r}")
        return self.get_user(user_id)

    def delete_user(self, user_id: str) -> None:
        def work(conn: psycopg.Connection[Any]) -> None:
            if conn.execute("DELETE FROM gov_users WHERE id = %s", (user_id,)).rowcount == 0:
                raise NotFoundError(f"no user {user_id!r}")
            conn.execute("UPDATE gov_keys SET revoked_at = %s WHERE user_id = %s AND "
                         "revoked_at IS NULL", (utcnow(), user_id))
            conn.execute("DELETE FROM gov_grants WHERE user_id = %s", (user_id,))

        self._tx(work)

    # --- keys ------------------------------------------------------------------------
    def add_key(self, key: ApiKey) -> ApiKey:
        self._vault._statement(
            f"INSERT INTO gov_keys ({_KEY_COLS}) VALUES (%s, %s, %s, %s, %s, %s, %s)",
            (key.id, key.user_id, key.secret_hash, json.dumps(sorted(key.scopes)), key.agent,
             key.created_at, key.revoked_at))
        return key

    def get_key(self, key_id: str) -> ApiKey:
        rows = self._read(f"SELECT {_KEY_COLS} FROM gov_keys WHERE id = %s", (key_id,))
        if not rows:
            raise NotFoundError(f"no API key {key_id!r}")
        return _key(rows[0])

    def list_keys(self, user_id: str | None = None) -> list[ApiKey]:
        if user_id is None:
            rows = self._read(f"SELECT {_KEY_COLS} FROM gov_keys ORDER BY created_at, id")
        else:
            rows = self._read(f"SELECT {_KEY_COLS} FROM gov_keys WHERE user_id = %s "
                              "ORDER BY created_at, id", (user_id,))
        return [_key(r) for r in rows]

    def revoke_key(self, key_id: str) -> ApiKey:
        self.get_key(key_id)
        self._vault._statement("UPDATE gov_keys SET revoked_at = %s WHERE id = %s AND "
                               "revoked_at IS NULL", (utcnow(), key_id))
        return self.get_key(key_id)

    # --- ACL -------------------------------------------------------------------------
    def grant(self, grant: Grant) -> Grant:
        self._vault._statement(
            "INSERT INTO gov_grants VALUES (%s, %s, %s, %s, %s) ON CONFLICT (cube_id, user_id) "
            "DO UPDATE SET permissions = EXCLUDED.permissions, "
            "granted_by = EXCLUDED.granted_by, at = EXCLUDED.at",
            (grant.cube_id, grant.user_id, json.dumps(sorted(grant.permissions)),
             grant.granted_by, grant.at))
        return grant

    def revoke_grant(self, cube_id: str, user_id: str) -> bool:
        return self._vault._statement(
            "DELETE FROM gov_grants WHERE cube_id = %s AND user_id = %s",
            (cube_id, user_id)) > 0

    def grants_for_user(self, user_id: str) -> dict[str, frozenset[str]]:
        return {c: frozenset(json.loads(p)) for c, p in self._read(
            "SELECT cube_id, permissions FROM gov_grants WHERE user_id = %s", (user_id,))}

    def grants_for_cube(self, cube_id: str) -> list[Grant]:
        return [Grant(c, u, frozenset(json.loads(p)), by, at) for c, u, p, by, at in self._read(
            "SELECT cube_id, user_id, permissions, granted_by, at FROM gov_grants "
            'WHERE cube_id = %s ORDER BY user_id COLLATE "C"', (cube_id,))]

    # --- audit -----------------------------------------------------------------------
    def append_audit(self, entries: Sequence[NewAuditEntry]) -> list[AuditEntry]:
        if not entries:
            return []

        def work(conn: psycopg.Connection[Any]) -> list[AuditEntry]:
            conn.execute("SELECT pg_advisory_xact_lock(%s)", (AUDIT_LOCK,))
            last = conn.execute(
                "SELECT seq, hash FROM gov_audit ORDER BY seq DESC LIMIT 1").fetchone()
            chained = chain_audit(entries, *((int(last[0]), last[1]) if last else (0, GENESIS)))
            for row, entry in chained:
                conn.execute(
                    f"INSERT INTO gov_audit ({_AUDIT_COLS}) VALUES "
                    "(%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s)", row)
                if entry.items:
                    with conn.cursor() as cur:
                        cur.executemany(
                            "INSERT INTO gov_audit_items (item_id, seq) VALUES (%s, %s) "
                            "ON CONFLICT DO NOTHING", audit_item_rows(entry))
            return [entry for _, entry in chained]

        return list(self._tx(work))

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
        query, params = audit_query("%s", after_seq=after_seq, limit=limit, cube_id=cube_id,
                                    actor=actor, item_id=item_id, newest_first=newest_first)
        return [audit_from_row(r) for r in self._read(query, params)]

    # --- policies --------------------------------------------------------------------
    def get_policy(self, cube_id: str) -> dict[str, Any]:
        rows = self._read("SELECT doc FROM gov_policies WHERE cube_id = %s", (cube_id,))
        return json.loads(rows[0][0]) if rows else {}

    def set_policy(self, cube_id: str, policy: dict[str, Any]) -> None:
        self._vault._statement(
            "INSERT INTO gov_policies VALUES (%s, %s) ON CONFLICT (cube_id) DO UPDATE SET "
            "doc = EXCLUDED.doc", (cube_id, canonical(policy)))

    def update_policy(self, cube_id: str,
                      change: Callable[[dict[str, Any]], dict[str, Any]]) -> dict[str, Any]:
        def work(conn: psycopg.Connection[Any]) -> dict[str, Any]:
            # the row must exist before it can be locked; FOR UPDATE then serialises writers
            conn.execute("INSERT INTO gov_policies VALUES (%s, '{}') ON CONFLICT DO NOTHING",
                         (cube_id,))
            row = conn.execute("SELECT doc FROM gov_policies WHERE cube_id = %s FOR UPDATE",
                               (cube_id,)).fetchone()
            policy = change(json.loads(row[0]) if row else {})
            conn.execute("UPDATE gov_policies SET doc = %s WHERE cube_id = %s",
                         (canonical(policy), cube_id))
            return policy

        result: dict[str, Any] = self._tx(work)
        return result

    # --- reviews ---------------------------------------------------------------------
    def add_review(self, entry: ReviewEntry) -> ReviewEntry:
        def work(conn: psycopg.Connection[Any]) -> ReviewEntry:
            inserted = conn.execute(
                f"INSERT INTO gov_reviews ({_REVIEW_COLS}) VALUES "
                "(%s, %s, %s, %s, %s, %s, %s, %s, %s, %s) ON CONFLICT DO NOTHING RETURNING id",
                (entry.id, entry.cube_id, entry.item_id, entry.kind, entry.reason,
                 json.dumps(list(entry.related_ids)), entry.state, entry.created_at,
                 entry.resolved_by, entry.resolved_at)).fetchone()
            if inserted is not None:
                return entry
            row = conn.execute(
                f"SELECT {_REVIEW_COLS} FROM gov_reviews WHERE item_id = %s AND kind = %s "
                "AND state = 'open'", (entry.item_id, entry.kind)).fetchone()
            if row is None:
                raise ConflictError("a review entry with this id already exists")
            return review_from_row(row)

        result: ReviewEntry = self._tx(work)
        return result

    def get_review(self, review_id: str) -> ReviewEntry:
        rows = self._read(f"SELECT {_REVIEW_COLS} FROM gov_reviews WHERE id = %s",
                          (review_id,))
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
            clauses.append("cube_id = ANY(%s)")
            params.append(list(cube_ids))
        if state is not None:
            clauses.append("state = %s")
            params.append(state)
        where = " AND ".join(clauses) or "TRUE"
        return [review_from_row(r) for r in self._read(
            f"SELECT {_REVIEW_COLS} FROM gov_reviews WHERE {where} ORDER BY created_at, id "
            "LIMIT %s", (*params, limit))]

    def resolve_review(self, review_id: str, state: str, by: str) -> ReviewEntry:
        changed = self._vault._statement(
            "UPDATE gov_reviews SET state = %s, resolved_by = %s, resolved_at = %s "
            "WHERE id = %s AND state = 'open'", (state, by, utcnow(), review_id))
        if not changed:
            entry = self.get_review(review_id)  # NotFoundError when absent
            raise ConflictError(f"review entry {entry.id} is already {entry.state}")
        return self.get_review(review_id)

    def forget_items(self, item_ids: Sequence[str]) -> None:
        if item_ids:
            self._vault._statement("DELETE FROM gov_reviews WHERE item_id = ANY(%s)",
                                   (list(item_ids),))
