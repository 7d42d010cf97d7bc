"""SQLite group commit behind `storage.write`: concurrent units of work share one
transaction, a failing one is rolled back alone, reads never wait for the writer."""

from __future__ import annotations

import asyncio
import sqlite3
import threading
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
from shop.user.v1 import user_pb2

from services.common.db import Database
from services.common.schema import MigrationSet
from services.common.storage import IntegrityError, Row, Tx

pytestmark = pytest.mark.timeout(30)


def _counter_migrations(root: Path) -> MigrationSet:
    d = root / "migrations"
    d.mkdir()
    sql = "CREATE TABLE counter (k TEXT PRIMARY KEY, n INTEGER NOT NULL CHECK (n >= 0));\n"
    (d / "0001_counter.sqlite.sql").write_text(sql)
    (d / "0001_counter.postgres.sql").write_text(sql)
    return MigrationSet("counter", d)


async def _open(tmp_path: Path) -> Database:
    return await Database.open(tmp_path / "s.db", durable=True,
                               migrations=[_counter_migrations(tmp_path)])


async def _n(db: Database, k: str = "a") -> int | None:
    async def run(tx: Tx) -> Row | None:
        return await tx.fetchrow("SELECT n FROM counter WHERE k = ?", (k,))

    row = await db.read(run)
    return None if row is None else int(row[0])


async def test_concurrent_writes_commit_and_failures_stay_alone(tmp_path: Path) -> None:
    db = await _open(tmp_path)
    try:
        async def seed(tx: Tx) -> None:
            await tx.run("INSERT INTO counter VALUES ('a', 0)")

        await db.write(seed)

        async def bump(tx: Tx) -> int:
            n = int(await tx.fetchval("SELECT n FROM counter WHERE k = 'a'"))
            await tx.run("UPDATE counter SET n = ? WHERE k = 'a'", (n + 1,))
            return n + 1

        calls: list[int] = []

        async def bump_then_fail(tx: Tx) -> None:
            calls.append(1)
            await tx.run("INSERT INTO counter VALUES ('b', 1)")
            raise RuntimeError("rolled back alone")

        async def with_event(tx: Tx) -> None:
            await tx.emit("user.created", user_pb2.UserCreated(), source="user",
                          aggregate_id="u1")

        # Queued in one go: the flusher takes them as one batch (one transaction).
        jobs = [asyncio.ensure_future(db.write(bump)) for _ in range(20)]
        bad = asyncio.ensure_future(db.write(bump_then_fail))
        evt = asyncio.ensure_future(db.write(with_event))
        # A read issued now does not wait for them: it sees the state before the batch.
        assert await _n(db) == 0
        got = await asyncio.gather(*jobs)
        assert sorted(got) == list(range(1, 21))
        with pytest.raises(RuntimeError, match="rolled back alone"):
            await bad
        await evt
        assert await _n(db) == 20  # a read after the commit sees all of it
        assert await _n(db, "b") is None
        assert calls == [1]
        assert not db.conn.in_transaction

        async def count(tx: Tx) -> int:
            return int(await tx.fetchval("SELECT count(*) FROM outbox"))

        assert await db.read(count) == 1
    finally:
        await db.close()


async def test_single_failing_write_rolls_back(tmp_path: Path) -> None:
    db = await _open(tmp_path)
    try:
        async def fail(tx: Tx) -> None:
            await tx.run("INSERT INTO counter VALUES ('a', 1)")
            await tx.run("INSERT INTO counter VALUES ('a', 2)")  # primary key

        with pytest.raises(IntegrityError, match="UNIQUE"):
            await db.write(fail)

        async def negative(tx: Tx) -> None:
            await tx.run("INSERT INTO counter VALUES ('c', -1)")  # CHECK

        with pytest.raises(IntegrityError, match="CHECK"):
            await db.write(negative)
        assert await _n(db) is None
        assert not db.conn.in_transaction
    finally:
        await db.close()


async def test_a_unit_of_work_that_waits_on_something_else_is_refused(tmp_path: Path) -> None:
    db = await _open(tmp_path)
    try:
        async def sleeps(tx: Tx) -> None:
            await tx.run("INSERT INTO counter VALUES ('a', 1)")
            await asyncio.sleep(0)  # not the transaction: would stall the writer's thread

        with pytest.raises(RuntimeError, match="awaited something other"):
            await db.write(sleeps)
        assert await _n(db) is None
        with sqlite3.connect(tmp_path / "s.db") as conn:
            assert conn.execute("SELECT count(*) FROM counter").fetchone()[0] == 0
    finally:
        await db.close()


