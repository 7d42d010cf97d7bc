"""Dead letters: undecodable messages, the max-deliveries advisory, list and replay."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
from shop.events.v1 import envelope_pb2
from shop.user.v1 import user_pb2

from services.common.bus import Bus
from services.common.consumer import EventConsumer, Route
from services.common.db import Database
from services.common.dlq import list_dead_letters, replay
from services.common.events import DLQ_STREAM, STREAM, USER_CREATED
from services.common.outbox import new_envelope
from services.common.storage import Tx
from tests.fixtures_storage import table_migrations

pytestmark = pytest.mark.timeout(60)

WELCOME = "CREATE TABLE welcome (user_id TEXT NOT NULL);"


async def wait_for(cond: Callable[[], Awaitable[bool]], timeout_s: float = 15.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not await cond():
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(0.02)


async def dlq_has(bus: Bus, n: int) -> bool:
    return (await bus.js.stream_info(DLQ_STREAM)).state.messages == n


async def welcomed(db: Database) -> list[str]:
    async def run(tx: Tx) -> list[str]:
        return [r[0] for r in await tx.fetch("SELECT user_id FROM welcome ORDER BY rowid")]

    return await db.read(run)


@pytest.fixture
async def db(tmp_path: Path) -> AsyncIterator[Database]:
    d = await Database.open(tmp_path / "n.db", durable=True,
                            migrations=[table_migrations(tmp_path, "welcome", WELCOME)])
    try:
        yield d
    finally:
        await d.close()


async def test_undecodable_is_dead_lettered_at_once(events_bus: Bus, db: Database) -> None:
    calls = 0

    async def handler(tx: Tx, env: envelope_pb2.Envelope, p: Any) -> None:
        nonlocal calls
        calls += 1

    await events_bus.js.publish(USER_CREATED, b"\xff not a protobuf envelope")
    consumer = EventConsumer(events_bus, db, durable="garbage", max_deliver=5,
                             routes=[Route(USER_CREATED, user_pb2.UserCreated, handler)])
    task = asyncio.create_task(consumer.run())
    try:
        await wait_for(lambda: dlq_has(events_bus, 1))
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
    [dead] = await list_dead_letters(events_bus.js)
    assert dead.reason.startswith("undecodable") and dead.consumer == "garbage"
    assert dead.subject == USER_CREATED and calls == 0
    info = await events_bus.js.consumer_info(STREAM, "garbage")
    assert info.num_ack_pending == 0 and info.num_redelivered == 0  # term(): delivered once


async def test_replay_after_the_fix(events_bus: Bus, db: Database) -> None:
    broken = True

    async def handler(tx: Tx, env: envelope_pb2.Envelope, p: Any) -> None:
        if broken:
            raise RuntimeError("downstream bug")
        await tx.run("INSERT INTO welcome VALUES (?)", (p.user.id,))

    envs = [new_envelope(USER_CREATED, user_pb2.UserCreated(user=user_pb2.User(id=f"r{i}")),
                         source="user", aggregate_id=f"r{i}") for i in range(2)]
    for env in envs:
        await events_bus.publish(env)
    consumer = EventConsumer(events_bus, db, durable="replayer", max_deliver=2, ack_wait_s=2,
                             backoff_s=(0.05,),
                             routes=[Route(USER_CREATED, user_pb2.UserCreated, handler)])
    task = asyncio.create_task(consumer.run())
    try:
        await wait_for(lambda: dlq_has(events_bus, 2))
        dead = await list_dead_letters(events_bus.js)
        assert [d.event_id for d in dead] == [e.id for e in envs]
        broken = False
        assert await replay(events_bus.js, dead[0].seq) == 1
        await wait_for(lambda: _welcomed(db, ["r0"]))
        assert [d.seq for d in await list_dead_letters(events_bus.js)] == [dead[1].seq]
        assert await replay(events_bus.js, "all") == 1
        await wait_for(lambda: _welcomed(db, ["r0", "r1"]))
        # A replay that lands twice is applied once (the inbox).
        await events_bus.js.publish(USER_CREATED, envs[0].SerializeToString(),
                                    headers={"Nats-Msg-Id": "one-more-copy"})
        await wait_for(lambda: _seen(consumer, 3))
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
    assert await welcomed(db) == ["r0", "r1"]
    assert await list_dead_letters(events_bus.js) == []


async def _welcomed(db: Database, expected: list[str]) -> bool:
    return await welcomed(db) == expected


async def _seen(c: EventConsumer, n: int) -> bool:
    return c.stats.handled + c.stats.duplicates >= n


async def test_advisory_dead_letters_a_message_without_verdict(events_bus: Bus,
                                                               db: Database) -> None:
    """Deliveries that never got an ack or nak (a crashed process) end in the DLQ too."""

    async def handler(tx: Tx, env: envelope_pb2.Envelope, p: Any) -> None:
        raise AssertionError("not reached")

    env = new_envelope(USER_CREATED, user_pb2.UserCreated(user=user_pb2.User(id="crash")),
                       source="user", aggregate_id="crash")
    await events_bus.publish(env)
    consumer = EventConsumer(events_bus, db, durable="crashy", max_deliver=2, ack_wait_s=0.3,
                             routes=[Route(USER_CREATED, user_pb2.UserCreated, handler)])
    await consumer.start()  # consumer + advisory listener, but we play the crashing worker
    try:
        assert consumer._sub is not None
        for _ in range(2):
            msgs = await consumer._sub.fetch(1, timeout=3)  # taken, never answered
            assert len(msgs) == 1

        async def pull_and_check() -> bool:
            # JetStream notices the exhausted message when a worker pulls again.
            with contextlib.suppress(TimeoutError):
                assert consumer._sub is not None
                assert await consumer._sub.fetch(1, timeout=0.3) == []
            return await dlq_has(events_bus, 1)

        await wait_for(pull_and_check)
    finally:
        await consumer.stop()
    [dead] = await list_dead_letters(events_bus.js)
    assert dead.event_id == env.id and "max deliveries" in dead.reason
    assert envelope_pb2.Envelope.FromString(dead.data) == env
