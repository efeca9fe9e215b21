"""The event outbox, webhooks and their delivery log in SQL: one implementation for SQLite
and PostgreSQL (`sqlite_events.py`, `postgres_events.py` supply the dialect).

Capture (`record_*`) runs on the caller's connection inside the storage write's own
transaction: the vault calls it from `commit`, `purge` and `import_versions`.

Delivery state per (webhook, event) lives in `event_deliveries`; a dispatcher fans new
events out to a webhook under that webhook's row lock (SKIP LOCKED on PostgreSQL: another
worker's busy webhook is skipped, not waited for) and claims due deliveries with a lease
(`lease_until`), so with several workers each delivery is attempted by one at a time and
one that died mid-delivery is retried once its lease runs out (at-least-once).
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Protocol

from memosys.errors import NotFoundError
from memosys.infra.events import (
    EVENT_COLS,
    Event,
    NewEvent,
    commit_events,
    event_from_row,
    import_events,
    purge_event,
    scrubbed,
)
from memosys.types import MemoryItem, new_id


class Conn(Protocol):
    def execute(self, query: Any, params: Any = ..., /) -> Any: ...


class Dialect(Protocol):
    mark: str
    skip_locked: str
    """Appended to a SELECT that claims rows ('' where the write lock is global)."""

    def insert_events(self, conn: Any, events: Sequence[NewEvent]) -> None: ...


def q(dialect: Dialect, query: str) -> str:
    """Queries are written with `?`; PostgreSQL's driver wants `%s`."""
    return query if dialect.mark == "?" else query.replace("?", dialect.mark)


def event_row(e: NewEvent) -> tuple[Any, ...]:
    """(id, kind, cube_id, memory_id, version, op, actor, at, payload)"""
    return (e.id, e.kind, e.cube_id, e.memory_id, e.version, e.op, e.actor, e.at,
            json.dumps(e.payload, ensure_ascii=False, separators=(",", ":")))


# --- capture (inside the write's transaction) ------------------------------------------
def record_commit(conn: Any, dialect: Dialect, stored: Sequence[MemoryItem],
                  ops: Sequence[str]) -> None:
    """The events of one commit: the previous version's state tells an update from a
    state change or a delete."""
    prev: dict[tuple[str, int], str] = {}
    query = q(dialect, "SELECT doc FROM item_versions WHERE item_id = ? AND version = ?")
    for item in stored:
        if item.version > 1 and (item.id, item.version - 1) not in prev:
            row = conn.execute(query, (item.id, item.version - 1)).fetchone()
            if row is not None:
                prev[(item.id, item.version - 1)] = str(json.loads(row[0]).get("state"))
    dialect.insert_events(conn, commit_events(stored, ops, prev))


def record_import(conn: Any, dialect: Dialect, cube_id: str,
                  items: Sequence[tuple[MemoryItem, bool]]) -> None:
    dialect.insert_events(conn, import_events(cube_id, items))


def record_purge(conn: Any, dialect: Dialect, ids: Sequence[str]) -> None:
    """Before the rows go: a `purged` event per memory (no text), and the memory's text
    scrubbed from every earlier event that carries it."""
    wanted = list(dict.fromkeys(ids))
    if not wanted:
        return
    found: list[tuple[str, str, int, str]] = []
    for start in range(0, len(wanted), 500):
        chunk = wanted[start:start + 500]
        marks = ",".join([dialect.mark] * len(chunk))
        found.extend(conn.execute(
            f"SELECT id, cube_id, version, doc FROM items WHERE id IN ({marks})", chunk
        ).fetchall())
    for memory_id, _cube, _version, doc in found:
        texts = [str(json.loads(doc).get("text") or "")] + [
            str(json.loads(d).get("text") or "") for (d,) in conn.execute(
                q(dialect, "SELECT doc FROM item_versions WHERE item_id = ?"), (memory_id,))]
        rows = conn.execute(q(dialect,
            "SELECT seq, memory_id, payload FROM events WHERE memory_id = ? "
            "UNION ALL SELECT seq, memory_id, payload FROM events "
            "WHERE memory_id IS NULL AND payload LIKE ?"), (memory_id, f"%{memory_id}%"),
        ).fetchall()
        update = q(dialect, "UPDATE events SET payload = ? WHERE seq = ?")
        for seq, owner_id, payload in rows:
            before = json.loads(payload)
            after = scrubbed(before, owner_id == memory_id, texts)
            if after != before:
                conn.execute(update, (json.dumps(after, ensure_ascii=False,
                                                 separators=(",", ":")), seq))
    dialect.insert_events(conn, [purge_event(m, c, int(v)) for m, c, v, _ in found])


