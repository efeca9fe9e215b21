"""Durable background jobs on SQLite (a mixin of `SQLiteVault`): enqueue, claim with a lease,
finish, inspect."""

from __future__ import annotations

import json
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from memosys.errors import NotFoundError
from memosys.infra.vault.base import JOB_STATES, Job
from memosys.infra.vault.sqlite_rows import from_ts
from memosys.types import new_id

if TYPE_CHECKING:
    from memosys.infra.vault.sqlite import SQLiteVault


class SQLiteJobsMixin:
    def enqueue_job(
        self: SQLiteVault, kind: str, payload: dict[str, Any], cube_id: str | None = None
    ) -> Job:
        now = datetime.now(UTC).timestamp()
        job_id = new_id()
        with self._write() as conn:
            conn.execute(
                "INSERT INTO jobs (id, kind, cube_id, payload, state, created_at, updated_at) "
                "VALUES (?, ?, ?, ?, 'queued', ?, ?)",
                (job_id, kind, cube_id, json.dumps(payload), now, now),
            )
        return self.get_job(job_id)

    def claim_job(
        self: SQLiteVault, kinds: Sequence[str], lease_seconds: float = 300.0
    ) -> Job | None:
        if not kinds:
            return None
        now = datetime.now(UTC).timestamp()
        marks = ",".join("?" * len(kinds))
        with self._write() as conn:
            row = conn.execute(
                f"SELECT id FROM jobs WHERE kind IN ({marks}) AND (state = 'queued' OR "
                "(state = 'running' AND lease_until < ?)) ORDER BY created_at LIMIT 1",
                (*kinds, now),
            ).fetchone()
            if row is None:
                return None
            conn.execute(
                "UPDATE jobs SET state = 'running', attempts = attempts + 1, lease_until = ?, "
                "updated_at = ? WHERE id = ?",
                (now + lease_seconds, now, row[0]),
            )
        return self.get_job(row[0])

    def finish_job(
        self, job_id: str, *, result: dict[str, Any] | None = None, error: str | None = None
    ) -> Job:
        now = datetime.now(UTC).timestamp()
        with self._write() as conn:
            cur = conn.execute(
                "UPDATE jobs SET state = ?, result = ?, error = ?, lease_until = NULL, "
                "updated_at = ? WHERE id = ?",
                ("failed" if error is not None else "done",
                 json.dumps(result) if result is not None else None, error, now, job_id),
            )
            if cur.rowcount == 0:
                raise NotFoundError(f"no job {job_id!r}")
        return self.get_job(job_id)

    def get_job(self: SQLiteVault, job_id: str) -> Job:
        row = self._conn().execute(
            f"SELECT {_JOB_COLS} FROM jobs WHERE id = ?", (job_id,)
        ).fetchone()
        if row is None:
            raise NotFoundError(f"no job {job_id!r}")
        return _job(row)

    def count_jobs(self: SQLiteVault) -> dict[str, int]:
        rows = self._conn().execute("SELECT state, COUNT(*) FROM jobs GROUP BY state")
        return {state: 0 for state in JOB_STATES} | dict(rows.fetchall())


def _job(row: tuple[Any, ...]) -> Job:
    job_id, kind, cube_id, payload, state, attempts, created, updated, result, error = row
    return Job(job_id, kind, cube_id, json.loads(payload), state, attempts,
               from_ts(created) or datetime.now(UTC), from_ts(updated) or datetime.now(UTC),
               json.loads(result) if result else None, error)


_JOB_COLS = "id, kind, cube_id, payload, state, attempts, created_at, updated_at, result, error"
