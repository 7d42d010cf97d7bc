"""One aiosqlite connection per store: WAL, explicit transactions, outbox and inbox tables.

aiosqlite runs every call on its own thread, so each statement is a thread hop; keep
transactions short and statements few (executemany, one query for many ids).

Hot paths use `await db.write(fn)` / `await db.read(fn)` instead: `fn(tx)` is a plain
function run on the connection's thread, so a whole transaction costs ONE hop. Writes that
arrive while another batch holds the connection are group-committed: one BEGIN IMMEDIATE ..
COMMIT (one fsync, still synchronous=FULL) with a SAVEPOINT around each `fn`, so a failing
one is rolled back alone and raises to its own caller only. A caller's future resolves only
after the COMMIT returned, so durability is exactly that of a transaction of its own.

Small indexed reads on a hot path use `await db.read_now(fn)`: `fn(tx)` runs right away on
the event loop's thread against a second, query-only connection (WAL: readers never wait
for the writer, so such a read queues neither behind a group commit's fsync nor behind the
lock, and costs no thread hop at all: a hop costs far more CPU than a point query). When
that connection would have to wait (SQLITE_BUSY), the read goes the `read(fn)` way instead.
"""

from __future__ import annotations

import asyncio
import contextvars
import logging
import sqlite3
import time
import weakref
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import aiosqlite

from services.common.metrics import current as current_metrics

if TYPE_CHECKING:
    from google.protobuf.message import Message

__all__ = ["SHARED_SCHEMA", "CommitListener", "Database", "Tx", "mark_outbox_dirty"]

T = TypeVar("T")

log = logging.getLogger("shop.db")

CommitListener = Callable[[], None]

# Shared by every service. `outbox.data` is the serialized Envelope; the other columns
# are what the relay needs without parsing it. Sent rows are kept a while (for audits
# and tests) and pruned by the relay.
SHARED_SCHEMA = """
CREATE TABLE IF NOT EXISTS outbox (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    event_id TEXT NOT NULL UNIQUE,
    subject TEXT NOT NULL,
    aggregate_id TEXT NOT NULL,
    correlation_id TEXT NOT NULL DEFAULT '',
    traceparent TEXT NOT NULL DEFAULT '',
    data BLOB NOT NULL,
    created_at REAL NOT NULL,
    sent_at REAL
);
CREATE INDEX IF NOT EXISTS outbox_unsent ON outbox (id) WHERE sent_at IS NULL;
CREATE TABLE IF NOT EXISTS inbox (
    consumer TEXT NOT NULL,
    event_id TEXT NOT NULL,
    handled_at REAL NOT NULL,
    PRIMARY KEY (consumer, event_id)
) WITHOUT ROWID;
"""

_OUTBOX_INSERT = """INSERT INTO outbox (event_id, subject, aggregate_id, correlation_id,
    traceparent, data, created_at) VALUES (?, ?, ?, ?, ?, ?, ?)"""
# At most this many operations share one hop (bounds how long the connection is held).
_MAX_BATCH = 256
# SQLite result codes (low byte of the extended code) after which a read_now is retried
# by `read`: the read connection never waits (busy_timeout 0), the event loop must not.
_BUSY_CODES = frozenset({5, 6})  # SQLITE_BUSY, SQLITE_LOCKED


class Tx:
    """The connection as seen by a `write`/`read` function, on the connection's thread.

    Plain sqlite3: no awaits. `enqueue` adds an outbox row in this same transaction (the
    caller's contextvars are visible here, so the envelope gets its request id and trace)."""

    __slots__ = ("conn", "dirty")

    def __init__(self, conn: sqlite3.Connection) -> None:
        self.conn = conn
        self.dirty = False

    def execute(self, sql: str, params: Sequence[Any] = ()) -> sqlite3.Cursor:
        return self.conn.execute(sql, params)

    def executemany(self, sql: str, rows: Any) -> sqlite3.Cursor:
        return self.conn.executemany(sql, rows)

    def one(self, sql: str, params: Sequence[Any] = ()) -> sqlite3.Row | None:
        row: sqlite3.Row | None = self.conn.execute(sql, params).fetchone()
        return row

    def all(self, sql: str, params: Sequence[Any] = ()) -> list[sqlite3.Row]:
        return self.conn.execute(sql, params).fetchall()

    def enqueue(self, subject: str, payload: Message, *, source: str, aggregate_id: str,
                correlation_id: str | None = None, traceparent: str | None = None) -> str:
        """outbox.enqueue for a write function; returns the event id."""
        from services.common.outbox import new_envelope  # outbox imports this module

        env = new_envelope(subject, payload, source=source, aggregate_id=aggregate_id,
                           correlation_id=correlation_id, traceparent=traceparent)
        self.conn.execute(_OUTBOX_INSERT, (
            env.id, env.subject, env.aggregate_id, env.correlation_id, env.traceparent,
            env.SerializeToString(), time.time()))
        self.dirty = True
        return env.id


# (kind, context, fn, future): kind "w" runs in the group transaction, "r" after its commit.
_Op = tuple[str, contextvars.Context, Callable[[Tx], Any], "asyncio.Future[Any]"]
# Per op: (ok, result or exception, dirty).
_Outcome = tuple[bool, Any, bool]

