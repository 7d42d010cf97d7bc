"""The SQLite backend: WAL, units of work (commit, rollback, serialized), commit listeners,
reads that never wait for the writer."""

from __future__ import annotations

import asyncio
import sqlite3
from pathlib import Path
from typing import Any

import pytest
from shop.user.v1 import user_pb2

from services.common.db import Database, Tx
from tests.fixtures_storage import table_migrations

pytestmark = pytest.mark.timeout(30)

SCHEMA = "CREATE TABLE IF NOT EXISTS counter (k TEXT PRIMARY KEY, n INTEGER NOT NULL);"


async def _open(path: Path, durable: bool = True) -> Database:
    return await Database.open(path, durable=durable,
                               migrations=[table_migrations(path.parent, "counter", SCHEMA)])


async def _one(db: Database, sql: str, *args: Any) -> Any:
    async def run(tx: Tx) -> Any:
        return await tx.fetchval(sql, args)

    return await db.read(run)


async def _run(db: Database, sql: str, *args: Any) -> int:
    async def run(tx: Tx) -> int:
        return await tx.run(sql, args)

    return await db.write(run)


async def _value(db: Database) -> int:
    n = await _one(db, "SELECT n FROM counter WHERE k = 'a'")
    return -1 if n is None else int(n)


async def test_pragmas_and_tables(tmp_path: Path) -> None:
    db = await _open(tmp_path / "s.db", durable=True)
    try:
        assert await _one(db, "PRAGMA journal_mode") == "wal"
        tables = {r[0] for r in await db.read(lambda tx: tx.fetch(
            "SELECT name FROM sqlite_master WHERE type = 'table'"))}
        assert {"counter", "outbox", "inbox", "schema_migrations"} <= tables

        async def pragmas(tx: Tx) -> tuple[int, int]:
            return (int(await tx.fetchval("PRAGMA synchronous")),
                    int(await tx.fetchval("PRAGMA foreign_keys")))

        assert await db.write(pragmas) == (2, 1)  # FULL, on (the writer's own settings)
    finally:
        await db.close()
    relaxed = await _open(tmp_path / "s.db", durable=False)  # reopen: nothing to migrate
    try:
        assert await relaxed.write(lambda tx: tx.fetchval("PRAGMA synchronous")) == 1  # NORMAL
    finally:
        await relaxed.close()


async def test_commit_and_rollback(tmp_path: Path) -> None:
    db = await _open(tmp_path / "s.db")
    try:
        await _run(db, "INSERT INTO counter VALUES ('a', 1)")

        async def fails(tx: Tx) -> None:
            await tx.run("UPDATE counter SET n = 99 WHERE k = 'a'")
            raise RuntimeError("boom")

        with pytest.raises(RuntimeError):
            await db.write(fails)
        assert await _value(db) == 1
        assert not db.conn.in_transaction
    finally:
        await db.close()


async def test_units_of_work_are_serialized(tmp_path: Path) -> None:
    """Read-modify-write units of work, all at once: no lost update."""
    db = await _open(tmp_path / "s.db")
    try:
        await _run(db, "INSERT INTO counter VALUES ('a', 0)")

        async def bump(tx: Tx) -> None:
            n = await tx.fetchval("SELECT n FROM counter WHERE k = 'a'")
            await tx.run("UPDATE counter SET n = ? WHERE k = 'a'", (n + 1,))

        await asyncio.gather(*(db.write(bump) for _ in range(50)))
        assert await _value(db) == 50
    finally:
        await db.close()


async def test_two_databases_share_a_file(tmp_path: Path) -> None:
    """Two instances of a service on one file: BEGIN IMMEDIATE + busy_timeout."""
    a, b = await _open(tmp_path / "s.db"), await _open(tmp_path / "s.db")
    try:
        await _run(a, "INSERT INTO counter VALUES ('a', 0)")

        async def bump(db: Database) -> None:
            for _ in range(25):
                await _run(db, "UPDATE counter SET n = n + 1 WHERE k = 'a'")

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
        await _run(db, "INSERT INTO counter VALUES ('a', 0)")
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
        assert await _one(db, "SELECT count(*) FROM outbox") == 1
    finally:
        await db.close()


async def test_reads_see_commits_and_never_wait_for_the_writer(tmp_path: Path) -> None:
    db = await _open(tmp_path / "s.db")
    other = sqlite3.connect(tmp_path / "s.db", isolation_level=None)
    try:
        assert await _value(db) == -1
        await _run(db, "INSERT INTO counter VALUES ('a', 1)")
        assert await _value(db) == 1  # every commit that returned is seen
        other.execute("BEGIN IMMEDIATE")  # another process holds the write lock
        other.execute("UPDATE counter SET n = 2 WHERE k = 'a'")
        # Not queued behind the open write, which it does not see yet (WAL snapshot).
        assert await asyncio.wait_for(_value(db), 1.0) == 1
        other.execute("COMMIT")
        assert await _value(db) == 2
    finally:
        other.close()
        await db.close()


async def test_reads_are_read_only_and_raise_the_functions_errors(tmp_path: Path) -> None:
    db = await _open(tmp_path / "s.db")
    try:
        with pytest.raises(sqlite3.OperationalError):
            await db.read(lambda tx: tx.run("INSERT INTO counter VALUES ('a', 1)"))

        async def boom(tx: Tx) -> None:
            await tx.fetch("SELECT 1")
            raise ValueError("boom")

        with pytest.raises(ValueError):
            await db.read(boom)
        assert await _value(db) == -1
        assert await _one(db, "SELECT 1 AS x") == 1
    finally:
        await db.close()


async def test_a_busy_read_runs_again_on_the_writers_thread(tmp_path: Path) -> None:
    db = await _open(tmp_path / "s.db")
    try:
        await _run(db, "INSERT INTO counter VALUES ('a', 7)")
        calls: list[str] = []

        async def get(tx: Tx) -> int:
            calls.append("call")
            if len(calls) == 1:
                err = sqlite3.OperationalError("database is locked")
                err.sqlite_errorcode = 5  # SQLITE_BUSY
                raise err
            return int(await tx.fetchval("SELECT n FROM counter WHERE k = 'a'"))

        assert await db.read(get) == 7
        assert calls == ["call", "call"]
    finally:
        await db.close()


async def test_a_plain_function_is_not_a_unit_of_work(tmp_path: Path) -> None:
    db = await _open(tmp_path / "s.db")
    try:
        with pytest.raises(TypeError, match="async"):
            await db.write(lambda tx: None)  # type: ignore[arg-type, return-value]
        assert await _run(db, "INSERT INTO counter VALUES ('a', 1)") == 1  # still serving
    finally:
        await db.close()
