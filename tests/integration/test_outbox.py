"""Outbox: atomic with the state change, published in order, marked sent after the ack."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Sequence
from pathlib import Path

import pytest
import pytest_asyncio
from nats.js.api import PubAck
from shop.events.v1 import envelope_pb2
from shop.order.v1 import order_pb2

from services.common.bus import Bus, OutMsg
from services.common.db import Database
from services.common.events import ORDER_CONFIRMED, ORDER_CREATED, STREAM
from services.common.outbox import OutboxRelay, enqueue

pytestmark = pytest.mark.timeout(60)


@pytest_asyncio.fixture
async def db(tmp_path: Path) -> AsyncIterator[Database]:
    d = await Database.open(tmp_path / "order.db", schema="", durable=True)
    try:
        yield d
    finally:
        await d.close()


async def _stream_envelopes(bus: Bus) -> list[envelope_pb2.Envelope]:
    info = await bus.js.stream_info(STREAM)
    out = []
    for seq in range(info.state.first_seq, info.state.last_seq + 1):
        if info.state.messages == 0:
            break
        raw = await bus.js.get_msg(STREAM, seq=seq)
        out.append(envelope_pb2.Envelope.FromString(raw.data or b""))
    return out


async def _wait_drained(relay: OutboxRelay, timeout_s: float = 10.0) -> None:
    deadline = time.monotonic() + timeout_s
    while await relay.pending():
        assert time.monotonic() < deadline, "outbox did not drain"
        await asyncio.sleep(0.02)


async def test_rolled_back_transaction_publishes_nothing(events_bus: Bus, db: Database) -> None:
    relay = OutboxRelay(db, events_bus, poll_s=0.05)
    task = asyncio.create_task(relay.run())
    try:
        with pytest.raises(RuntimeError):
            async with db.transaction() as conn:
                await enqueue(conn, ORDER_CREATED, order_pb2.OrderCreated(), source="order",
                              aggregate_id="o-rolled-back")
                raise RuntimeError("business rule refused")
        async with db.transaction() as conn:
            kept = await enqueue(conn, ORDER_CREATED, order_pb2.OrderCreated(), source="order",
                                 aggregate_id="o-kept")
        await _wait_drained(relay)
        await asyncio.sleep(0.2)  # give a wrong publish time to show up
    finally:
        task.cancel()
    envs = await _stream_envelopes(events_bus)
    assert [e.id for e in envs] == [kept]
    assert relay.stats.published == 1


async def test_relay_publishes_in_order_and_marks_sent(events_bus: Bus, db: Database) -> None:
    relay = OutboxRelay(db, events_bus, batch=16, poll_s=30.0)  # only commit wakes it
    task = asyncio.create_task(relay.run())
    ids: list[str] = []
    try:
        await asyncio.sleep(0.05)
        t0 = time.monotonic()
        async with db.transaction() as conn:
            ids.append(await enqueue(conn, ORDER_CREATED, order_pb2.OrderCreated(),
                                     source="order", aggregate_id="o0", correlation_id="r1"))
        await _wait_drained(relay)
        latency = time.monotonic() - t0
        assert latency < 1.0, f"relay not woken by the commit ({latency:.2f}s)"
        for i in range(100):
            async with db.transaction() as conn:
                ids.append(await enqueue(conn, ORDER_CONFIRMED, order_pb2.OrderConfirmed(),
                                         source="order", aggregate_id=f"o{i % 3}"))
        await _wait_drained(relay)
    finally:
        task.cancel()
    envs = await _stream_envelopes(events_bus)
    assert [e.id for e in envs] == ids
    assert envs[0].correlation_id == "r1" and envs[0].source == "order"
    async with db.reader() as conn:
        cur = await conn.execute("SELECT count(*) FROM outbox WHERE sent_at IS NOT NULL")
        row = await cur.fetchone()
    assert row is not None and row[0] == 101


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
        events_bus: Bus, db: Database) -> None:
    """Event k of an aggregate is lost on the way, k+1 was already queued: the stream must
    still hold k before k+1 (and each once)."""
    ids: list[str] = []
    async with db.transaction() as conn:
        for i in range(4):
            ids.append(await enqueue(conn, ORDER_CONFIRMED if i else ORDER_CREATED,
                                     order_pb2.OrderConfirmed(), source="order",
                                     aggregate_id="o-gap"))
        other = await enqueue(conn, ORDER_CREATED, order_pb2.OrderCreated(), source="order",
                              aggregate_id="o-other")
    bus = LosingBus(events_bus, lose=ids[1])
    relay = OutboxRelay(db, bus, poll_s=0.05)
    task = asyncio.create_task(relay.run())
    try:
        await _wait_drained(relay)
    finally:
        task.cancel()
    assert bus.lost == 1 and relay.stats.failures >= 1
    envs = await _stream_envelopes(events_bus)
    assert [e.id for e in envs if e.aggregate_id == "o-gap"] == ids
    assert sorted(e.id for e in envs) == sorted([*ids, other])  # each stored once
