"""The SQLite relay marks what JetStream acknowledged in one write for many batches."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import TypeVar

import pytest
from shop.events.v1 import envelope_pb2
from shop.order.v1 import order_pb2

from services.common.bus import Bus
from services.common.db import Database
from services.common.events import ORDER_CREATED, STREAM
from services.common.outbox import MARK_EVERY_S, OutboxRelay, pending
from services.common.storage import Tx

pytestmark = pytest.mark.timeout(60)

T = TypeVar("T")


@pytest.fixture
async def db(tmp_path: Path) -> AsyncIterator[Database]:
    database = await Database.open(tmp_path / "order.db", durable=True)
    try:
        yield database
    finally:
        await database.close()


async def _emit(db: Database, aggregate_id: str) -> str:
    async def run(tx: Tx) -> str:
        return await tx.emit(ORDER_CREATED, order_pb2.OrderCreated(), source="order",
                             aggregate_id=aggregate_id)

    return await db.write(run)


async def _stream_ids(bus: Bus) -> list[str]:
    info = await bus.js.stream_info(STREAM)
    return [envelope_pb2.Envelope.FromString(
        (await bus.js.get_msg(STREAM, seq=seq)).data or b"").id
        for seq in range(info.state.first_seq, info.state.last_seq + 1)]


async def _published(relay: OutboxRelay, count: int, deadline: float) -> None:
    while relay.stats.published < count:
        assert time.monotonic() < deadline, f"relay published {relay.stats.published} of {count}"
        await asyncio.sleep(0.005)


async def _marks(db: Database) -> int:
    async def run(tx: Tx) -> int:
        return int(await tx.fetchval(
            "SELECT count(DISTINCT sent_at) FROM outbox WHERE sent_at IS NOT NULL"))

    return await db.read(run)


async def test_many_batches_share_one_mark_and_a_quiet_relay_marks_the_rest(
        events_bus: Bus, db: Database) -> None:
    ids = [await _emit(db, f"o{i}") for i in range(100)]
    relay = OutboxRelay(db, events_bus, batch=5, poll_s=30.0)  # a commit or a mark wakes it
    task = asyncio.create_task(relay.run())
    try:
        t0 = time.monotonic()
        await _published(relay, len(ids), t0 + 15)
        busy_s = time.monotonic() - t0
        assert await relay.pending() == 0  # acknowledged, whether marked yet or not
        t1 = time.monotonic()
        while await pending(db):  # the quiet relay's own mark, without a stop
            assert time.monotonic() < t1 + MARK_EVERY_S + 5, "acknowledged rows never marked"
            await asyncio.sleep(0.01)
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
    written = await _marks(db)
    assert relay.stats.batches == 20
    assert written < relay.stats.batches and written <= busy_s / MARK_EVERY_S + 2, (
        written, busy_s)
    assert await _stream_ids(events_bus) == ids


async def test_a_stopping_relay_marks_what_was_acknowledged(
        events_bus: Bus, db: Database) -> None:
    ids = [await _emit(db, f"o{i}") for i in range(10)]
    relay = OutboxRelay(db, events_bus, batch=256, poll_s=30.0, mark_every_s=3600.0)
    task = asyncio.create_task(relay.run())
    try:
        deadline = time.monotonic() + 15
        await _published(relay, len(ids), deadline)
        # The first batch is marked at once (no mark yet); the next waits for an hour.
        ids.append(await _emit(db, "late"))
        await _published(relay, len(ids), deadline)
        assert await pending(db) == 1 and await relay.pending() == 0
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
    assert await pending(db) == 0  # marked on the way out
    assert await _stream_ids(events_bus) == ids


async def test_a_failed_quiet_mark_is_retried_without_restarting_the_relay(
        events_bus: Bus, db: Database, monkeypatch: pytest.MonkeyPatch) -> None:
    """The mark a quiet relay writes on its own fails once (the database was busy): the
    relay backs off and marks again; it neither dies nor publishes anything twice."""
    ids = [await _emit(db, f"o{i}") for i in range(3)]
    relay = OutboxRelay(db, events_bus, batch=256, poll_s=30.0, mark_every_s=0.2)
    write = db.write
    failed: list[str] = []

    async def flaky_write(fn: Callable[[Tx], Awaitable[T]], **kw: bool) -> T:
        if getattr(fn, "__name__", "") == "mark" and not failed:
            failed.append("mark")
            raise OSError("database is locked")
        return await write(fn, **kw)

    task = asyncio.create_task(relay.run())
    try:
        deadline = time.monotonic() + 15
        await _published(relay, 1, deadline)  # the first batch is marked at once
        monkeypatch.setattr(db, "write", flaky_write)
        ids.append(await _emit(db, "late"))  # published, then marked when quiet
        await _published(relay, len(ids), deadline)
        while await pending(db):
            assert not task.done(), task
            assert time.monotonic() < deadline, "the failed mark was never written again"
            await asyncio.sleep(0.01)
        assert failed == ["mark"] and relay.stats.failures == 1
        assert not task.done()
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
    assert await _stream_ids(events_bus) == ids
