"""Which event store serves a vault (one per storage backend), opened once per vault."""

from __future__ import annotations

import threading

from memosys.errors import StorageError
from memosys.infra.vault.base import Vault
from memosys.infra.vault.events_sql import SQLEventStore

_LOCK = threading.Lock()


def event_store(vault: Vault) -> SQLEventStore:
    found = vault.__dict__.get("_event_store")
    if found is not None:
        return found  # type: ignore[no-any-return]
    with _LOCK:
        found = vault.__dict__.get("_event_store")
        if found is None:
            found = _open(vault)
            vault.__dict__["_event_store"] = found
    return found  # type: ignore[no-any-return]


def _open(vault: Vault) -> SQLEventStore:
    from memosys.infra.vault.sqlite import SQLiteVault

    if isinstance(vault, SQLiteVault):
        from memosys.infra.vault.sqlite_events import SQLiteEventStore

        return SQLiteEventStore(vault)
    try:
        from memosys.infra.vault.postgres import PostgresVault
    except ImportError:  # psycopg missing: cannot be a PostgreSQL vault
        PostgresVault = None  # type: ignore[assignment,misc]  # noqa: N806
    if PostgresVault is not None and isinstance(vault, PostgresVault):
        from memosys.infra.vault.postgres_events import PostgresEventStore

        return PostgresEventStore(vault)
    raise StorageError(f"{type(vault).__name__} has no event store")
