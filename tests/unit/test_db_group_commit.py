"""Database.write/read: one hop per transaction, group commit with per-write savepoints."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from shop.user.v1 import user_pb2

from services.common.db import Database, Tx

pytestmark = pytest.mark.timeout(30)

SCHEMA = "CREATE TABLE IF NOT EXISTS counter (k TEXT PRIMARY KEY, n INTEGER NOT NULL);"


async def test_concurrent_writes_commit_and_failures_stay_alone(tmp_path: Path) -> None:
    db = await Database.open(tmp_path / "s.db", schema=SCHEMA, durable=True)
    calls: list[int] = []
    db.add_commit_listener(lambda: calls.append(1))
    try:
        await db.write(lambda tx: tx.execute("INSERT INTO counter VALUES ('a', 0)"))

        def bump(tx: Tx) -> int:
            row = tx.one("SELECT n FROM counter WHERE k = 'a'")
            assert row is not None
            tx.execute("UPDATE counter SET n = ? WHERE k = 'a'", (row[0] + 1,))
            return int(row[0]) + 1

        def bump_then_fail(tx: Tx) -> None:
            bump(tx)
            tx.execute("INSERT INTO counter VALUES ('b', 1)")
            raise RuntimeError("rolled back alone")

        def with_event(tx: Tx) -> None:
            tx.enqueue("user.created", user_pb2.UserCreated(), source="user",
                       aggregate_id="u1")

        # Held by an old-style transaction, so everything below queues into one batch.
        async with db.transaction() as conn:
            jobs = [asyncio.ensure_future(db.write(bump)) for _ in range(20)]
            bad = asyncio.ensure_future(db.write(bump_then_fail))
            evt = asyncio.ensure_future(db.write(with_event))
            read = asyncio.ensure_future(db.read(lambda tx: tx.one(
                "SELECT n FROM counter WHERE k = 'a'")))
            await asyncio.sleep(0.01)
            await conn.execute("UPDATE counter SET n = n + 100 WHERE k = 'a'")
        got = await asyncio.gather(*jobs)
        assert sorted(got) == list(range(101, 121))
        with pytest.raises(RuntimeError, match="rolled back alone"):
            await bad
        await evt
        row = await read
        assert row is not None and row[0] == 120  # reads run after the batch's commit
        assert await db.read(lambda tx: tx.one("SELECT n FROM counter WHERE k = 'b'")) is None
        assert calls == [1]
        assert not db.conn.in_transaction
        count = await db.read(lambda tx: tx.one("SELECT count(*) FROM outbox"))
        assert count is not None and count[0] == 1
    finally:
        await db.close()


async def test_single_failing_write_rolls_back(tmp_path: Path) -> None:
    db = await Database.open(tmp_path / "s.db", schema=SCHEMA, durable=True)
    try:
        def fail(tx: Tx) -> None:
            tx.execute("INSERT INTO counter VALUES ('a', 1)")
            tx.execute("INSERT INTO counter VALUES ('a', 2)")  # primary key

        with pytest.raises(Exception, match="UNIQUE"):
            await db.write(fail)
        assert await db.read(lambda tx: tx.one("SELECT n FROM counter")) is None
        assert not db.conn.in_transaction
    finally:
        await db.close()
