"""Which GovernanceStore implementation serves a vault (one per storage backend)."""

from __future__ import annotations

from memosys.errors import StorageError
from memosys.infra.governance import GovernanceStore
from memosys.infra.vault.base import Vault


def open_governance(vault: Vault) -> GovernanceStore:
    from memosys.infra.vault.sqlite import SQLiteVault

    if isinstance(vault, SQLiteVault):
        from memosys.infra.vault.sqlite_governance import SQLiteGovernance

        return SQLiteGovernance(vault)
    try:
        from memosys.infra.vault.postgres import PostgresVault
    except ImportError:  # psycopg missing: cannot be a PostgreSQL vault
        PostgresVault = None  # type: ignore[assignment,misc]  # noqa: N806
    if PostgresVault is not None and isinstance(vault, PostgresVault):
        from memosys.infra.vault.postgres_governance import PostgresGovernance

        return PostgresGovernance(vault)
    raise StorageError(f"{type(vault).__name__} has no governance store")
