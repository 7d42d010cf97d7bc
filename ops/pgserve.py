"""Embedded PostgreSQL (PyPI `pgserver`: the server's binaries inside the venv).

`EmbeddedPostgres(dir).start()` initialises a cluster in `dir` on first use and starts it,
listening on a Unix socket in `dir` only (no TCP port to collide with). `server_url` is
what SHOP_DATABASE_URL takes: each service then uses its own database `shop_<service>`.
Synchronous, like ops.natsd, so it works in any pytest fixture scope and in `make run`.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import warnings
from pathlib import Path
from typing import Any

__all__ = ["EmbeddedPostgres"]


class EmbeddedPostgres:
    def __init__(self, data_dir: str | os.PathLike[str]) -> None:
        self.data_dir = Path(data_dir).absolute()
        self._server: Any = None

    @property
    def server_url(self) -> str:
        """A server URL without a database (SHOP_DATABASE_URL)."""
        return f"postgresql://postgres@/?host={self.data_dir}"

    def url(self, database: str) -> str:
        return f"postgresql://postgres@/{database}?host={self.data_dir}"

    @property
    def running(self) -> bool:
        return self._server is not None

    @property
    def pid(self) -> int:
        """The postmaster's pid (from its pid file)."""
        return int((self.data_dir / "postmaster.pid").read_text().split()[0])

    def start(self) -> EmbeddedPostgres:
        self.data_dir.parent.mkdir(parents=True, exist_ok=True)
        if os.geteuid() == 0:
            _check_traversable(self.data_dir.parent)
        with warnings.catch_warnings():  # platformdirs: no XDG_RUNTIME_DIR here
            warnings.simplefilter("ignore")
            import pgserver  # only the processes that run a server need it

            self._server = pgserver.get_server(  # type: ignore[attr-defined]
                self.data_dir, cleanup_mode="stop")
        return self

    def no_fsync(self) -> EmbeddedPostgres:
        """For throw-away clusters (tests): no fsync at commit, database creation or
        checkpoint. Never for data that must survive a power cut."""
        self.psql("ALTER SYSTEM SET fsync = off;\nALTER SYSTEM SET synchronous_commit = off;\n"
                  "ALTER SYSTEM SET full_page_writes = off;\nSELECT pg_reload_conf();")
        return self

    def psql(self, sql: str, database: str = "postgres") -> list[str]:
        """Run `sql` with psql on the server running in `data_dir` (started by this object
        or another process); the result rows, fields joined by "|"."""
        from pgserver.postgres_server import POSTGRES_BIN_PATH  # type: ignore[attr-defined]

        out = subprocess.run(
            [str(POSTGRES_BIN_PATH / "psql"), "-X", "-At", "-v", "ON_ERROR_STOP=1",
             self.url(database)], input=sql, capture_output=True, text=True, check=True,
            timeout=60)
        return [line for line in out.stdout.splitlines() if line]

    def databases(self, prefix: str = "shop_") -> list[str]:
        return [n for n in self.psql("SELECT datname FROM pg_database") if n.startswith(prefix)]

    def drop_databases(self, prefix: str = "shop_") -> None:
        """Drop every database named `prefix...` (their clients are disconnected)."""
        for name in self.databases(prefix):
            self.psql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')

    def stop(self) -> None:
        server, self._server = self._server, None
        if server is None:
            return
        with contextlib.suppress(OSError, subprocess.SubprocessError):
            server.cleanup()


def _check_traversable(path: Path) -> None:
    """As root, pgserver runs the server as its own user `pgserver`: that user must be able
    to reach the data dir (every parent searchable by others)."""
    for parent in (path, *path.parents):
        if parent.exists() and not parent.stat().st_mode & 0o001:
            raise PermissionError(
                f"{parent} is not searchable by others: the server (user pgserver) "
                "could not reach its data dir below it")
