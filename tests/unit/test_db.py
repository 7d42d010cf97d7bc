"""Database: WAL + explicit transactions, rollback, serialization, commit listeners."""

from __future__ import annotations

import asyncio
import sqlite3
from pathlib import Path

import pytest
from shop.user.v1 import user_pb2

from services.common.db import Database, Tx

pytestmark = pytest.mark.timeout(30)

SCHEMA = "CREATE TABLE IF NOT EXISTS counter (k TEXT PRIMARY KEY, n INTEGER NOT NULL);"


async def _open(path: Path, durable: bool = True) -> Database:
    return await Database.open(path, schema=SCHEMA, durable=durable)


async def _value(db: Database) -> int:
    async with db.reader() as conn:
        cur = await conn.execute("SELECT n FROM counter WHERE k = 'a'")
        row = await cur.fetchone()
    return int(row[0]) if row else -1


async def test_pragmas_and_tables(tmp_path: Path) -> None:
    db = await _open(tmp_path / "s.db", durable=True)
    try:
        async with db.reader() as conn:
            mode = await (await conn.execute("PRAGMA journal_mode")).fetchone()
            sync = await (await conn.execute("PRAGMA synchronous")).fetchone()
            fk = await (await conn.execute("PRAGMA foreign_keys")).fetchone()
            cur = await conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")
            tables = {r["name"] for r in await cur.fetchall()}
        assert mode is not None and mode[0] == "wal"
        assert sync is not None and sync[0] == 2  # FULL
        assert fk is not None and fk[0] == 1
        assert {"counter", "outbox", "inbox"} <= tables
    finally:
        await db.close()
    relaxed = await _open(tmp_path / "s.db", durable=False)  # reopen: schema is idempotent
    try:
        async with relaxed.reader() as conn:
            sync = await (await conn.execute("PRAGMA synchronous")).fetchone()
        assert sync is not None and sync[0] == 1  # NORMAL
    finally:
        await relaxed.close()


async def test_commit_and_rollback(tmp_path: Path) -> None:
    db = await _open(tmp_path / "s.db")
    try:
        async with db.transaction() as conn:
            await conn.execute("INSERT INTO counter VALUES ('a', 1)")
        with pytest.raises(RuntimeError):
            async with db.transaction() as conn:
                await conn.execute("UPDATE counter SET n = 99 WHERE k = 'a'")
                raise RuntimeError("boom")
        assert await _value(db) == 1
        assert not db.conn.in_transaction
    finally:
        await db.close()


async def test_transactions_are_serialized(tmp_path: Path) -> None:
    """Read-modify-write with a yield in between: no lost update."""
    db = await _open(tmp_path / "s.db")
    try:
        async with db.transaction() as conn:
            await conn.execute("INSERT INTO counter VALUES ('a', 0)")

        async def bump() -> None:
            async with db.transaction() as conn:
                cur = await conn.execute("SELECT n FROM counter WHERE k = 'a'")
                row = await cur.fetchone()
                assert row is not None
                await asyncio.sleep(0)
                await conn.execute("UPDATE counter SET n = ? WHERE k = 'a'", (row[0] + 1,))

        await asyncio.gather(*(bump() for _ in range(50)))
        assert await _value(db) == 50
    finally:
        await db.close()


async def test_two_connections_share_a_file(tmp_path: Path) -> None:
    """Two instances of a service on one file: BEGIN IMMEDIATE + busy_timeout."""
    a, b = await _open(tmp_path / "s.db"), await _open(tmp_path / "s.db")
    try:
        async with a.transaction() as conn:
            await conn.execute("INSERT INTO counter VALUES ('a', 0)")

        async def bump(db: Database) -> None:
            for _ in range(25):
                async with db.transaction() as conn:
                    await conn.execute("UPDATE counter SET n = n + 1 WHERE k = 'a'")

        await asyncio.gather(bump(a), bump(b))
        assert await _value(a) == 50
    finally:
        await a.close()
        await b.close()


async def test_commit_listener_only_after_outbox_commit(tmp_path: Path) -> None:
    db = await _open(tmp_path / "s.db")
    calls: list[int] = []
    db.add_commit_listener(lambda: calls.append(1))
    try:
        async with db.transaction() as conn:
            await conn.execute("INSERT INTO counter VALUES ('a', 0)")
        assert calls == []
        async def emit(tx: Tx, fail: bool = False) -> None:
            await tx.emit("user.created", user_pb2.UserCreated(), source="user",
                          aggregate_id="u1")
            if fail:
                raise RuntimeError("rolled back")

        with pytest.raises(RuntimeError):
            await db.write(lambda tx: emit(tx, fail=True))
        assert calls == []
        await db.write(emit)
        assert calls == [1]
        async with db.reader() as conn:
            row = await (await conn.execute("SELECT count(*) FROM outbox")).fetchone()
        assert row is not None and row[0] == 1
    finally:
        await db.close()


async def test_read_now_sees_commits_and_never_waits_for_the_writer(tmp_path: Path) -> None:
    db = await _open(tmp_path / "s.db")
    try:
        def get(tx: Tx) -> int:
            row = tx.one("SELECT n FROM counter WHERE k = 'a'")
            return int(row["n"]) if row else -1

        assert await db.read_now(get) == -1
        await db.write(lambda tx: tx.execute("INSERT INTO counter VALUES ('a', 1)"))
        assert await db.read_now(get) == 1  # every commit that returned is seen
        async with db.transaction() as conn:  # holds the lock and the write lock
            await conn.execute("UPDATE counter SET n = 2 WHERE k = 'a'")
            # Not queued behind the open write, which it does not see yet (WAL snapshot).
            assert await asyncio.wait_for(db.read_now(get), 1.0) == 1
        assert await db.read_now(get) == 2
    finally:
        await db.close()


async def test_read_now_is_read_only_and_raises_the_functions_errors(tmp_path: Path) -> None:
    db = await _open(tmp_path / "s.db")
    try:
        with pytest.raises(sqlite3.OperationalError):
            await db.read_now(lambda tx: tx.execute("INSERT INTO counter VALUES ('a', 1)"))

        def boom(tx: Tx) -> None:
            tx.one("SELECT 1")
            raise ValueError("boom")

        with pytest.raises(ValueError):
            await db.read_now(boom)
        assert await _value(db) == -1
        assert await db.read_now(lambda tx: tx.one("SELECT 1 AS x")["x"]) == 1  # type: ignore[index]
    finally:
        await db.close()


async def test_read_now_falls_back_to_read_when_busy(tmp_path: Path) -> None:
    db = await _open(tmp_path / "s.db")
    try:
        await db.write(lambda tx: tx.execute("INSERT INTO counter VALUES ('a', 7)"))
        calls: list[str] = []

        def get(tx: Tx) -> int:
            calls.append("call")
            if len(calls) == 1:
                err = sqlite3.OperationalError("database is locked")
                err.sqlite_errorcode = 5  # SQLITE_BUSY
                raise err
            row = tx.one("SELECT n FROM counter WHERE k = 'a'")
            return int(row["n"]) if row else -1

        assert await db.read_now(get) == 7
        assert calls == ["call", "call"]  # run again, by read()
    finally:
        await db.close()
    # Closed: no read connection left, so read() answers, as it does once closed.
    with pytest.raises(ValueError, match="closed"):
        await db.read_now(lambda tx: tx.one("SELECT 1"))
