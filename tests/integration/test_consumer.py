"""EventConsumer: inbox idempotency, queue semantics, back-off and dead-lettering."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
from shop.events.v1 import envelope_pb2
from shop.user.v1 import user_pb2

from services.common.bus import Bus
from services.common.consumer import AfterCommit, EventConsumer, Route
from services.common.dlq import list_dead_letters
from services.common.events import DLQ_STREAM, STREAM, USER_CREATED
from services.common.outbox import new_envelope
from services.common.settings import load_nats_config
from services.common.storage import Storage, Tx
from tests.fixtures_storage import OpenStorage, both_backends, table_migrations

pytestmark = [pytest.mark.timeout(60), both_backends]

WELCOME = ("CREATE TABLE welcome (seq INTEGER NOT NULL, user_id TEXT NOT NULL,"
           " event_id TEXT NOT NULL);")


async def record_welcome(tx: Tx, env: envelope_pb2.Envelope, payload: Any) -> None:
    seq = int(await tx.fetchval("SELECT count(*) FROM welcome"))
    await tx.run("INSERT INTO welcome VALUES (?, ?, ?)", (seq, payload.user.id, env.id))


def user_event(user_id: str) -> envelope_pb2.Envelope:
    return new_envelope(USER_CREATED, user_pb2.UserCreated(user=user_pb2.User(id=user_id)),
                        source="user", aggregate_id=user_id)


async def publish_again(bus: Bus, env: envelope_pb2.Envelope) -> None:
    """A redelivery as JetStream would make it after its duplicate window."""
    await bus.js.publish(env.subject, env.SerializeToString(),
                         headers={"Nats-Msg-Id": uuid.uuid4().hex})


async def wait_for(cond: Callable[[], Awaitable[bool]], timeout_s: float = 10.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not await cond():
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(0.02)


async def rows(db: Storage) -> list[tuple[str, str]]:
    async def run(tx: Tx) -> list[tuple[str, str]]:
        return [(r[0], r[1]) for r in
                await tx.fetch("SELECT user_id, event_id FROM welcome ORDER BY seq")]

    return await db.read(run)


@pytest.fixture
async def two_dbs(storage_for: OpenStorage, tmp_path: Path) -> tuple[Storage, Storage]:
    migrations = table_migrations(tmp_path, "welcome", WELCOME)
    return (await storage_for("a", durable=True, migrations=migrations),
            await storage_for("b", durable=True, migrations=migrations))


async def test_same_event_twice_has_one_effect(events_bus: Bus,
                                               two_dbs: tuple[Storage, Storage]) -> None:
    twice_db, once_db = two_dbs
    events = [user_event(f"u{i}") for i in range(20)]
    for env in events:
        await events_bus.publish(env)
    for env in events[::2]:
        await publish_again(events_bus, env)
    route = [Route(USER_CREATED, user_pb2.UserCreated, record_welcome)]
    twice = EventConsumer(events_bus, twice_db, durable="twice", routes=route, ack_wait_s=2)
    once = EventConsumer(events_bus, once_db, durable="once", routes=route, ack_wait_s=2)
    # "once" stops at the first 20 stream messages: exactly one delivery of each.
    tasks = [asyncio.create_task(twice.run())]
    try:
        await wait_for(lambda: _seen(twice, 30))
        await once.start()
        assert once._sub is not None
        msgs = await once._sub.fetch(20, timeout=5)
        await once.process(msgs)
    finally:
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await once.stop()
    assert twice.stats.handled == 20 and twice.stats.duplicates == 10
    assert await rows(twice_db) == await rows(once_db)
    assert len(await rows(twice_db)) == 20


async def _seen(c: EventConsumer, n: int) -> bool:
    return c.stats.handled + c.stats.duplicates >= n


async def test_instances_share_the_work(events_bus: Bus,
                                        two_dbs: tuple[Storage, Storage]) -> None:
    db, _ = two_dbs
    route = [Route(USER_CREATED, user_pb2.UserCreated, record_welcome)]
    a = EventConsumer(events_bus, db, durable="shared", routes=route, batch=8)
    b = EventConsumer(events_bus, db, durable="shared", routes=route, batch=8)
    tasks = [asyncio.create_task(a.run()), asyncio.create_task(b.run())]
    try:
        for i in range(200):
            await events_bus.publish(user_event(f"s{i}"))
        await wait_for(lambda: _total(a, b, 200))
    finally:
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
    got = await rows(db)
    assert len(got) == 200 and len(set(got)) == 200
    assert a.stats.handled > 0 and b.stats.handled > 0


async def _total(a: EventConsumer, b: EventConsumer, n: int) -> bool:
    return a.stats.handled + b.stats.handled >= n


async def test_poison_message_goes_to_dlq_after_max_deliver(
        events_bus: Bus, two_dbs: tuple[Storage, Storage]) -> None:
    db, _ = two_dbs
    poison = user_event("poison")
    calls: dict[str, int] = {}

    async def handler(tx: Tx, env: envelope_pb2.Envelope, payload: Any) -> None:
        calls[env.id] = calls.get(env.id, 0) + 1
        await record_welcome(tx, env, payload)  # its effect must be rolled back
        if env.id == poison.id:
            raise ValueError("cannot welcome this user")

    behind = [user_event(f"b{i}") for i in range(5)]
    await events_bus.publish(poison)
    for env in behind:
        await events_bus.publish(env)
    consumer = EventConsumer(events_bus, db, durable="poison", max_deliver=3, ack_wait_s=2,
                             routes=[Route(USER_CREATED, user_pb2.UserCreated, handler)],
                             backoff_s=(0.05, 0.1))
    task = asyncio.create_task(consumer.run())
    try:
        await wait_for(lambda: _dlq_count(events_bus, 1))
        await asyncio.sleep(0.5)  # a fourth delivery would show up here
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
    # One failure verdict per delivery: exactly max_deliver deliveries. (A handler may
    # run again within one delivery when its batch is redone with savepoints.)
    assert consumer.stats.failed == 3
    assert calls[poison.id] >= 3
    assert all(calls[e.id] >= 1 for e in behind)
    assert [r[0] for r in await rows(db)] == [f"b{i}" for i in range(5)]
    [dead] = await list_dead_letters(events_bus.js)
    assert dead.event_id == poison.id and dead.subject == USER_CREATED
    assert dead.consumer == "poison" and "cannot welcome this user" in dead.reason
    assert envelope_pb2.Envelope.FromString(dead.data) == poison
    assert consumer.stats.dead_lettered == 1


async def _dlq_count(bus: Bus, n: int) -> bool:
    info = await bus.js.stream_info(DLQ_STREAM)
    return info.state.messages >= n


async def test_skip_check_acks_without_a_write(events_bus: Bus,
                                               two_dbs: tuple[Storage, Storage]) -> None:
    """Events a route's skip check calls no-ops are acked with no handler run and no inbox
    row (a redelivery is the same no-op); the others are handled with their inbox row."""
    db, _ = two_dbs
    handled: list[str] = []

    async def on_user(tx: Tx, env: envelope_pb2.Envelope, payload: Any) -> None:
        await record_welcome(tx, env, payload)
        handled.append(payload.user.id)

    async def is_noop(tx: Tx, env: envelope_pb2.Envelope, payload: Any) -> bool:
        return bool(payload.user.id.startswith("skip"))

    events = [user_event(f"skip{i}" if i % 2 else f"u{i}") for i in range(10)]
    for env in events:
        await events_bus.publish(env)
    await publish_again(events_bus, events[1])  # a redelivered no-op: skipped again
    consumer = EventConsumer(events_bus, db, durable="skipper", ack_wait_s=2, routes=[
        Route(USER_CREATED, user_pb2.UserCreated, on_user, skip=is_noop)])

    async def all_acked() -> bool:
        info = await events_bus.js.consumer_info(STREAM, "skipper")
        return bool(info.num_ack_pending == 0 and info.num_pending == 0)

    task = asyncio.create_task(consumer.run())
    try:
        await wait_for(lambda: _done(consumer, 11))
        # A batch is counted once committed and acked right after: the acks (skipped and
        # handled alike) reach the server while the consumer still runs.
        await wait_for(all_acked)
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
    assert consumer.stats.skipped == 6 and consumer.stats.handled == 5
    assert sorted(handled) == [f"u{i}" for i in range(0, 10, 2)]
    assert [r[0] for r in await rows(db)] == [f"u{i}" for i in range(0, 10, 2)]

    async def inbox(tx: Tx) -> list[str]:
        return [r[0] for r in await tx.fetch("SELECT event_id FROM inbox")]

    assert sorted(await db.read(inbox)) == sorted(e.id for e in events[::2])


async def _done(c: EventConsumer, n: int) -> bool:
    return c.stats.handled + c.stats.duplicates + c.stats.skipped >= n


async def test_after_commit_hook_runs_after_the_commit(
        events_bus: Bus, two_dbs: tuple[Storage, Storage]) -> None:
    """A handler's after-commit callable runs once the batch committed: a read from
    another transaction already sees the batch's rows."""
    db, _ = two_dbs
    reads: list[asyncio.Task[int]] = []

    async def count(tx: Tx) -> int:
        return int(await tx.fetchval("SELECT count(*) FROM welcome"))

    async def on_created(tx: Tx, env: envelope_pb2.Envelope, payload: Any) -> AfterCommit:
        await record_welcome(tx, env, payload)

        def after() -> None:  # a read of its own: sees only what is committed
            reads.append(asyncio.ensure_future(db.read(count)))

        return after

    routes = [Route(USER_CREATED, user_pb2.UserCreated, on_created)]
    consumer = EventConsumer(events_bus, db, durable="hooks", routes=routes)
    await events_bus.publish(user_event("u-hook-1"))
    await events_bus.publish(user_event("u-hook-2"))
    task = asyncio.create_task(consumer.run())
    try:
        await wait_for(lambda: _seen(consumer, 2))
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
    seen = [await r for r in reads]
    assert len(seen) == 2 and all(n >= 1 for n in seen) and seen[-1] == 2