def record_wipe(conn: Any, dialect: Dialect, cube_id: str) -> None:
    """An import that replaces a cube purges what it held."""
    ids = [r[0] for r in conn.execute(q(dialect, "SELECT id FROM items WHERE cube_id = ?"),
                                      (cube_id,)).fetchall()]
    record_purge(conn, dialect, ids)


# --- webhooks and deliveries -------------------------------------------------------------
@dataclass(frozen=True)
class Webhook:
    id: str
    owner: str
    url: str
    kinds: tuple[str, ...]
    """Empty: every kind."""
    cube_ids: tuple[str, ...]
    """Empty: every cube the owner may read."""
    created_at: datetime
    active: bool
    cursor: int
    """The last event sequence fanned out to this webhook."""
    scopes: tuple[str, ...]
    """The registering key's scopes: deliveries never see more than it could."""
    description: str = ""
    secret: str = field(default="", repr=False)

    def to_json(self) -> dict[str, Any]:
        return {"id": self.id, "owner": self.owner, "url": self.url, "kinds": list(self.kinds),
                "cube_ids": list(self.cube_ids), "created_at": self.created_at.isoformat(),
                "active": self.active, "cursor": self.cursor, "description": self.description}


@dataclass(frozen=True)
class Delivery:
    id: str
    webhook_id: str
    event_seq: int
    event_id: str
    state: str
    """pending | delivered | dead"""
    attempts: int
    next_at: datetime
    last_status: int | None
    last_error: str | None
    updated_at: datetime

    def to_json(self) -> dict[str, Any]:
        return {"id": self.id, "webhook_id": self.webhook_id, "event_seq": self.event_seq,
                "event_id": self.event_id, "state": self.state, "attempts": self.attempts,
                "next_at": self.next_at.isoformat(), "last_status": self.last_status,
                "last_error": self.last_error, "updated_at": self.updated_at.isoformat()}


@dataclass(frozen=True)
class Attempt:
    delivery_id: str
    webhook_id: str
    event_seq: int
    attempt: int
    at: datetime
    status_code: int | None
    error: str | None
    duration_ms: float

    def to_json(self) -> dict[str, Any]:
        return {"delivery_id": self.delivery_id, "webhook_id": self.webhook_id,
                "event_seq": self.event_seq, "attempt": self.attempt,
                "at": self.at.isoformat(), "status_code": self.status_code,
                "error": self.error, "duration_ms": round(self.duration_ms, 1)}


@dataclass(frozen=True)
class Claim:
    """A delivery this worker holds the lease on, with what it needs to send it."""

    delivery: Delivery
    webhook: Webhook
    event: Event


DELIVERY_STATES = ("pending", "delivered", "dead")

_HOOK_COLS = ("id, owner, url, secret, kinds, cube_ids, created_at, active, cursor, scopes, "
              "description")
_DELIVERY_COLS = ("id, webhook_id, event_seq, event_id, state, attempts, next_at, "
                  "last_status, last_error, updated_at")
_ATTEMPT_COLS = ("delivery_id, webhook_id, event_seq, attempt, at, status_code, error, "
                 "duration_ms")


def _dt(value: float) -> datetime:
    return datetime.fromtimestamp(float(value), UTC)


def _hook(row: Sequence[Any]) -> Webhook:
    hid, owner, url, secret, kinds, cubes, created, active, cursor, scopes, desc = row
    return Webhook(hid, owner, url, tuple(json.loads(kinds)), tuple(json.loads(cubes)),
                   _dt(created), bool(active), int(cursor), tuple(json.loads(scopes)),
                   desc or "", secret)


