"""Storage backends behind one interface; `open_vault` picks one from the settings."""

from __future__ import annotations

from memosys.config import Settings
from memosys.errors import ValidationError
from memosys.infra.vault.base import Vault


def open_vault(settings: Settings) -> Vault:
    """The embedded SQLite file by default; `database_url` selects another backend."""
    url = settings.database_url
    if url is None or url.startswith("sqlite:///"):
        from memosys.infra.vault.sqlite import SQLiteVault

        return SQLiteVault(settings.sqlite_path, ann_threshold=settings.ann_threshold)
    if url.startswith(("postgresql://", "postgres://")):
        from memosys.infra.vault.postgres import PostgresVault

        return PostgresVault(url, ann_threshold=settings.ann_threshold)
    raise ValidationError(
        f"unsupported database URL {url!r}: expected sqlite:///PATH or postgresql://..."
    )