# Connection -> Database, so `outbox.enqueue(conn, ...)` can flag the open transaction.
_by_conn: weakref.WeakValueDictionary[int, Database] = weakref.WeakValueDictionary()


def mark_outbox_dirty(conn: aiosqlite.Connection) -> None:
    """Called by enqueue: listeners are woken after this transaction commits."""
    db = _by_conn.get(id(conn))
    if db is not None:
        db._dirty = True


class Database:
    def __init__(self, conn: aiosqlite.Connection, path: Path,
                 read_conn: sqlite3.Connection | None = None) -> None:
        self.conn = conn
        self.path = path
        # For read_now only, used on the event loop's thread; None: read_now uses read.
        self._read_conn = read_conn
        self._lock = asyncio.Lock()
        self._listeners: list[CommitListener] = []
        self._dirty = False
        self._ops: list[_Op] = []
        self._flusher: asyncio.Task[None] | None = None
        # Commit latency (the fsync): observed on whichever thread ran the COMMIT.
        self._commit_seconds = current_metrics().db_commit
        _by_conn[id(conn)] = self

    @classmethod
    async def open(cls, path: str | Path, *, schema: str, durable: bool) -> Database:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        # isolation_level=None: the sqlite3 module never opens transactions behind our back.
        conn = await aiosqlite.connect(path, isolation_level=None)
        conn.row_factory = aiosqlite.Row
        try:
            await conn.execute("PRAGMA busy_timeout=5000")
            await conn.execute("PRAGMA journal_mode=WAL")
            # FULL: fsync the WAL at every commit (money, stock). NORMAL may lose the
            # last commits on power loss but never corrupts.
            await conn.execute(f"PRAGMA synchronous={'FULL' if durable else 'NORMAL'}")
            await conn.execute("PRAGMA foreign_keys=ON")
            # Several instances may open the same file at once: serialize schema setup.
            # (executescript commits any open transaction first, so BEGIN goes inside it.)
            try:
                await conn.executescript(
                    f"BEGIN IMMEDIATE;\n{SHARED_SCHEMA}\n{schema}\n;COMMIT;")
            except BaseException:
                if conn.in_transaction:
                    await _rollback(conn)
                raise
        except BaseException:
            await conn.close()
            raise
        try:
            read_conn = _open_read_conn(path)
        except sqlite3.Error:  # read_now falls back to read(): slower, same answers
            log.warning("no read connection", extra={"path": str(path)}, exc_info=True)
            read_conn = None
        return cls(conn, path, read_conn)

    def add_commit_listener(self, cb: CommitListener) -> None:
        """`cb()` runs after each commit that enqueued outbox rows."""
        self._listeners.append(cb)

    def remove_commit_listener(self, cb: CommitListener) -> None:
        if cb in self._listeners:
            self._listeners.remove(cb)

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[aiosqlite.Connection]:
        """A write transaction (BEGIN IMMEDIATE: takes the write lock up front, so no
        deadlock-prone lock upgrade; other processes wait up to busy_timeout)."""
        async with self._lock:
            self._dirty = False
            try:
                await self.conn.execute("BEGIN IMMEDIATE")
                yield self.conn
                started = time.perf_counter()
                await self.conn.execute("COMMIT")
                self._commit_seconds.observe(time.perf_counter() - started)
            except BaseException:
                # Also on cancellation: aiosqlite still runs an already queued BEGIN or
                # COMMIT on its thread, so a ROLLBACK queued behind it always ends the
                # transaction (an error from it just means there was none).
                self._dirty = False
                await asyncio.shield(_rollback(self.conn))
                raise
            dirty, self._dirty = self._dirty, False
        if dirty:
            self._notify()

    @asynccontextmanager
    async def reader(self) -> AsyncIterator[aiosqlite.Connection]:
        """Reads outside a transaction (each statement sees the latest commit)."""
        async with self._lock:
            yield self.conn

    async def write(self, fn: Callable[[Tx], T]) -> T:
        """`fn(tx)` in a write transaction, in one thread hop; concurrent writes share one
        BEGIN IMMEDIATE .. COMMIT (group commit), each in its own savepoint. Returns fn's
        result once committed; fn's exception rolls back fn's writes only. `fn` runs on the
        connection's thread: plain sqlite3 calls, no awaits, nothing that blocks."""
        result: T = await self._submit("w", fn)
        return result

    async def read(self, fn: Callable[[Tx], T]) -> T:
        """`fn(tx)` outside a transaction (sees the latest commit), in one thread hop."""
        result: T = await self._submit("r", fn)
        return result

    async def read_now(self, fn: Callable[[Tx], T]) -> T:
        """`fn(tx)` at once on the calling (event loop) thread, on the query-only read
        connection, in one read transaction (one snapshot: it sees every commit that
        returned before the call). No hop, no lock: for small indexed reads only (point
        lookups, a short page), since the loop waits for them. `fn` must only read and be
        safe to run twice: when the read connection is busy it is run again by `read`."""
        conn = self._read_conn
        if conn is not None:
            try:
                conn.execute("BEGIN")
                try:
                    return fn(Tx(conn))
                finally:
                    conn.execute("COMMIT")
            except sqlite3.OperationalError as e:
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
                if (getattr(e, "sqlite_errorcode", 0) & 0xFF) not in _BUSY_CODES:
                    raise
        return await self.read(fn)

    def _submit(self, kind: str, fn: Callable[[Tx], Any]) -> asyncio.Future[Any]:
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[Any] = loop.create_future()
        self._ops.append((kind, contextvars.copy_context(), fn, fut))
        if self._flusher is None:
            self._flusher = loop.create_task(self._flush(), name="db-group-commit")
        return fut

    async def _flush(self) -> None:
        """Runs while operations are queued: takes the connection (the same lock as
        transaction()/reader()), then everything queued by then goes in one hop."""
        try:
            while self._ops:
                async with self._lock:
                    batch = [op for op in self._ops[:_MAX_BATCH] if not op[3].cancelled()]
                    del self._ops[:_MAX_BATCH]
                    if not batch:
                        continue
                    try:
                        outcomes: list[_Outcome] = await self.conn._execute(  # type: ignore[no-untyped-call]
                            self._run_batch, batch)
                    except BaseException as e:
                        for op in batch:
                            if not op[3].done():
                                op[3].set_exception(e)
                        if isinstance(e, asyncio.CancelledError):
                            raise
                        continue
                dirty = False
                for (_, _, _, fut), (ok, value, op_dirty) in zip(batch, outcomes, strict=True):
                    dirty = dirty or (ok and op_dirty)
                    if fut.done():
                        continue
                    if ok:
                        fut.set_result(value)
                    else:
                        fut.set_exception(value)
                if dirty:
                    self._notify()
        finally:
            self._flusher = None
            if self._ops:  # cancelled with work queued: fail it rather than hang
                ops, self._ops = self._ops, []
                for op in ops:
                    if not op[3].done():
                        op[3].set_exception(RuntimeError("database closed"))

    def _run_batch(self, batch: list[_Op]) -> list[_Outcome]:
        """On the connection's thread: the writes in one transaction, then the reads.
        Raises (so every op of the batch fails) only when the transaction as a whole did."""
        conn: sqlite3.Connection = self.conn._conn
        outcomes: dict[int, _Outcome] = {}
        writes = [(i, op) for i, op in enumerate(batch) if op[0] == "w"]
        if writes:
            alone = len(writes) == 1
            conn.execute("BEGIN IMMEDIATE")
            try:
                for i, (_, ctx, fn, _) in writes:
                    tx = Tx(conn)
                    if not alone:
                        conn.execute("SAVEPOINT g")
                    try:
                        value = ctx.run(fn, tx)
                    except Exception as e:
                        if not conn.in_transaction:
                            raise  # SQLite rolled the whole transaction back
                        if alone:
                            conn.execute("ROLLBACK")
                            return [(False, e, False)] + [
                                self._read_one(conn, op) for op in batch[1:]]
                        conn.execute("ROLLBACK TO g")
                        conn.execute("RELEASE g")
                        outcomes[i] = (False, e, False)
                    else:
                        if not alone:
                            conn.execute("RELEASE g")
                        outcomes[i] = (True, value, tx.dirty)
                started = time.perf_counter()
                conn.execute("COMMIT")
                self._commit_seconds.observe(time.perf_counter() - started)
            except BaseException:
                if conn.in_transaction:
                    try:
                        conn.execute("ROLLBACK")
                    except sqlite3.Error:
                        log.debug("rollback failed", exc_info=True)
                raise
        return [outcomes[i] if op[0] == "w" else self._read_one(conn, op)
                for i, op in enumerate(batch)]

    @staticmethod
    def _read_one(conn: sqlite3.Connection, op: _Op) -> _Outcome:
        _, ctx, fn, _ = op
        try:
            return True, ctx.run(fn, Tx(conn)), False
        except Exception as e:
            return False, e, False

    def _notify(self) -> None:
        for cb in list(self._listeners):
            try:
                cb()
            except Exception:
                log.exception("commit listener failed")

    async def close(self) -> None:
        if self._flusher is not None:
            await asyncio.wait([self._flusher], timeout=5.0)
        _by_conn.pop(id(self.conn), None)
        if self._read_conn is not None:
            read_conn, self._read_conn = self._read_conn, None
            read_conn.close()
        await self.conn.close()


def _open_read_conn(path: Path) -> sqlite3.Connection:
    """The read_now connection: autocommit (explicit read transactions only), refuses any
    write (query_only), never waits for a lock (busy_timeout 0: read_now falls back)."""
    conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    try:
        conn.row_factory = sqlite3.Row
        conn.execute("PRAGMA busy_timeout=0")
        conn.execute("PRAGMA query_only=1")
    except BaseException:
        conn.close()
        raise
    return conn


async def _rollback(conn: aiosqlite.Connection) -> None:
    try:
        await conn.execute("ROLLBACK")
    except Exception:  # already rolled back by SQLite (e.g. after SQLITE_FULL)
        log.debug("rollback failed", exc_info=True)