async def test_inbox_forgets_events_past_the_stream_horizon(
        events_bus: Bus, two_dbs: tuple[Storage, Storage],
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Rows older than the stream's max age plus the margin go, a bounded chunk per round;
    younger ones (a redelivery could still come) stay."""
    db, _ = two_dbs
    monkeypatch.setenv("SHOP_STREAM_MAX_AGE_S", "3600")
    monkeypatch.delenv("SHOP_INBOX_RETAIN_S", raising=False)
    # The bus of a process started with them (on the module's connection).
    bus = Bus(events_bus.nc, "prune", config=load_nats_config())
    route = [Route(USER_CREATED, user_pb2.UserCreated, record_welcome)]
    consumer = EventConsumer(bus, db, durable="prune", routes=route, prune_every_s=0.0,
                             fetch_timeout_s=0.2)
    assert consumer.inbox_retain_s == 3600 + 3600
    now = time.time()
    old = [("prune", f"old-{i}", now - 7300 - i) for i in range(1500)]
    young = [("prune", f"young-{i}", now - 7000) for i in range(10)]
    other = [("someone-else", f"old-{i}", now - 9000) for i in range(5)]

    async def fill(tx: Tx) -> None:
        await tx.run_many("INSERT INTO inbox (consumer, event_id, handled_at) VALUES (?, ?, ?)",
                          old + young + other)

    await db.write(fill)
    await consumer._maybe_prune()
    assert consumer.stats.pruned == 1000  # one chunk per round
    task = asyncio.create_task(consumer.run())
    try:
        await wait_for(lambda: _pruned(consumer, 1500))
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)

    async def left(tx: Tx) -> list[tuple[str, str]]:
        return sorted((str(r[0]), str(r[1]))
                      for r in await tx.fetch("SELECT consumer, event_id FROM inbox"))

    assert await db.read(left) == sorted([(c, e) for c, e, _ in young + other])


async def _pruned(c: EventConsumer, n: int) -> bool:
    return c.stats.pruned >= n
