"""The SQLite backend of `services.common.storage.Storage`: one file per service (shared
by its instances), WAL, migrations applied at open.

The writer connection has a thread of its own (an executor with one worker; only that
thread touches it). `await db.write(fn)`: `fn(tx)` is a unit of work (`async def`,
awaiting only `tx`); it is driven to its end on that thread, so a whole transaction costs
ONE thread hop.
Units of work that arrive while another batch holds the connection are group-committed:
one BEGIN IMMEDIATE .. COMMIT (one fsync, still synchronous=FULL) with a SAVEPOINT around
each, so a failing one is rolled back alone and raises to its own caller only. A caller's
future resolves only after the COMMIT returned, so durability is exactly that of a
transaction of its own. A batch starts on the loop's next turn, so the writes of callers
woken together by one commit share the next; its answers come back in one loop callback.

`await db.read(fn)`: `fn(tx)` runs right away on the event loop's thread against a second,
query-only connection, in one read transaction (WAL: readers never wait for the writer, so
a read queues neither behind a group commit's fsync nor behind the lock, and costs no
thread hop at all: a hop costs far more CPU than a point query). When that connection
would have to wait (SQLITE_BUSY), the read runs on the writer's thread instead.
"""

from __future__ import annotations

import asyncio
import contextvars
import inspect
import logging
import sqlite3
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager, contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from services.common.dbtracing import write_span
from services.common.metrics import current as current_metrics
from services.common.schema import COMMON, RECORD_TABLE, MigrationSet, split_statements
from services.common.storage import Dialect, IntegrityError, Row

if TYPE_CHECKING:
    from google.protobuf.message import Message

__all__ = ["CommitListener", "Database", "Tx", "migrate"]

T = TypeVar("T")

log = logging.getLogger("shop.db")

CommitListener = Callable[[], None]

_OUTBOX_INSERT = """INSERT INTO outbox (event_id, subject, aggregate_id, correlation_id,
    traceparent, data, created_at) VALUES (?, ?, ?, ?, ?, ?, ?)"""
# At most this many operations share one hop (bounds how long the connection is held).
_MAX_BATCH = 256
# SQLite result codes (low byte of the extended code) after which a read runs on the
# writer's thread: the read connection never waits (busy_timeout 0), the event loop must not.
_BUSY_CODES = frozenset({5, 6})  # SQLITE_BUSY, SQLITE_LOCKED


class Tx:
    """The transaction as a unit of work sees it (`storage.Tx`), on the connection's thread.

    Its methods are plain sqlite3 calls behind `async def` that never suspend, so a unit
    of work is driven to its end on the connection's thread (see `_call`). `emit` adds an
    outbox row in this same transaction (the caller's contextvars are visible here, so the
    envelope gets its request id and trace)."""

    __slots__ = ("conn", "depth", "dirty")

    def __init__(self, conn: sqlite3.Connection) -> None:
        self.conn = conn
        self.dirty = False
        self.depth = 0

    @property
    def dialect(self) -> Dialect:
        return "sqlite"

    @property
    def alive(self) -> bool:
        return self.conn.in_transaction

    @property
    def for_update(self) -> str:
        return ""  # BEGIN IMMEDIATE: the one writer already holds the file's write lock

    async def fetch(self, sql: str, params: Sequence[Any] = ()) -> list[Row]:
        with _integrity():
            return self.conn.execute(sql, params).fetchall()

    # fetchall, not fetchone: a statement left half-stepped (INSERT .. RETURNING) would
    # keep the transaction from committing.
    async def fetchrow(self, sql: str, params: Sequence[Any] = ()) -> Row | None:
        with _integrity():
            rows = self.conn.execute(sql, params).fetchall()
        return rows[0] if rows else None

    async def fetchval(self, sql: str, params: Sequence[Any] = ()) -> Any:
        with _integrity():
            rows = self.conn.execute(sql, params).fetchall()
        return rows[0][0] if rows else None

    async def run(self, sql: str, params: Sequence[Any] = ()) -> int:
        with _integrity():
            return int(self.conn.execute(sql, params).rowcount)

    async def run_many(self, sql: str, rows: Iterable[Sequence[Any]]) -> None:
        with _integrity():
            self.conn.executemany(sql, rows)

    async def emit(self, subject: str, payload: Message, *, source: str, aggregate_id: str,
                   correlation_id: str | None = None, traceparent: str | None = None) -> str:
        from services.common.outbox import new_envelope  # outbox imports this module

        env = new_envelope(subject, payload, source=source, aggregate_id=aggregate_id,
                           correlation_id=correlation_id, traceparent=traceparent)
        self.conn.execute(_OUTBOX_INSERT, (
            env.id, env.subject, env.aggregate_id, env.correlation_id, env.traceparent,
            env.SerializeToString(), time.time()))
        self.dirty = True
        return env.id

    @asynccontextmanager
    async def savepoint(self) -> AsyncIterator[None]:
        self.depth += 1
        name = f"s{self.depth}"
        self.conn.execute(f"SAVEPOINT {name}")
        try:
            yield
        except BaseException:
            if self.conn.in_transaction:  # else SQLite already rolled everything back
                self.conn.execute(f"ROLLBACK TO {name}")
                self.conn.execute(f"RELEASE {name}")
            raise
        else:
            self.conn.execute(f"RELEASE {name}")
        finally:
            self.depth -= 1