def _delivery(row: Sequence[Any]) -> Delivery:
    did, hid, seq, eid, state, attempts, next_at, status, error, updated = row
    return Delivery(did, hid, int(seq), eid, state, int(attempts), _dt(next_at),
                    None if status is None else int(status), error, _dt(updated))


def _attempt(row: Sequence[Any]) -> Attempt:
    did, hid, seq, attempt, at, status, error, ms = row
    return Attempt(did, hid, int(seq), int(attempt), _dt(at),
                   None if status is None else int(status), error, float(ms))


class SQLEventStore:
    """Reads and the dispatcher's bookkeeping; subclasses give `_tx`, `_read`, dialect."""

    dialect: Dialect

    def _tx(self, work: Callable[[Any], Any]) -> Any:
        raise NotImplementedError

    def _read(self, query: str, params: Sequence[Any] = ()) -> list[Any]:
        raise NotImplementedError

    def _q(self, query: str) -> str:
        return q(self.dialect, query)

    # --- events ------------------------------------------------------------------------
    def publish(self, events: Sequence[NewEvent]) -> None:
        self._tx(lambda conn: self.dialect.insert_events(conn, events))

    def last_seq(self) -> int:
        rows = self._read("SELECT max(seq) FROM events")
        return int(rows[0][0] or 0) if rows else 0

    def events_after(self, seq: int, limit: int, *, cube_ids: Sequence[str] | None = None,
                     kinds: Sequence[str] = ()) -> list[Event]:
        """Events with sequence > `seq`, oldest first; `cube_ids` None: every cube."""
        clauses, params = ["seq > ?"], [seq]
        if cube_ids is not None:
            if not cube_ids:
                return []
            clauses.append(f"cube_id IN ({','.join('?' * len(cube_ids))})")
            params.extend(cube_ids)
        if kinds:
            clauses.append(f"kind IN ({','.join('?' * len(kinds))})")
            params.extend(kinds)
        rows = self._read(self._q(f"SELECT {EVENT_COLS} FROM events WHERE "
                                  f"{' AND '.join(clauses)} ORDER BY seq LIMIT ?"),
                          (*params, limit))
        return [event_from_row(r) for r in rows]

    def prune(self, before: float) -> int:
        """Forget events older than `before` (epoch seconds) that no webhook still needs
        (pending, or not fanned out yet); returns how many went."""
        def work(conn: Any) -> int:
            conn.execute(self._q(
                "DELETE FROM event_attempts WHERE event_seq IN (SELECT seq FROM events "
                "WHERE at < ?) AND event_seq NOT IN (SELECT event_seq FROM event_deliveries "
                "WHERE state = 'pending')"), (before,))
            conn.execute(self._q(
                "DELETE FROM event_deliveries WHERE state != 'pending' AND event_seq IN "
                "(SELECT seq FROM events WHERE at < ?)"), (before,))
            # kept: what a delivery waits for, and what a webhook has not fanned out yet
            cur = conn.execute(self._q(
                "DELETE FROM events WHERE at < ? AND seq NOT IN "
                "(SELECT event_seq FROM event_deliveries) AND seq <= "
                "(SELECT coalesce(min(cursor), 9000000000000000000) FROM event_webhooks)"),
                (before,))
            return int(cur.rowcount or 0)

        return int(self._tx(work))

    # --- webhooks ----------------------------------------------------------------------
    def add_webhook(self, hook: Webhook) -> Webhook:
        def work(conn: Any) -> None:
            conn.execute(self._q(f"INSERT INTO event_webhooks ({_HOOK_COLS}) "
                                 "VALUES (?,?,?,?,?,?,?,?,?,?,?)"),
                         (hook.id, hook.owner, hook.url, hook.secret, json.dumps(hook.kinds),
                          json.dumps(hook.cube_ids), hook.created_at.timestamp(),
                          int(hook.active), hook.cursor, json.dumps(hook.scopes),
                          hook.description))

        self._tx(work)
        return hook

    def get_webhook(self, hook_id: str) -> Webhook:
        rows = self._read(self._q(f"SELECT {_HOOK_COLS} FROM event_webhooks WHERE id = ?"),
                          (hook_id,))
        if not rows:
            raise NotFoundError(f"no webhook {hook_id!r}")
        return _hook(rows[0])

    def list_webhooks(self, owner: str | None = None) -> list[Webhook]:
        if owner is None:
            rows = self._read(f"SELECT {_HOOK_COLS} FROM event_webhooks ORDER BY created_at, id")
        else:
            rows = self._read(self._q(f"SELECT {_HOOK_COLS} FROM event_webhooks WHERE owner = ? "
                                      "ORDER BY created_at, id"), (owner,))
        return [_hook(r) for r in rows]

    def set_webhook_active(self, hook_id: str, active: bool) -> Webhook:
        def work(conn: Any) -> int:
            return int(conn.execute(self._q("UPDATE event_webhooks SET active = ? WHERE id = ?"),
                                    (int(active), hook_id)).rowcount or 0)

        if not self._tx(work):
            raise NotFoundError(f"no webhook {hook_id!r}")
        return self.get_webhook(hook_id)

    def delete_webhook(self, hook_id: str) -> None:
        def work(conn: Any) -> int:
            conn.execute(self._q("DELETE FROM event_attempts WHERE webhook_id = ?"), (hook_id,))
            conn.execute(self._q("DELETE FROM event_deliveries WHERE webhook_id = ?"),
                         (hook_id,))
            return int(conn.execute(self._q("DELETE FROM event_webhooks WHERE id = ?"),
                                    (hook_id,)).rowcount or 0)

        if not self._tx(work):
            raise NotFoundError(f"no webhook {hook_id!r}")

    # --- the dispatcher's side ---------------------------------------------------------
    def fan_out(self, hook_id: str, accept: Callable[[Event], bool], batch: int = 500) -> int:
        """Queue a delivery for each new event the webhook accepts and move its cursor;
        0 when another worker holds the webhook right now. Returns deliveries queued."""
        def work(conn: Any) -> int:
            row = conn.execute(self._q(
                "SELECT cursor FROM event_webhooks WHERE id = ? AND active = 1"
                + self.dialect.skip_locked), (hook_id,)).fetchone()
            if row is None:
                return 0
            events = [event_from_row(r) for r in conn.execute(self._q(
                f"SELECT {EVENT_COLS} FROM events WHERE seq > ? ORDER BY seq LIMIT ?"),
                (int(row[0]), batch)).fetchall()]
            if not events:
                return 0
            now = time.time()
            rows = [(new_id(), hook_id, e.seq, e.id, now, now) for e in events if accept(e)]
            for r in rows:
                conn.execute(self._q(
                    "INSERT INTO event_deliveries (id, webhook_id, event_seq, event_id, state, "
                    "attempts, next_at, updated_at) VALUES (?, ?, ?, ?, 'pending', 0, ?, ?) "
                    "ON CONFLICT (webhook_id, event_seq) DO NOTHING"), r)
            conn.execute(self._q("UPDATE event_webhooks SET cursor = ? WHERE id = ?"),
                         (events[-1].seq, hook_id))
            return len(rows)

        return int(self._tx(work))

    def claim(self, limit: int, lease_seconds: float) -> list[Claim]:
        """Take up to `limit` due deliveries: state pending, due, lease free or expired."""
        if limit <= 0:
            return []
        now = time.time()

        def work(conn: Any) -> list[str]:
            ids = [r[0] for r in conn.execute(self._q(
                "SELECT id FROM event_deliveries WHERE state = 'pending' AND next_at <= ? "
                "AND (lease_until IS NULL OR lease_until < ?) ORDER BY next_at, event_seq "
                "LIMIT ?" + self.dialect.skip_locked), (now, now, limit)).fetchall()]
            for did in ids:
                conn.execute(self._q(
                    "UPDATE event_deliveries SET lease_until = ?, attempts = attempts + 1, "
                    "updated_at = ? WHERE id = ?"), (now + lease_seconds, now, did))
            return ids

        ids: list[str] = self._tx(work)
        if not ids:
            return []
        marks = ",".join("?" * len(ids))
        deliveries = [_delivery(r) for r in self._read(self._q(
            f"SELECT {_DELIVERY_COLS} FROM event_deliveries WHERE id IN ({marks})"), ids)]
        hooks = {h.id: h for h in self.list_webhooks()}  # one may be removed meanwhile
        seqs = sorted({d.event_seq for d in deliveries})
        events = {e.seq: e for e in (event_from_row(r) for r in self._read(self._q(
            f"SELECT {EVENT_COLS} FROM events WHERE seq IN ({','.join('?' * len(seqs))})"),
            seqs))}
        return [Claim(d, hooks[d.webhook_id], events[d.event_seq]) for d in deliveries
                if d.event_seq in events and d.webhook_id in hooks]

    def finish(self, claim: Claim, *, status_code: int | None, error: str | None,
               duration_ms: float, outcome: str, next_at: float | None = None) -> None:
        """Log the attempt and settle the delivery: delivered, dead, or pending again at
        `next_at`. A worker whose lease was taken over (it ran past it) changes nothing
        but the log."""
        d = claim.delivery
        now = time.time()

        def work(conn: Any) -> None:
            conn.execute(self._q(
                f"INSERT INTO event_attempts ({_ATTEMPT_COLS}) VALUES (?,?,?,?,?,?,?,?)"),
                (d.id, d.webhook_id, d.event_seq, d.attempts, now, status_code,
                 None if error is None else error[:500], duration_ms))
            conn.execute(self._q(
                "UPDATE event_deliveries SET state = ?, next_at = ?, lease_until = NULL, "
                "last_status = ?, last_error = ?, updated_at = ? "
                "WHERE id = ? AND attempts = ? AND state = 'pending'"),
                (outcome, next_at if next_at is not None else now, status_code,
                 None if error is None else error[:500], now, d.id, d.attempts))

        self._tx(work)

    def retry(self, delivery_id: str, extra_attempts: int) -> Delivery:
        """A dead-lettered delivery goes back to pending, due now, with `extra_attempts`
        more tries (its attempt numbers continue)."""
        now = time.time()

        def work(conn: Any) -> int:
            return int(conn.execute(self._q(
                "UPDATE event_deliveries SET state = 'pending', next_at = ?, updated_at = ?, "
                "retry_budget = retry_budget + ? WHERE id = ? "
                "AND state = 'dead'"), (now, now, extra_attempts, delivery_id)).rowcount or 0)

        if not self._tx(work):
            self.get_delivery(delivery_id)  # NotFound when absent
        return self.get_delivery(delivery_id)

    def retry_budget(self, delivery_id: str) -> int:
        rows = self._read(self._q("SELECT retry_budget FROM event_deliveries WHERE id = ?"),
                          (delivery_id,))
        return int(rows[0][0]) if rows else 0

    def get_delivery(self, delivery_id: str) -> Delivery:
        rows = self._read(self._q(f"SELECT {_DELIVERY_COLS} FROM event_deliveries "
                                  "WHERE id = ?"), (delivery_id,))
        if not rows:
            raise NotFoundError(f"no delivery {delivery_id!r}")
        return _delivery(rows[0])

    def deliveries(self, hook_id: str, *, state: str | None = None,
                   limit: int = 100) -> list[Delivery]:
        clauses, params = ["webhook_id = ?"], [hook_id]
        if state is not None:
            clauses.append("state = ?")
            params.append(state)
        return [_delivery(r) for r in self._read(self._q(
            f"SELECT {_DELIVERY_COLS} FROM event_deliveries WHERE {' AND '.join(clauses)} "
            "ORDER BY event_seq DESC LIMIT ?"), (*params, limit))]

    def attempts(self, hook_id: str, *, delivery_id: str | None = None,
                 limit: int = 100) -> list[Attempt]:
        clauses, params = ["webhook_id = ?"], [hook_id]
        if delivery_id is not None:
            clauses.append("delivery_id = ?")
            params.append(delivery_id)
        return [_attempt(r) for r in self._read(self._q(
            f"SELECT {_ATTEMPT_COLS} FROM event_attempts WHERE {' AND '.join(clauses)} "
            "ORDER BY at DESC, attempt DESC LIMIT ?"), (*params, limit))]