async def test_a_failing_write_queued_after_a_read_answers_its_own_caller(
        tmp_path: Path) -> None:
    """A read on the writer's thread (its own connection was busy) queued before a lone
    failing write, in one batch: the read gets its rows, the write its error."""
    db = await _open(tmp_path)
    try:
        await db.write(lambda tx: tx.run("INSERT INTO counter VALUES ('a', 5)"))
        db._read_conn = None  # every read now goes to the writer's thread, as when busy

        async def fail(tx: Tx) -> None:
            await tx.run("UPDATE counter SET n = 6 WHERE k = 'a'")
            raise RuntimeError("this write only")

        read, write = await asyncio.gather(_n(db), db.write(fail), return_exceptions=True)
        assert read == 5
        assert isinstance(write, RuntimeError) and str(write) == "this write only"
        assert await _n(db) == 5 and not db.conn.in_transaction
    finally:
        await db.close()


def _count_batches(db: Database) -> list[int]:
    """The size of every batch the writer's thread runs, in order."""
    sizes: list[int] = []
    run = db._run_batch

    def counted(batch: list[Any]) -> Any:
        sizes.append(len(batch))
        return run(batch)

    db._run_batch = counted  # type: ignore[method-assign]
    return sizes


async def test_callers_woken_by_one_commit_share_the_next(tmp_path: Path) -> None:
    """Eight callers writing five times each, one write at a time: the eight writes of a
    turn of the loop go in one transaction, so five commits in all, not one per write
    (nor a lone write followed by the seven that queued behind it)."""
    db = await _open(tmp_path)
    try:
        await db.write(lambda tx: tx.run("INSERT INTO counter VALUES ('a', 0)"))
        sizes = _count_batches(db)

        async def bump(tx: Tx) -> None:
            await tx.run("UPDATE counter SET n = n + 1 WHERE k = 'a'")

        async def caller() -> None:
            for _ in range(5):
                await db.write(bump)

        await asyncio.gather(*(caller() for _ in range(8)))
        assert sizes == [8] * 5
        assert await _n(db) == 40
    finally:
        await db.close()


async def test_a_write_queued_behind_a_running_batch_goes_in_the_next(tmp_path: Path) -> None:
    db = await _open(tmp_path)
    try:
        sizes = _count_batches(db)
        started = threading.Event()

        async def slow(tx: Tx) -> None:
            started.set()
            time.sleep(0.2)  # noqa: ASYNC251 - runs on the writer's thread, held as by a long fsync
            await tx.run("INSERT INTO counter VALUES ('a', 1)")

        first = asyncio.ensure_future(db.write(slow))
        await asyncio.to_thread(started.wait, 5.0)
        def insert(k: str) -> Callable[[Tx], Awaitable[int]]:
            return lambda tx: tx.run("INSERT INTO counter VALUES (?, 1)", (k,))

        later = [asyncio.ensure_future(db.write(insert(k))) for k in ("b", "c")]
        cancelled = asyncio.ensure_future(db.write(
            lambda tx: tx.run("INSERT INTO counter VALUES ('d', 1)")))
        await asyncio.sleep(0)
        cancelled.cancel()  # before its batch started: it never runs
        await asyncio.gather(first, *later)
        assert sizes == [1, 2]
        assert [await _n(db, k) for k in "abcd"] == [1, 1, 1, None]
    finally:
        await db.close()


async def test_close_waits_for_the_writes_in_flight(tmp_path: Path) -> None:
    db = await _open(tmp_path)
    started = threading.Event()

    async def slow(tx: Tx) -> None:
        started.set()
        time.sleep(0.2)  # noqa: ASYNC251 - on the writer's thread
        await tx.run("INSERT INTO counter VALUES ('a', 1)")

    pending = asyncio.ensure_future(db.write(slow))
    await asyncio.to_thread(started.wait, 5.0)
    queued = asyncio.ensure_future(db.write(
        lambda tx: tx.run("INSERT INTO counter VALUES ('q', 1)")))
    await asyncio.sleep(0)
    await db.close()  # what was queued behind the running batch is committed too
    assert pending.done() and pending.result() is None
    assert queued.done() and queued.result() == 1
    with pytest.raises(RuntimeError, match="database closed"):
        await db.write(lambda tx: tx.run("INSERT INTO counter VALUES ('b', 1)"))
    with sqlite3.connect(tmp_path / "s.db") as conn:
        assert conn.execute("SELECT k FROM counter ORDER BY k").fetchall() == [("a",), ("q",)]