@contextmanager
def _integrity() -> Iterator[None]:
    try:
        yield
    except sqlite3.IntegrityError as e:
        raise IntegrityError(str(e)) from e


def _call(fn: Callable[[Tx], Any], tx: Tx) -> Any:
    """`fn(tx)`, a unit of work, driven to its end right here: its awaits are Tx calls that
    never suspend. One that does suspend awaited something else."""
    result = fn(tx)
    if not inspect.iscoroutine(result):
        raise TypeError("a unit of work is an async function of its transaction")
    try:
        result.send(None)
    except StopIteration as done:
        return done.value
    result.close()
    raise RuntimeError("a unit of work awaited something other than its transaction")


# (kind, context, fn, future): kind "w" runs in the group transaction, "r" after its commit.
_Op = tuple[str, contextvars.Context, Callable[[Tx], Any], "asyncio.Future[Any]"]
# Per op: (ok, result or exception, dirty).
_Outcome = tuple[bool, Any, bool]

class Database:
    def __init__(self, conn: sqlite3.Connection, thread: ThreadPoolExecutor, path: Path,
                 read_conn: sqlite3.Connection | None = None) -> None:
        # The writer: used only on `thread`, its one worker (a hop is one executor call).
        self.conn = conn
        self._thread: ThreadPoolExecutor | None = thread
        self.path = path
        # For reads, used on the event loop's thread; None: reads go to the writer's thread.
        self._read_conn = read_conn
        self._listeners: list[CommitListener] = []
        self._ops: list[_Op] = []
        # A batch is on the writer's thread or about to be (the next one starts when its
        # answers are in).
        self._busy = False
        self._drained: asyncio.Future[None] | None = None  # close() waits on it
        # Commit latency (the fsync): observed on whichever thread ran the COMMIT.
        self._commit_seconds = current_metrics().db_commit

    @classmethod
    async def open(cls, path: str | Path, *, durable: bool,
                   migrations: Sequence[MigrationSet] = ()) -> Database:
        """The file at `path`, migrated (the shared outbox/inbox set first)."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        sets = list(migrations)
        if not any(m.component == COMMON.component for m in sets):
            sets.insert(0, COMMON)
        await asyncio.to_thread(migrate, path, sets)
        thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"sqlite-{path.stem}")
        try:
            conn = await asyncio.get_running_loop().run_in_executor(
                thread, _open_write_conn, path, durable)
        except BaseException:
            thread.shutdown(wait=False)
            raise
        try:
            read_conn = _open_read_conn(path)
        except sqlite3.Error:  # reads fall back to the writer's thread: slower, same answers
            log.warning("no read connection", extra={"path": str(path)}, exc_info=True)
            read_conn = None
        return cls(conn, thread, path, read_conn)

    @property
    def dialect(self) -> Dialect:
        return "sqlite"

    @property
    def describe(self) -> str:
        return f"sqlite:{self.path}"

    def add_commit_listener(self, cb: CommitListener) -> None:
        """`cb()` runs after each commit that enqueued outbox rows."""
        self._listeners.append(cb)

    def remove_commit_listener(self, cb: CommitListener) -> None:
        if cb in self._listeners:
            self._listeners.remove(cb)

    async def write(self, fn: Callable[[Tx], Awaitable[T]], *, locked: bool = False) -> T:
        """`fn(tx)` in a write transaction, in one thread hop; concurrent writes share one
        BEGIN IMMEDIATE .. COMMIT (group commit), each in its own savepoint. Returns fn's
        result once committed; fn's exception rolls back fn's writes only. `fn` runs on the
        connection's thread and awaits nothing but `tx`. (`locked` changes nothing here:
        writers are serialized by the file's lock.)"""
        with write_span("sqlite", self.path.stem):
            result: T = await self._submit("w", fn)
        return result

    async def read(self, fn: Callable[[Tx], Awaitable[T]]) -> T:
        """`fn(tx)` at once on the calling (event loop) thread, on the query-only read
        connection, in one read transaction (one snapshot: it sees every commit that
        returned before the call). No hop, no lock (WAL: readers never wait for the
        writer), which is why reads should stay indexed and bounded: the loop waits for
        them. When the read connection is busy, `fn` runs again on the writer's thread."""
        conn = self._read_conn
        if conn is not None:
            try:
                conn.execute("BEGIN")
                try:
                    value: T = _call(fn, Tx(conn))
                    return value
                finally:
                    conn.execute("COMMIT")
            except sqlite3.OperationalError as e:
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
                if (getattr(e, "sqlite_errorcode", 0) & 0xFF) not in _BUSY_CODES:
                    raise
        result: T = await self._submit("r", fn)
        return result

    def _submit(self, kind: str, fn: Callable[[Tx], Any]) -> asyncio.Future[Any]:
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[Any] = loop.create_future()
        self._ops.append((kind, contextvars.copy_context(), fn, fut))
        if not self._busy:
            # Started on the next turn of the loop, not now: the writes submitted in
            # this turn (callers woken together by the last batch) share the batch.
            self._busy = True
            loop.call_soon(self._next_batch, loop)
        return fut

    def _next_batch(self, loop: asyncio.AbstractEventLoop) -> None:
        """On the loop's thread, while no batch is on the writer's thread: everything
        queued by now (up to _MAX_BATCH) goes there in one hop. Its answers come back in
        one callback (`_finish`) that resolves every caller's future: no task, no
        executor future between the thread and the callers."""
        while self._ops:
            batch = [op for op in self._ops[:_MAX_BATCH] if not op[3].cancelled()]
            del self._ops[:_MAX_BATCH]
            if not batch:
                continue
            try:
                if self._thread is None:
                    raise RuntimeError("database closed")
                self._thread.submit(self._run_and_answer, loop, batch)
            except RuntimeError as e:  # closed, or its executor shut down
                _fail(batch, e)
                continue
            return  # still busy: `_finish` comes back here
        self._busy = False
        if self._drained is not None and not self._drained.done():
            self._drained.set_result(None)

    def _run_and_answer(self, loop: asyncio.AbstractEventLoop, batch: list[_Op]) -> None:
        """On the writer's thread: the batch, then its answers handed to the loop."""
        try:
            answer: list[_Outcome] | BaseException = self._run_batch(batch)
        except BaseException as e:  # every op of the batch gets it
            answer = e
        try:
            loop.call_soon_threadsafe(self._finish, loop, batch, answer)
        except RuntimeError:  # the loop is closed: nobody is left waiting
            log.debug("write answered after its loop closed")

    def _finish(self, loop: asyncio.AbstractEventLoop, batch: list[_Op],
                answer: list[_Outcome] | BaseException) -> None:
        if isinstance(answer, BaseException):
            _fail(batch, answer)
        else:
            dirty = False
            for (_, _, _, fut), (ok, value, op_dirty) in zip(batch, answer, strict=True):
                dirty = dirty or (ok and op_dirty)
                if fut.done():
                    continue
                if ok:
                    fut.set_result(value)
                else:
                    fut.set_exception(value)
            if dirty:
                self._notify()
        self._next_batch(loop)

    def _run_batch(self, batch: list[_Op]) -> list[_Outcome]:
        """On the connection's thread: the writes in one transaction, then the reads.
        Raises (so every op of the batch fails) only when the transaction as a whole did."""
        conn = self.conn
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
                        value = ctx.run(_call, fn, tx)
                    except Exception as e:
                        if not conn.in_transaction:
                            raise  # SQLite rolled the whole transaction back
                        outcomes[i] = (False, e, False)
                        if alone:  # nothing else to keep: no savepoint was needed
                            conn.execute("ROLLBACK")
                            break
                        conn.execute("ROLLBACK TO g")
                        conn.execute("RELEASE g")
                    else:
                        if not alone:
                            conn.execute("RELEASE g")
                        outcomes[i] = (True, value, tx.dirty)
                if conn.in_transaction:
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
            return True, ctx.run(_call, fn, Tx(conn)), False
        except Exception as e:
            return False, e, False

    def _notify(self) -> None:
        for cb in list(self._listeners):
            try:
                cb()
            except Exception:
                log.exception("commit listener failed")

    async def close(self) -> None:
        """Idempotent: a second close does nothing."""
        if self._thread is None:
            return
        if self._busy:
            self._drained = asyncio.get_running_loop().create_future()
            await asyncio.wait([self._drained], timeout=5.0)
        if self._read_conn is not None:
            read_conn, self._read_conn = self._read_conn, None
            read_conn.close()
        thread, self._thread = self._thread, None
        try:
            await asyncio.get_running_loop().run_in_executor(thread, self.conn.close)
        finally:
            thread.shutdown(wait=False)


