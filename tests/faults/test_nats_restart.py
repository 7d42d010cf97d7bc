"""kill -9 NATS while events are enqueued and relayed: nothing marked sent is lost, and
the outbox drains once NATS is back."""

from __future__ import annotations

import asyncio
import contextlib
import time
from pathlib import Path

import pytest
from shop.events.v1 import envelope_pb2
from shop.payment.v1 import payment_pb2

from ops.natsd import NatsServer
from services.common.bus import Bus
from services.common.db import Database
from services.common.events import PAYMENT_COMPLETED, STREAM
from services.common.outbox import OutboxRelay
from services.common.storage import Tx

pytestmark = pytest.mark.timeout(120)


async def _sent_ids(db: Database) -> set[str]:
    async def run(tx: Tx) -> set[str]:
        return {r[0] for r in
                await tx.fetch("SELECT event_id FROM outbox WHERE sent_at IS NOT NULL")}

    return await db.read(run)


async def _stream_ids(bus: Bus) -> list[str]:
    info = await bus.js.stream_info(STREAM)
    ids = []
    for seq in range(info.state.first_seq, info.state.last_seq + 1):
        raw = await bus.js.get_msg(STREAM, seq=seq)
        ids.append(envelope_pb2.Envelope.FromString(raw.data or b"").id)
    return ids


async def test_nats_kill_9_and_restart(tmp_path: Path, fresh_nats: NatsServer) -> None:
    db = await Database.open(tmp_path / "payment.db", durable=True)
    bus = await Bus.connect(fresh_nats.url, name="payment")
    await bus.ensure_streams()
    relay = OutboxRelay(db, bus, batch=64, poll_s=0.1, ack_timeout_s=1.0)
    relay_task = asyncio.create_task(relay.run())
    enqueued: list[str] = []
    stop = asyncio.Event()

    async def produce() -> None:
        i = 0
        while not stop.is_set():
            async def run(tx: Tx, agg: str = f"p{i % 5}") -> str:
                return await tx.emit(PAYMENT_COMPLETED, payment_pb2.PaymentCompleted(),
                                     source="payment", aggregate_id=agg)

            enqueued.append(await db.write(run))
            i += 1
            await asyncio.sleep(0.002)

    producer = asyncio.create_task(produce())
    try:
        await asyncio.sleep(1.0)
        await asyncio.to_thread(fresh_nats.kill)
        sent_before_kill = await _sent_ids(db)
        assert len(sent_before_kill) > 50, "relay was not publishing before the kill"
        await asyncio.sleep(1.0)  # producing goes on while NATS is down
        await asyncio.to_thread(fresh_nats.start)
        await asyncio.sleep(1.0)
        stop.set()
        await producer
        deadline = time.monotonic() + 30
        while await relay.pending():
            assert time.monotonic() < deadline, "outbox did not drain after the restart"
            await asyncio.sleep(0.05)
        ids = await _stream_ids(bus)
    finally:
        stop.set()
        relay_task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await relay_task
        producer.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await producer
        await bus.close()
        await db.close()
    # Acked before the crash = on disk (sync_interval: always): none missing.
    assert sent_before_kill <= set(ids)
    # After the drain every event is in the stream exactly once.
    assert len(ids) == len(set(ids)) == len(enqueued)
    assert set(ids) == set(enqueued)
    assert ids == enqueued, "publish order differs from commit order"
    assert relay.stats.failures > 0, "NATS outage was not noticed"
