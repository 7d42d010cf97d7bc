"""kill -9 of NATS: nothing marked sent is lost and every outbox drains once NATS is back,
first for a lone relay (exact stream contents), then for the whole system taking orders
(the full invariant check afterwards)."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import pytest
from shop.events.v1 import envelope_pb2
from shop.payment.v1 import payment_pb2

from ops.natsd import NatsServer
from ops.process import System
from services.common.bus import Bus
from services.common.db import Database
from services.common.events import PAYMENT_COMPLETED, STREAM
from services.common.outbox import OutboxRelay
from services.common.storage import Tx
from tests.support.invariants import check_invariants
from tests.support.load import OrderClient, paced, set_stock
from tests.support.mesh import nats_auth
from tests.support.outboxes import unsent_outbox_rows
from tests.support.users import create_users

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
    bus = await Bus.connect(fresh_nats.url, name="payment", auth=nats_auth())
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

    async def until(cond: Callable[[], Awaitable[bool]], what: str) -> None:
        deadline = time.monotonic() + 30
        while not await cond():
            assert time.monotonic() < deadline, what
            await asyncio.sleep(0.02)

    async def sent_many() -> bool:
        return len(await _sent_ids(db)) > 50

    try:
        await until(sent_many, "relay was not publishing before the kill")
        await asyncio.to_thread(fresh_nats.kill)
        sent_before_kill = await _sent_ids(db)
        at_kill = len(enqueued)

        async def noticed_while_producing() -> bool:
            # Producing goes on while NATS is down, and the relay sees its publishes fail.
            return len(enqueued) >= at_kill + 100 and relay.stats.failures > 0

        await until(noticed_while_producing, "the relay never noticed the outage")
        await asyncio.to_thread(fresh_nats.start)
        published = relay.stats.published

        async def publishing_again() -> bool:
            return relay.stats.published > published

        await until(publishing_again, "the relay did not publish after the restart")
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


ORDERS = 60
RUN_S = 8.0
KILL_AT_S = 2.0
DOWN_S = 2.5
STOCK = {"coffee-grinder": 10_000, "chef-knife": 10_000}


async def test_nats_kill_9_while_services_take_orders(fresh_nats: NatsServer,
                                                      fault_system: System) -> None:
    """Sagas are gRPC, so orders go on while NATS is down; their events wait in the
    outboxes (seen there), the consumers catch up after the restart."""
    sysm = fault_system
    users = await create_users(sysm.addr("user"), 6, "nats-kill")
    await set_stock(sysm.addr("inventory"), STOCK)
    products = list(STOCK)
    held: list[int] = []

    async def outage() -> None:
        await asyncio.sleep(KILL_AT_S)
        await asyncio.to_thread(fresh_nats.kill)
        down_until = time.monotonic() + DOWN_S
        while time.monotonic() < down_until:
            held.append(unsent_outbox_rows(sysm.data_dir / "order.db"))
            await asyncio.sleep(0.2)
        await asyncio.to_thread(fresh_nats.start)

    async with OrderClient(sysm.addr("order"), timeout_s=5, retry_for_s=30) as client:
        fault = asyncio.create_task(outage())
        await paced(ORDERS, RUN_S, 8, lambda i: client.create(
            users[i % 6], {products[i % 2]: 1 + i % 3}, key=f"nats-{i}",
            card="tok_chargeDeclined" if i % 5 == 4 else "tok_visa"))
        await fault
    assert client.unexpected == [], client.unexpected
    assert max(held) > 0, "no order event waited in the outbox while NATS was down"

    report = await check_invariants(sysm, stock_set=STOCK, created=client.created,
                                    expect_orders=ORDERS, timeout_s=60)
    report.assert_ok()
    assert report.count("SHIPPED") > 0 and report.count("CANCELLED") > 0, report.summary()
    print(f"\nup to {max(held)} order events held while NATS was down; {report.summary()}")
