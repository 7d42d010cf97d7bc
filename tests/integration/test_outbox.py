"""Outbox: atomic with the state change, published in order, marked sent after the ack;
on both backends. Several relays on one database: one publishes, each row once, in order."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from pathlib import Path
from typing import cast

import pytest
from nats.js.api import PubAck
from shop.events.v1 import envelope_pb2
from shop.order.v1 import order_pb2

from services.common.bus import Bus, OutMsg
from services.common.eventing import make_relay
from services.common.events import ORDER_CONFIRMED, ORDER_CREATED, STREAM
from services.common.outbox import OutboxRelay, pending
from services.common.pg_relay import PgOutboxRelay
from services.common.storage import Storage, Tx
from tests.fixtures_storage import OpenStorage, both_backends, table_migrations

pytestmark = [pytest.mark.timeout(60), both_backends]

Relay = OutboxRelay | PgOutboxRelay


@pytest.fixture
async def db(storage_for: OpenStorage, tmp_path: Path) -> Storage:
    return await storage_for("order", durable=True, migrations=table_migrations(
        tmp_path, "orders", "CREATE TABLE orders (id TEXT PRIMARY KEY, n INTEGER NOT NULL);"))


async def _stream_envelopes(bus: Bus) -> list[envelope_pb2.Envelope]:
    info = await bus.js.stream_info(STREAM)
    out = []
    for seq in range(info.state.first_seq, info.state.last_seq + 1):
        if info.state.messages == 0:
            break
        raw = await bus.js.get_msg(STREAM, seq=seq)
        out.append(envelope_pb2.Envelope.FromString(raw.data or b""))
    return out


async def _wait_drained(db: Storage, timeout_s: float = 15.0) -> None:
    deadline = time.monotonic() + timeout_s
    while await pending(db):
        assert time.monotonic() < deadline, "outbox did not drain"
        await asyncio.sleep(0.02)


async def _emit(db: Storage, subject: str, aggregate_id: str, *,
                correlation_id: str | None = None, fail: bool = False) -> str:
    return (await _emit_counted(db, subject, aggregate_id, correlation_id=correlation_id,
                                fail=fail))[0]


async def _emit_counted(db: Storage, subject: str, aggregate_id: str, *,
                        correlation_id: str | None = None, fail: bool = False
                        ) -> tuple[str, int]:
    """The event id, and its place among the aggregate's commits (the row's counter)."""
    async def run(tx: Tx) -> tuple[str, int]:
        # The aggregate's row and its event in one transaction, as a store does.
        n = int(await tx.fetchval(
            "INSERT INTO orders (id, n) VALUES (?, 1) ON CONFLICT (id)"
            " DO UPDATE SET n = orders.n + 1 RETURNING n", (aggregate_id,)))
        payload = (order_pb2.OrderCreated() if subject == ORDER_CREATED
                   else order_pb2.OrderConfirmed())
        event_id = await tx.emit(subject, payload, source="order", aggregate_id=aggregate_id,
                                 correlation_id=correlation_id)
        if fail:
            raise RuntimeError("business rule refused")
        return event_id, n

    return await db.write(run)


async def _stop(*tasks: asyncio.Task[None]) -> None:
    for t in tasks:
        t.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)


async def test_rolled_back_transaction_publishes_nothing(events_bus: Bus, db: Storage) -> None:
    relay = make_relay(db, events_bus, poll_s=0.05)
    task = asyncio.create_task(relay.run())
    try:
        with pytest.raises(RuntimeError):
            await _emit(db, ORDER_CREATED, "o-rolled-back", fail=True)
        kept = await _emit(db, ORDER_CREATED, "o-kept")
        await _wait_drained(db)
        await asyncio.sleep(0.2)  # give a wrong publish time to show up
    finally:
        await _stop(task)
    envs = await _stream_envelopes(events_bus)
    assert [e.id for e in envs] == [kept]
    assert relay.stats.published == 1


async def test_relay_publishes_in_order_and_marks_sent(events_bus: Bus, db: Storage) -> None:
    relay = make_relay(db, events_bus, batch=16, poll_s=30.0)  # only a commit wakes it
    task = asyncio.create_task(relay.run())
    ids: list[str] = []
    try:
        deadline = time.monotonic() + 10
        while not relay.active:
            assert time.monotonic() < deadline, "relay never became active"
            await asyncio.sleep(0.01)
        t0 = time.monotonic()
        ids.append(await _emit(db, ORDER_CREATED, "o0", correlation_id="r1"))
        await _wait_drained(db)
        latency = time.monotonic() - t0
        assert latency < 2.0, f"relay not woken by the commit ({latency:.2f}s)"
        for i in range(100):
            ids.append(await _emit(db, ORDER_CONFIRMED, f"o{i % 3}"))
        await _wait_drained(db)
    finally:
        await _stop(task)
    envs = await _stream_envelopes(events_bus)
    assert [e.id for e in envs] == ids
    assert envs[0].correlation_id == "r1" and envs[0].source == "order"

    async def sent(tx: Tx) -> int:
        return int(await tx.fetchval("SELECT count(*) FROM outbox WHERE sent_at IS NOT NULL"))

    assert await db.read(sent) == 101


class LosingBus(Bus):
    """A real Bus that loses the first publish of one event, as a reconnect does with the
    bytes in the dead socket, while the publishes queued behind it in nats-py's buffer
    still go out once reconnected (and are stored)."""

    def __init__(self, base: Bus, lose: str) -> None:
        super().__init__(base.nc, base.name)
        self.lose = lose
        self.lost = 0

    async def publish_batch(self, msgs: Sequence[OutMsg], *,
                            timeout_s: float = 5.0) -> list[PubAck | BaseException]:
        ids = [m.headers["Nats-Msg-Id"] for m in msgs]
        if self.lost or self.lose not in ids:
            return await super().publish_batch(msgs, timeout_s=timeout_s)
        self.lost += 1
        at = ids.index(self.lose)
        rest = await super().publish_batch([*msgs[:at], *msgs[at + 1:]], timeout_s=timeout_s)
        return [*rest[:at], TimeoutError("publish ack timed out"), *rest[at:]]


async def test_event_lost_in_a_reconnect_is_stored_before_its_successor(
        events_bus: Bus, db: Storage) -> None:
    """Event k of an aggregate is lost on the way, k+1 was already queued: the stream must
    still hold k before k+1 (and each once)."""
    async def fill(tx: Tx) -> tuple[list[str], str]:
        ids = [await tx.emit(ORDER_CONFIRMED if i else ORDER_CREATED,
                             order_pb2.OrderConfirmed(), source="order", aggregate_id="o-gap")
               for i in range(4)]
        other = await tx.emit(ORDER_CREATED, order_pb2.OrderCreated(), source="order",
                              aggregate_id="o-other")
        return ids, other

    ids, other = await db.write(fill)
    bus = LosingBus(events_bus, lose=ids[1])
    relay = make_relay(db, bus, poll_s=0.05)
    task = asyncio.create_task(relay.run())
    try:
        await _wait_drained(db)
    finally:
        await _stop(task)
    assert bus.lost == 1 and relay.stats.failures >= 1
    envs = await _stream_envelopes(events_bus)
    assert [e.id for e in envs if e.aggregate_id == "o-gap"] == ids
    assert sorted(e.id for e in envs) == sorted([*ids, other])  # each stored once


async def test_two_relays_never_double_publish_nor_reorder(
        events_bus: Bus, db: Storage, storage_for: OpenStorage, tmp_path: Path) -> None:
    """Two instances (each its own storage on the shared database, each a relay) while
    writers commit concurrently; the active relay is stopped half-way and the other takes
    over. Every event is in the stream once, and each aggregate's in commit order."""
    other = await storage_for("order", durable=True, migrations=table_migrations(
        tmp_path, "orders", "CREATE TABLE orders (id TEXT PRIMARY KEY, n INTEGER NOT NULL);"))
    publishes: list[str] = []  # every Nats-Msg-Id either relay sent, repeats included
    bus = cast(Bus, _CountingBus(events_bus, publishes))  # what the relays use of a Bus
    relays: list[Relay] = [make_relay(db, bus, batch=8, poll_s=0.5, lease_s=1.0, owner="r1"),
                           make_relay(other, bus, batch=8, poll_s=0.5, lease_s=1.0,
                                      owner="r2")]
    tasks = [asyncio.create_task(r.run()) for r in relays]
    per_aggregate: dict[str, list[tuple[int, str]]] = {}

    async def writer(storage: Storage, w: int) -> None:
        for i in range(60):
            agg = f"agg-{(w + i) % 5}"
            event_id, n = await _emit_counted(storage, ORDER_CREATED, agg)
            per_aggregate.setdefault(agg, []).append((n, event_id))

    try:
        writers = [asyncio.create_task(writer(s, w)) for w, s in enumerate((db, other, db))]
        deadline = time.monotonic() + 20
        while sum(r.stats.published for r in relays) < 60:
            assert time.monotonic() < deadline, "nothing published"
            await asyncio.sleep(0.01)
        active = [i for i, r in enumerate(relays) if r.active]
        assert len(active) == 1, "exactly one relay publishes at a time"
        await _stop(tasks[active[0]])  # hands over (lock session closed / lease released)
        await asyncio.gather(*writers)
        await _wait_drained(db, timeout_s=30)
    finally:
        await _stop(*tasks)
    envs = await _stream_envelopes(events_bus)
    ids = [e.id for e in envs]
    assert len(ids) == len(set(ids)) == 180
    for agg, commits in per_aggregate.items():
        in_commit_order = [event_id for _, event_id in sorted(commits)]
        assert [e.id for e in envs if e.aggregate_id == agg] == in_commit_order, agg
    # Nothing was even sent twice (JetStream's dedup would have hidden it in the stream).
    assert sorted(publishes) == sorted(ids)
    assert all(r.stats.published > 0 for r in relays), "the standby took over"


class _CountingBus:
    """The Bus as the relays use it, recording each message id they publish."""

    def __init__(self, bus: Bus, seen: list[str]) -> None:
        self.bus = bus
        self.seen = seen

    async def publish_batch(self, msgs: list[OutMsg], *, timeout_s: float) -> list[object]:
        self.seen.extend(m.headers["Nats-Msg-Id"] for m in msgs)
        return list(await self.bus.publish_batch(msgs, timeout_s=timeout_s))

