"""Which implementation of a per-database store (governance, change events) serves a vault:
one per storage backend, picked by the vault's class."""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from memosys.errors import StorageError

if TYPE_CHECKING:
    from memosys.infra.governance import GovernanceStore
    from memosys.infra.vault.base import Vault
    from memosys.infra.vault.events_sql import SQLEventStore


def open_governance(vault: Vault) -> GovernanceStore:
    return _for_backend(vault, "governance store",
                        ("memosys.infra.vault.sqlite_governance", "SQLiteGovernance"),
                        ("memosys.infra.vault.postgres_governance", "PostgresGovernance"))


def open_event_store(vault: Vault) -> SQLEventStore:
    return _for_backend(vault, "event store",
                        ("memosys.infra.vault.sqlite_events", "SQLiteEventStore"),
                        ("memosys.infra.vault.postgres_events", "PostgresEventStore"))


def _for_backend(vault: Vault, what: str, sqlite: tuple[str, str],
                 postgres: tuple[str, str]) -> Any:
    from memosys.infra.vault.sqlite import SQLiteVault

    if isinstance(vault, SQLiteVault):
        return _load(*sqlite)(vault)
    try:
        from memosys.infra.vault.postgres import PostgresVault
    except ImportError:  # psycopg missing: cannot be a PostgreSQL vault
        PostgresVault = None  # type: ignore[assignment,misc]  # noqa: N806
    if PostgresVault is not None and isinstance(vault, PostgresVault):
        return _load(*postgres)(vault)
    raise StorageError(f"{type(vault).__name__} has no {what}")


def _load(module: str, name: str) -> Any:
    return getattr(importlib.import_module(module), name)
