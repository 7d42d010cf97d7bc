"""Both storage backends for the tests: SQLite files in a temp dir, or a real PostgreSQL
(pgserver, one per session in a temp dir) with every `shop_*` database dropped after each
test that used it.

`backend` is "sqlite" unless a test module or test parametrizes it (`both_backends`); the
`services` fixture and `storage_for` follow it.
"""

from __future__ import annotations

import shutil
import sqlite3
import tempfile
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path

import pytest
import pytest_asyncio

from ops.pgserve import EmbeddedPostgres
from services.common.schema import MigrationSet, service_migrations
from services.common.settings import Settings
from services.common.storage import Storage, open_storage

__all__ = ["BACKENDS", "backend", "both_backends", "db_env", "module_db_env", "pg_server",
           "query", "storage_for", "table_migrations"]

BACKENDS = ("sqlite", "postgres")
both_backends = pytest.mark.parametrize("backend", BACKENDS, indirect=True)

OpenStorage = Callable[..., Awaitable[Storage]]


@pytest.fixture(scope="session")
def pg_server() -> Iterator[EmbeddedPostgres]:
    # Directly under the system temp dir: as root the server runs as its own user, which
    # cannot enter pytest's private temp dirs.
    root = Path(tempfile.mkdtemp(prefix="shop-pg-"))
    server = EmbeddedPostgres(root).start().no_fsync()
    try:
        yield server
    finally:
        server.stop()
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture
def backend(request: pytest.FixtureRequest) -> str:
    return str(getattr(request, "param", "sqlite"))


@pytest.fixture
def db_env(backend: str, request: pytest.FixtureRequest) -> Iterator[dict[str, str]]:
    """The environment that points service processes at the backend."""
    if backend == "sqlite":
        yield {}
        return
    pg: EmbeddedPostgres = request.getfixturevalue("pg_server")
    try:
        yield {"SHOP_DATABASE_URL": pg.server_url}
    finally:
        pg.drop_databases()


@pytest.fixture(scope="module", params=BACKENDS)
def module_db_env(request: pytest.FixtureRequest) -> Iterator[dict[str, str]]:
    """`db_env` for module-scoped processes: the module's tests run once per backend."""
    if request.param == "sqlite":
        yield {}
        return
    pg: EmbeddedPostgres = request.getfixturevalue("pg_server")
    try:
        yield {"SHOP_DATABASE_URL": pg.server_url}
    finally:
        pg.drop_databases()


Query = Callable[[Path, str, str], list[object]]


@pytest.fixture
def query(backend: str, request: pytest.FixtureRequest) -> Query:
    """`query(data_dir, "product", "SELECT count(*) FROM products")`: the first column of
    each row, read straight from that service's file or database (ints as ints)."""
    def run(data_dir: Path, service: str, sql: str) -> list[object]:
        if backend == "sqlite":
            with sqlite3.connect(f"file:{data_dir / (service + '.db')}?mode=ro",
                                 uri=True) as conn:
                return [r[0] for r in conn.execute(sql)]
        pg: EmbeddedPostgres = request.getfixturevalue("pg_server")
        return [int(v) if v.lstrip("-").isdigit() else v
                for v in (row.split("|")[0] for row in pg.psql(sql, f"shop_{service}"))]

    return run


@pytest_asyncio.fixture
async def storage_for(backend: str, db_env: dict[str, str], tmp_path: Path,
                      request: pytest.FixtureRequest) -> AsyncIterator[OpenStorage]:
    """`await storage_for("payment")`: that service's storage, migrated, closed after.
    Several opens of one service share its file or database (two instances)."""
    opened: list[Storage] = []

    async def open_(service: str, *, durable: bool = False,
                    migrations: MigrationSet | None = None,
                    common: MigrationSet | None = None) -> Storage:
        url = ""
        if backend == "postgres":
            url = request.getfixturevalue("pg_server").url(f"shop_{service}")
        settings = Settings(service=service, data_dir=tmp_path, database_url=url)
        storage = await open_storage(settings, migrations or service_migrations(service),
                                     durable=durable, common=common)
        opened.append(storage)
        return storage

    try:
        yield open_
    finally:
        for storage in reversed(opened):
            await storage.close()


def table_migrations(root: Path, component: str, sql: str) -> MigrationSet:
    """A one-version migration set (the same SQL for both dialects) for a test's table."""
    d = root / f"{component}-migrations"
    d.mkdir(exist_ok=True)
    for dialect in ("sqlite", "postgres"):
        (d / f"0001_{component}.{dialect}.sql").write_text(sql)
    return MigrationSet(component, d)
