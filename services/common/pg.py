"""The PostgreSQL backend of `Storage` (asyncpg): a pool per process, one database per
service.

A write runs `fn(tx)` in one SERIALIZABLE transaction on a pooled connection: the server
then behaves as SQLite's single writer does for shop's read-then-write units of work
(payment's "is there a payment for this order", the cart's "what is in it"), and a
transaction the server refuses (serialization failure, deadlock) is run again from the
start, with a short jittered back-off. That is why a unit of work acts only through `tx`.
The server commits concurrent transactions together (its WAL flush), so there is no group
commit of our own here. A read runs in a REPEATABLE READ READ ONLY transaction: one
snapshot, never waiting behind a writer; a read that is one SELECT runs without a
transaction around it (a single statement is its own snapshot).

asyncpg prepares each statement once per connection (its statement cache), so a hot query
is parsed once. Statements are written with `?`; they are turned into `$1, $2, ...` once
per text.

A session that must stay put (the relay's LISTEN and advisory lock) gets a connection of
its own from `dedicated()`, never one of the pool (asyncpg's release would run `UNLISTEN *`
and `pg_advisory_unlock_all()`). So a pooled connection has nothing to undo, and goes back
to the pool without that reset (one round trip fewer per unit of work).

`write(fn, locked=True)` runs READ COMMITTED instead, for units of work that lock the rows
they decide on (`tx.for_update`): on a hot row they wait for each other's commit rather
than fail the serializable check and run again (inventory's stock moves).
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Sequence
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING, Any, Literal, TypeVar, cast
from urllib.parse import urlsplit, urlunsplit

import asyncpg
from asyncpg.pool import PoolConnectionProxy

from services.common.dbtracing import write_span
from services.common.schema import RECORD_TABLE, MigrationSet
from services.common.storage import CommitListener, Dialect, IntegrityError, Row

if TYPE_CHECKING:
    from google.protobuf.message import Message

__all__ = ["PgDatabase", "PgTx", "redact", "to_dollar"]

T = TypeVar("T")

log = logging.getLogger("shop.pg")

# PostgreSQL connections per process at most (SHOP_DB_POOL_MAX's default).
POOL_MAX = 6

# A pooled connection or one of its own.
Conn = asyncpg.Connection | PoolConnectionProxy

_OUTBOX_INSERT = """INSERT INTO outbox (event_id, subject, aggregate_id, correlation_id,
    traceparent, data, created_at) VALUES ($1, $2, $3, $4, $5, $6, $7)"""
# Errors after which the whole unit of work is simply run again.
_RETRY = (asyncpg.SerializationError, asyncpg.DeadlockDetectedError)
_MAX_TRIES = 64
# Times a `locked` unit of work runs again after losing a race on a unique key.
_MAX_RACES = 3
# One key for the migration lock, per database (advisory locks are per database).
MIGRATION_LOCK = 0x73686F70  # "shop"


def to_dollar(sql: str) -> str:
    """`?` placeholders as `$1, $2, ...` (a `?` inside a '...' literal is left alone)."""
    out: list[str] = []
    n = 0
    quoted = False
    for ch in sql:
        if ch == "'":
            quoted = not quoted
        if ch == "?" and not quoted:
            n += 1
            out.append(f"${n}")
        else:
            out.append(ch)
    return "".join(out)


def redact(url: str) -> str:
    """The URL without its password, for logs and status lines."""
    parts = urlsplit(url)
    netloc = parts.netloc
    if "@" in netloc:
        user, _, host = netloc.rpartition("@")
        netloc = f"{user.split(':', 1)[0]}@{host}"
    return urlunsplit((parts.scheme, netloc, parts.path, parts.query, ""))


def _rowcount(status: str) -> int:
    """The count at the end of a command tag ("UPDATE 3", "INSERT 0 1"), else 0."""
    tail = status.rsplit(" ", 1)[-1]
    return int(tail) if tail.isdigit() else 0


class _Snapshot(BaseException):
    """A read outside a transaction went past one SELECT: run it again in one. (Not an
    Exception: a unit of work's own `except Exception` must not swallow it.)"""


_USED: Any = object()


class PgTx:
    """One transaction on one connection (see `services.common.storage.Tx`)."""

    __slots__ = ("_aborted", "_depth", "_once", "_sql", "conn", "dirty")

    def __init__(self, conn: Conn, sql_cache: dict[str, str], *, once: bool = False) -> None:
        self.conn = conn
        self._sql = sql_cache
        self.dirty = False
        self._depth = 0
        self._aborted = False
        # A read tried outside a transaction: one SELECT is its own snapshot. A second
        # statement (or anything but a SELECT) needs the transaction: `_Snapshot` says so.
        self._once = once

    @property
    def dialect(self) -> Dialect:
        return "postgres"

    @property
    def alive(self) -> bool:
        return not self._aborted

    @property
    def for_update(self) -> str:
        return " FOR UPDATE"

    def _q(self, sql: str) -> str:
        q = self._sql.get(sql)
        if q is None:
            q = self._sql[sql] = to_dollar(sql)
        return q

    async def _call(self, op: Callable[..., Awaitable[T]], sql: str, *args: Any) -> T:
        if self._once:
            if self._once is _USED or not sql.lstrip()[:6].upper() == "SELECT":
                raise _Snapshot
            self._once = _USED
        try:
            return await op(self._q(sql), *args)
        except asyncpg.IntegrityConstraintViolationError as e:
            if not self._depth:
                self._aborted = True
            name = getattr(e, "constraint_name", None) or ""
            raise IntegrityError(f"{name}: {e}" if name else str(e)) from e
        except asyncpg.PostgresError:
            if not self._depth:
                self._aborted = True
            raise

    async def fetch(self, sql: str, params: Sequence[Any] = ()) -> list[Row]:
        return cast(list[Row], await self._call(self.conn.fetch, sql, *params))

    async def fetchrow(self, sql: str, params: Sequence[Any] = ()) -> Row | None:
        return cast(Row | None, await self._call(self.conn.fetchrow, sql, *params))

    async def fetchval(self, sql: str, params: Sequence[Any] = ()) -> Any:
        return await self._call(self.conn.fetchval, sql, *params)

    async def run(self, sql: str, params: Sequence[Any] = ()) -> int:
        return _rowcount(await self._call(self.conn.execute, sql, *params))

    async def run_many(self, sql: str, rows: Iterable[Sequence[Any]]) -> None:
        rows = list(rows)
        if rows:
            await self._call(self.conn.executemany, sql, rows)

    async def emit(self, subject: str, payload: Message, *, source: str, aggregate_id: str,
                   correlation_id: str | None = None, traceparent: str | None = None) -> str:
        from services.common.outbox import new_envelope  # outbox imports the storage API

        env = new_envelope(subject, payload, source=source, aggregate_id=aggregate_id,
                           correlation_id=correlation_id, traceparent=traceparent)
        # The outbox trigger NOTIFYs the relays when this transaction commits.
        await self._call(self.conn.execute, _OUTBOX_INSERT, env.id, env.subject,
                         env.aggregate_id, env.correlation_id, env.traceparent,
                         env.SerializeToString(), time.time())
        self.dirty = True
        return env.id

    @asynccontextmanager
    async def savepoint(self) -> AsyncIterator[None]:
        self._depth += 1
        try:
            async with self.conn.transaction():
                yield
        finally:
            self._depth -= 1


async def _keep_session(conn: asyncpg.Connection) -> None:
    """A pooled connection goes back as it is: asyncpg's default reset (one more round trip
    per unit of work: UNLISTEN *, advisory unlock, RESET ALL) has nothing to undo, since
    nothing here LISTENs, takes a session lock or SETs on a pooled connection (those use
    `dedicated()`), and a transaction left open is rolled back by the pool either way."""


class PgDatabase:
    def __init__(self, pool: asyncpg.Pool, url: str) -> None:
        self.pool = pool
        self.url = url
        self._listeners: list[CommitListener] = []
        self._sql: dict[str, str] = {}
        self.retries = 0  # units of work run again after a serialization failure

    @classmethod
    async def open(cls, url: str, *, migrations: Sequence[MigrationSet] = (),
                   pool_max: int = POOL_MAX) -> PgDatabase:
        """The service's database at `url` (created if missing), migrated, with a pool of
        at most `pool_max` connections (SHOP_DB_POOL_MAX)."""
        await ensure_database(url)
        pool = await asyncpg.create_pool(
            url, min_size=1, max_size=pool_max,
            max_inactive_connection_lifetime=60.0, reset=_keep_session)
        try:
            async with pool.acquire() as conn:
                await migrate(conn, migrations)
        except BaseException:
            await pool.close()
            raise
        return cls(pool, url)

    @property
    def dialect(self) -> Dialect:
        return "postgres"

    @property
    def describe(self) -> str:
        return redact(self.url)

    def add_commit_listener(self, cb: CommitListener) -> None:
        self._listeners.append(cb)

    def remove_commit_listener(self, cb: CommitListener) -> None:
        if cb in self._listeners:
            self._listeners.remove(cb)

    async def write(self, fn: Callable[[PgTx], Awaitable[T]], *, locked: bool = False) -> T:
        with write_span("postgresql", urlsplit(self.url).path.lstrip("/")):
            return await self._write(fn, locked)

    async def _write(self, fn: Callable[[PgTx], Awaitable[T]], locked: bool) -> T:
        isolation: Literal["read_committed", "serializable"] = (
            "read_committed" if locked else "serializable")
        raced = 0
        for attempt in range(1, _MAX_TRIES + 1):
            try:
                async with self.pool.acquire() as conn:
                    tx = PgTx(conn, self._sql)
                    async with conn.transaction(isolation=isolation):
                        value = await fn(tx)
            except IntegrityError as e:
                # READ COMMITTED: another unit of work inserted the same key after our
                # read; run again, and the read finds it (a few times: a real conflict
                # still raises).
                unique = isinstance(e.__cause__, asyncpg.UniqueViolationError)
                raced += 1
                if not (locked and unique) or raced > _MAX_RACES:
                    raise
                self.retries += 1
                continue
            except _RETRY:
                if attempt == _MAX_TRIES:
                    raise
                self.retries += 1
                await asyncio.sleep(random.uniform(0, min(0.05, 0.001 * 2 ** attempt)))
                continue
            if tx.dirty:
                self._notify()
            return value
        raise AssertionError("unreachable")

    async def read(self, fn: Callable[[PgTx], Awaitable[T]]) -> T:
        """Most reads are one SELECT, which is a snapshot on its own: it runs without
        BEGIN and COMMIT (one round trip, not three). A read that needs more runs again
        from the start in a REPEATABLE READ READ ONLY transaction."""
        async with self.pool.acquire() as conn:
            try:
                return await fn(PgTx(conn, self._sql, once=True))
            except _Snapshot:
                pass
            async with conn.transaction(isolation="repeatable_read", readonly=True):
                return await fn(PgTx(conn, self._sql))

    async def dedicated(self) -> asyncpg.Connection:
        """A connection of its own (LISTEN, session advisory locks); the caller closes it."""
        return await asyncpg.connect(self.url)

    def _notify(self) -> None:
        for cb in list(self._listeners):
            try:
                cb()
            except Exception:
                log.exception("commit listener failed")

    async def close(self) -> None:
        await self.pool.close()


async def ensure_database(url: str) -> None:
    """Create the URL's database when it does not exist (several instances may race)."""
    parts = urlsplit(url)
    name = parts.path.lstrip("/")
    if not name:
        raise ValueError(f"{redact(url)}: no database name in the URL")
    try:
        conn = await asyncpg.connect(url)
    except asyncpg.InvalidCatalogNameError:
        pass
    else:
        await conn.close()
        return
    admin = urlunsplit((parts.scheme, parts.netloc, "/postgres", parts.query, ""))
    conn = await asyncpg.connect(admin)
    try:
        quoted = '"' + name.replace('"', '""') + '"'
        await conn.execute(f"CREATE DATABASE {quoted}")
        log.info("created database", extra={"database": name})
    except (asyncpg.DuplicateDatabaseError, asyncpg.UniqueViolationError):
        pass  # another instance created it first
    finally:
        await conn.close()


async def migrate(conn: Conn, sets: Sequence[MigrationSet]
                  ) -> list[tuple[str, int]]:
    """Apply the missing migrations in one transaction under an advisory transaction lock
    (an instance starting at the same time waits, then finds them recorded)."""
    applied: list[tuple[str, int]] = []
    async with conn.transaction():
        await conn.execute("SELECT pg_advisory_xact_lock($1)", MIGRATION_LOCK)
        await conn.execute(RECORD_TABLE["postgres"])
        done = {(str(r[0]), int(r[1])) for r in
                await conn.fetch("SELECT component, version FROM schema_migrations")}
        for mset in sets:
            for m in mset.for_dialect("postgres"):
                if (mset.component, m.version) in done:
                    continue
                await conn.execute(m.sql)
                await conn.execute(
                    "INSERT INTO schema_migrations (component, version, name, applied_at)"
                    " VALUES ($1, $2, $3, $4)", mset.component, m.version, m.name,
                    time.time())
                applied.append((mset.component, m.version))
    for component, version in applied:
        log.info("migrated", extra={"component": component, "version": version})
    return applied