def _fail(batch: list[_Op], error: BaseException) -> None:
    for op in batch:
        if not op[3].done():
            op[3].set_exception(error)


def migrate(path: Path, sets: Sequence[MigrationSet]) -> list[tuple[str, int]]:
    """Apply the missing migrations of `sets` in order, in one BEGIN IMMEDIATE (the file's
    write lock: another instance starting at the same time waits, then finds them
    recorded). Returns what was applied."""
    conn = sqlite3.connect(path, isolation_level=None, timeout=30.0)
    try:
        _enter_wal(conn)
        conn.execute("BEGIN IMMEDIATE")
        try:
            conn.execute(RECORD_TABLE["sqlite"])
            done = {(str(c), int(v)) for c, v in
                    conn.execute("SELECT component, version FROM schema_migrations")}
            applied: list[tuple[str, int]] = []
            for mset in sets:
                for m in mset.for_dialect("sqlite"):
                    if (mset.component, m.version) in done:
                        continue
                    for stmt in split_statements(m.sql):
                        conn.execute(stmt)
                    conn.execute("INSERT INTO schema_migrations (component, version, name,"
                                 " applied_at) VALUES (?, ?, ?, ?)",
                                 (mset.component, m.version, m.name, time.time()))
                    applied.append((mset.component, m.version))
            conn.execute("COMMIT")
        except BaseException:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise
    finally:
        conn.close()
    for component, version in applied:
        log.info("migrated", extra={"database": path.name, "component": component,
                                     "version": version})
    return applied


