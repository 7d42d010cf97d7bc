"""The one way a service reaches its data: a unit of work for writes, one API for reads.

A store (one per service, behind its typed repository Protocol) does everything through

    value = await storage.write(fn)   # `async def fn(tx)`: one transaction, events with it
    value = await storage.read(fn)    # `async def fn(tx)`: one consistent snapshot

where `tx` is a `Tx`: `fetch`/`fetchrow`/`fetchval`/`run`/`run_many` with `?` placeholders,
`emit` (an outbox row in this same transaction) and `savepoint()`. `fn` acts only through
`tx` and awaits nothing else (no RPC, no sleep): a backend may run it more than once (a
PostgreSQL serialization retry) or drive it to its end without an event loop turn (SQLite
on its connection's thread, group-committed with the writes queued beside it).

Two backends implement `Storage`: SQLite (`services.common.db`, the embedded default) and
PostgreSQL (`services.common.pg`). `open_storage(settings, migrations)` picks one from the
settings (see `Settings.database_url`) and applies the service's migrations first.

SQL is written once, in the subset both speak (`ON CONFLICT`, `RETURNING`, `excluded.`);
a store that needs a dialect's own form branches on `storage.dialect`. A constraint
violation raises `IntegrityError` on both.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterable, Iterator, Sequence
from contextlib import AbstractAsyncContextManager
from typing import TYPE_CHECKING, Any, Literal, Protocol, TypeVar

if TYPE_CHECKING:
    from google.protobuf.message import Message

    from services.common.schema import MigrationSet
    from services.common.settings import Settings

__all__ = ["CommitListener", "Dialect", "IntegrityError", "Row", "Storage", "Tx", "Unit",
           "open_storage"]

T = TypeVar("T")
T_co = TypeVar("T_co", covariant=True)

Dialect = Literal["sqlite", "postgres"]
CommitListener = Callable[[], None]


class IntegrityError(Exception):
    """A CHECK, NOT NULL, unique or foreign key constraint refused the statement. The
    message names the constraint or its columns (backend wording)."""


class Row(Protocol):
    """A result row: by position or by column name (sqlite3.Row, asyncpg.Record)."""

    def __getitem__(self, key: int | str, /) -> Any: ...
    def __len__(self) -> int: ...
    def __iter__(self) -> Iterator[Any]: ...


class Tx(Protocol):
    """One transaction as seen by a unit of work."""

    @property
    def dialect(self) -> Dialect: ...

    async def fetch(self, sql: str, params: Sequence[Any] = ()) -> list[Row]: ...
    async def fetchrow(self, sql: str, params: Sequence[Any] = ()) -> Row | None: ...
    async def fetchval(self, sql: str, params: Sequence[Any] = ()) -> Any: ...

    async def run(self, sql: str, params: Sequence[Any] = ()) -> int:
        """Execute; the number of rows changed."""
        ...

    async def run_many(self, sql: str, rows: Iterable[Sequence[Any]]) -> None: ...

    async def emit(self, subject: str, payload: Message, *, source: str, aggregate_id: str,
                   correlation_id: str | None = None, traceparent: str | None = None) -> str:
        """Add an event to the outbox in this transaction; returns the event id."""
        ...

    def savepoint(self) -> AbstractAsyncContextManager[None]:
        """A nested scope: an exception out of it undoes only its statements (and raises)."""
        ...

    @property
    def alive(self) -> bool:
        """False when the backend has rolled the whole transaction back."""
        ...

    @property
    def for_update(self) -> str:
        """The suffix that makes a SELECT lock the rows it returns until the commit
        (" FOR UPDATE" on PostgreSQL; "" on SQLite, whose single writer needs none): for
        the reads of a `locked` unit of work."""
        ...


Unit = Callable[[Tx], Awaitable[T]]


class Storage(Protocol):
    @property
    def dialect(self) -> Dialect: ...

    @property
    def describe(self) -> str:
        """Where the data lives, for status lines (never a password)."""
        ...

    async def write(self, fn: Callable[[Tx], Awaitable[T]], *, locked: bool = False) -> T:
        """`fn` in one write transaction; its result once committed. Its exception rolls
        back its writes (and its events) and is raised here.

        `locked`: `fn` locks every row its decision reads (`tx.for_update`) and changes
        rows relative to what they hold, guarded in its WHERE. A PostgreSQL backend then
        runs it READ COMMITTED, so units of work on one hot row (a product's stock) wait
        for each other's commit instead of failing and running again; one that loses a
        race on a unique key runs again and finds the row. Others are SERIALIZABLE."""
        ...

    async def read(self, fn: Callable[[Tx], Awaitable[T]]) -> T:
        """`fn` on one snapshot that sees every write that returned before the call.
        Never waits behind a writer."""
        ...

    def add_commit_listener(self, cb: CommitListener) -> None:
        """`cb()` runs after each commit of this process that emitted events."""
        ...

    def remove_commit_listener(self, cb: CommitListener) -> None: ...

    async def close(self) -> None: ...


async def open_storage(settings: Settings, migrations: MigrationSet, *, durable: bool,
                       common: MigrationSet | None = None) -> Storage:
    """The service's storage, migrated (the shared outbox/inbox set `common` first, today's
    unless given): PostgreSQL when a database URL is set for it, else its SQLite file under
    the data dir (`durable`: fsync at every commit)."""
    from services.common.schema import COMMON

    common = common or COMMON
    url = settings.database_url
    if url:
        from services.common.pg import PgDatabase

        return await PgDatabase.open(url, migrations=(common, migrations),
                                     pool_max=settings.db_pool_max)
    from services.common.db import Database

    return await Database.open(settings.db_path, migrations=(common, migrations),
                               durable=durable)
