"""`memosys db ...`: schema upgrades and copies between storage backends."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.table import Table

from memosys.config import Settings
from memosys.errors import StorageError
from memosys.interface.cli_common import HomeOpt, JsonOpt, err, guarded, out

db_app = typer.Typer(help="Database schema and copies between backends.", no_args_is_help=True)


UrlOpt = Annotated[
    str | None,
    typer.Option("--url", help="Database URL (default: the configured database_url / "
                 "$MEMOSYS_DATABASE_URL, else the home's SQLite file)."),
]


def _url(url: str | None, home: Path | None) -> str:
    if url:
        return url
    settings = Settings.load(home)
    return settings.database_url or f"sqlite:///{settings.sqlite_path}"


def _is_postgres(url: str) -> bool:
    return url.startswith(("postgresql://", "postgres://"))


@db_app.command("upgrade")
def upgrade(url: UrlOpt = None, home: HomeOpt = None, as_json: JsonOpt = False) -> None:
    """Apply pending schema migrations (PostgreSQL; SQLite upgrades itself on open)."""

    def work() -> dict[str, Any]:
        target = _url(url, home)
        if not _is_postgres(target):
            from memosys.infra.vault.sqlite import SCHEMA_VERSION, SQLiteVault

            SQLiteVault(Path(target.removeprefix("sqlite:///")).expanduser()).close()
            return {"backend": "sqlite", "applied": [], "version": SCHEMA_VERSION}
        import psycopg

        from memosys.infra.vault.postgres_schema import current_version, migrate

        try:
            applied = migrate(target)
            with psycopg.connect(target, autocommit=True) as conn:
                version = current_version(conn)
        except psycopg.Error as exc:
            raise StorageError(f"PostgreSQL: {exc}") from None
        return {"backend": "postgres", "version": version,
                "applied": [{"version": m.version, "name": m.name} for m in applied]}

    with guarded():
        result = work()
    if as_json:
        sys.stdout.write(json.dumps(result, indent=2) + "\n")
        return
    for step in result["applied"]:
        out.print(f"applied migration {step['version']}: {step['name']}")
    out.print(f"{result['backend']} schema is at version {result['version']}"
              + ("" if result["applied"] else " (nothing to do)"))


@db_app.command("status")
def status(url: UrlOpt = None, home: HomeOpt = None, as_json: JsonOpt = False) -> None:
    """Show the schema version and the migrations still to apply."""

    def work() -> dict[str, Any]:
        target = _url(url, home)
        if not _is_postgres(target):
            from memosys.infra.vault.sqlite import SCHEMA_VERSION

            return {"backend": "sqlite", "version": SCHEMA_VERSION, "pending": []}
        import psycopg

        from memosys.infra.vault.postgres_schema import MIGRATIONS, current_version

        try:
            with psycopg.connect(target, autocommit=True) as conn:
                version = current_version(conn)
        except psycopg.Error as exc:
            raise StorageError(f"PostgreSQL: {exc}") from None
        pending = [{"version": m.version, "name": m.name} for m in MIGRATIONS
                   if m.version > version]
        return {"backend": "postgres", "version": version, "pending": pending}

    with guarded():
        result = work()
    if as_json:
        sys.stdout.write(json.dumps(result, indent=2) + "\n")
        return
    out.print(f"{result['backend']} schema version {result['version']}")
    for step in result["pending"]:
        out.print(f"  pending {step['version']}: {step['name']}  (run `memosys db upgrade`)")


@db_app.command("copy")
def copy(
    from_url: Annotated[str, typer.Option("--from", help="Source: sqlite:///PATH or "
                                          "postgresql://...")],
    to_url: Annotated[str, typer.Option("--to", help="Target: sqlite:///PATH or "
                                        "postgresql://...")],
    force: Annotated[bool, typer.Option("--force", help="Replace whatever the target "
                                        "holds.")] = False,
    as_json: JsonOpt = False,
) -> None:
    """Copy every cube, item (with its full version history and statistics), embedding,
    snapshot and job to another database, then verify counts and checksums per table."""
    from memosys.infra.vault.copy import copy_database

    def progress(table: str, done: int) -> None:
        err.print(f"  {table}: {done:,} rows", end="\r")

    with guarded():
        checks = copy_database(from_url, to_url, force=force,
                               progress=None if as_json else progress)
    ok = all(c.ok for c in checks)
    if as_json:
        sys.stdout.write(json.dumps({"ok": ok, "tables": [
            {"table": c.table, "source_rows": c.source_rows, "target_rows": c.target_rows,
             "source_checksum": c.source_checksum, "target_checksum": c.target_checksum,
             "ok": c.ok} for c in checks]}, indent=2) + "\n")
    else:
        table = Table(title="memosys db copy: verification")
        for col in ("table", "source rows", "target rows", "source checksum",
                    "target checksum", "match"):
            table.add_column(col, justify="right" if "rows" in col else "left")
        for c in checks:
            table.add_row(c.table, f"{c.source_rows:,}", f"{c.target_rows:,}",
                          c.source_checksum[:16], c.target_checksum[:16],
                          "[green]yes[/green]" if c.ok else "[red]NO[/red]")
        out.print(table)
    if not ok:
        err.print("[red]error[/red] (storage_error): the copy does not match its source")
        raise typer.Exit(StorageError.exit_code)