def _enter_wal(conn: sqlite3.Connection, within_s: float = 30.0) -> None:
    """WAL mode, waiting for instances opening the same new file at the same moment: the
    switch needs the file to itself, and SQLite answers "locked" at once (no busy wait)
    while another connection is switching it or migrating."""
    deadline = time.monotonic() + within_s
    while True:
        try:
            conn.execute("PRAGMA journal_mode=WAL")
            return
        except sqlite3.OperationalError as e:
            if (getattr(e, "sqlite_errorcode", 0) & 0xFF) not in _BUSY_CODES \
                    or time.monotonic() >= deadline:
                raise
            time.sleep(0.02)


def _open_write_conn(path: Path, durable: bool) -> sqlite3.Connection:
    """The writer, opened on its own thread. isolation_level=None: the sqlite3 module never
    opens transactions behind our back (every BEGIN is ours)."""
    conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    try:
        conn.row_factory = sqlite3.Row
        conn.execute("PRAGMA busy_timeout=5000")
        _enter_wal(conn)
        # FULL: fsync the WAL at every commit (money, stock). NORMAL may lose the last
        # commits on power loss but never corrupts.
        conn.execute(f"PRAGMA synchronous={'FULL' if durable else 'NORMAL'}")
        conn.execute("PRAGMA foreign_keys=ON")
    except BaseException:
        conn.close()
        raise
    return conn


def _open_read_conn(path: Path) -> sqlite3.Connection:
    """The read connection: autocommit (explicit read transactions only), refuses any
    write (query_only), never waits for a lock (busy_timeout 0: the read goes to the
    writer's thread instead)."""
    conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    try:
        conn.row_factory = sqlite3.Row
        conn.execute("PRAGMA busy_timeout=0")
        conn.execute("PRAGMA query_only=1")
    except BaseException:
        conn.close()
        raise
    return conn
