"""The durable job queue on PostgreSQL: `FOR UPDATE SKIP LOCKED` claims, leases on the
database's clock. A mixin of `PostgresVault`; it needs the vault's `_tx` and `_read`."""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from typing import Any, TypeVar

import psycopg
from psycopg import sql

from memosys.errors import NotFoundError
from memosys.infra.vault.base import JOB_STATES, Job
from memosys.infra.vault.postgres_search import _clean, _utc
from memosys.types import new_id

T = TypeVar("T")


class JobsMixin:
    def _tx(self, work: Callable[[psycopg.Connection[Any]], T]) -> T:
        raise NotImplementedError

    def _read(self, query: str | sql.Composable, params: Sequence[Any] = ()) -> list[Any]:
        raise NotImplementedError

    _JOB_COLS = ("id, kind, cube_id, payload, state, attempts, created_at, updated_at, "
                 "result, error")

    def enqueue_job(self, kind: str, payload: dict[str, Any], cube_id: str | None = None) -> Job:
        now = datetime.now(UTC)
        body = json.dumps(payload)

        def work(conn: psycopg.Connection[Any]) -> tuple[Any, ...]:
            return conn.execute(  # type: ignore[return-value]
                "INSERT INTO jobs (id, kind, cube_id, payload, state, created_at, updated_at) "
                f"VALUES (%s, %s, %s, %s, 'queued', %s, %s) RETURNING {self._JOB_COLS}",
                (new_id(), _clean(kind), _clean(cube_id), body, now, now),
            ).fetchone()

        return _job(self._tx(work))

    def claim_job(self, kinds: Sequence[str], lease_seconds: float = 300.0) -> Job | None:
        if not kinds:
            return None

        def work(conn: psycopg.Connection[Any]) -> tuple[Any, ...] | None:
            # SKIP LOCKED: concurrent workers each take a different job, none waits.
            # Leases run on the database's clock, the one clock all workers share.
            return conn.execute(
                "UPDATE jobs SET state = 'running', attempts = attempts + 1, "
                "lease_until = clock_timestamp() + make_interval(secs => %s), "
                "updated_at = clock_timestamp() "
                "WHERE id = (SELECT id FROM jobs WHERE kind = ANY(%s) AND (state = 'queued' "
                "OR (state = 'running' AND lease_until < clock_timestamp())) "
                "ORDER BY created_at, seq LIMIT 1 FOR UPDATE SKIP LOCKED) "
                f"RETURNING {self._JOB_COLS}",
                (float(lease_seconds), [_clean(k) for k in kinds]),
            ).fetchone()

        row = self._tx(work)
        return _job(row) if row is not None else None

    def finish_job(
        self, job_id: str, *, result: dict[str, Any] | None = None, error: str | None = None
    ) -> Job:
        def work(conn: psycopg.Connection[Any]) -> tuple[Any, ...] | None:
            return conn.execute(
                "UPDATE jobs SET state = %s, result = %s, error = %s, lease_until = NULL, "
                f"updated_at = clock_timestamp() WHERE id = %s RETURNING {self._JOB_COLS}",
                ("failed" if error is not None else "done",
                 json.dumps(result) if result is not None else None, _clean(error),
                 _clean(job_id)),
            ).fetchone()

        row = self._tx(work)
        if row is None:
            raise NotFoundError(f"no job {job_id!r}")
        return _job(row)

    def get_job(self, job_id: str) -> Job:
        rows = self._read(f"SELECT {self._JOB_COLS} FROM jobs WHERE id = %s", (_clean(job_id),))
        if not rows:
            raise NotFoundError(f"no job {job_id!r}")
        return _job(rows[0])

    def count_jobs(self) -> dict[str, int]:
        rows = self._read("SELECT state, COUNT(*) FROM jobs GROUP BY state")
        return {state: 0 for state in JOB_STATES} | {s: int(n) for s, n in rows}


def _job(row: Sequence[Any]) -> Job:
    job_id, kind, cube_id, payload, state, attempts, created, updated, result, error = row
    return Job(job_id, kind, cube_id, json.loads(payload), state, attempts,
               _utc(created) or created, _utc(updated) or updated,
               json.loads(result) if result else None, error)
