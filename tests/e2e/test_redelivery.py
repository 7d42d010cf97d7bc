"""Deliver every event of a flow twice: every database ends row-for-row the same as with
one delivery (guarantee 4 of docs/guarantees.md, beyond JetStream's duplicate window).

A flow runs on the eight real services: users created, an order from the cart confirmed
and shipped, a declined order cancelled, a charge and its refund. Once every consumer is
idle, each service's SQLite tables are snapshotted; then every message of SHOP_EVENTS is
published again (same Envelope bytes, a fresh Nats-Msg-Id so JetStream stores it), the
consumers go idle again, and the tables must be identical (inbox, outbox and relay lease
excluded: they are the bookkeeping that makes this work).
"""

from __future__ import annotations

import asyncio
import sqlite3
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import grpc
import nats
import pytest
from grpc import aio
from nats.aio.client import Client as NATS
from nats.js import JetStreamContext
from shop.cart.v1 import cart_pb2, cart_pb2_grpc
from shop.events.v1 import envelope_pb2
from shop.order.v1 import order_pb2, order_pb2_grpc
from shop.payment.v1 import payment_pb2, payment_pb2_grpc
from shop.shipping.v1 import shipping_pb2, shipping_pb2_grpc
from shop.user.v1 import user_pb2, user_pb2_grpc

from ops.process import System
from services.common.events import CATALOGUE, DLQ_STREAM, STREAM
from services.common.settings import SERVICES
from tests.support import mesh
from tests.support.invariants import expected_durables
from tests.support.mesh import nats_auth
from tests.support.outboxes import unsent_outbox_rows

BOOKKEEPING = {"inbox", "outbox", "outbox_lease"}
SETTLE_WITHIN_S = 30.0
STATUS = order_pb2.OrderStatus

Snapshot = dict[str, dict[str, list[tuple[Any, ...]]]]


# --- the flow -------------------------------------------------------------------------------


async def run_flow(system: System) -> dict[str, str]:
    """Drive a flow that makes every consumer do something; returns its ids."""
    names = ("user", "cart", "order", "payment", "shipping")
    channels = {n: mesh.channel(system.addr(n)) for n in names}
    try:
        users = user_pb2_grpc.UserServiceStub(channels["user"])
        carts = cart_pb2_grpc.CartServiceStub(channels["cart"])
        orders = order_pb2_grpc.OrderServiceStub(channels["order"])
        payments = payment_pb2_grpc.PaymentServiceStub(channels["payment"])
        shipping = shipping_pb2_grpc.ShippingServiceStub(channels["shipping"])

        async def new_user(name: str) -> str:
            reply = await users.CreateUser(user_pb2.CreateUserRequest(
                email=f"{uuid.uuid4().hex[:12]}@example.com", name=name,
                password="correct horse battery"), timeout=10)
            return str(reply.user.id)

        buyer, decliner = await new_user("Ada"), await new_user("Bob")
        md = [("x-user-id", buyer)]
        await carts.AddItem(cart_pb2.AddItemRequest(product_id="coffee-grinder", quantity=1),
                            metadata=md, timeout=5)
        await carts.AddItem(cart_pb2.AddItemRequest(product_id="cookbook", quantity=2),
                            metadata=md, timeout=5)
        confirmed = (await orders.CreateOrder(order_pb2.CreateOrderRequest(
            card_token="tok_visa"), metadata=md, timeout=15)).order
        assert confirmed.status == STATUS.ORDER_STATUS_CONFIRMED, confirmed

        with pytest.raises(aio.AioRpcError) as err:
            await orders.CreateOrder(order_pb2.CreateOrderRequest(
                items=[order_pb2.CreateOrderItem(product_id="yoga-mat", quantity=1)],
                card_token="tok_chargeDeclined"), metadata=[("x-user-id", decliner)], timeout=15)
        assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION

        # payment.completed + payment.refunded for a charge made outside any order saga
        # (the order consumer must leave an unknown order alone, both times).
        loose = uuid.uuid4().hex
        await payments.Charge(payment_pb2.ChargeRequest(
            order_id=loose, user_id=buyer, amount_cents=1234, currency="USD",
            card_token="tok_visa"), timeout=5)
        await payments.Refund(payment_pb2.RefundRequest(order_id=loose, reason="goodwill"),
                              timeout=5)

        # Wait for the shipping leg: order.confirmed -> shipment -> order.shipped -> SHIPPED.
        deadline = time.monotonic() + SETTLE_WITHIN_S
        while True:
            order = (await orders.GetOrder(order_pb2.GetOrderRequest(id=confirmed.id),
                                           metadata=md, timeout=5)).order
            if order.status == STATUS.ORDER_STATUS_SHIPPED:
                break
            assert time.monotonic() < deadline, f"order never shipped: {order}"
            await asyncio.sleep(0.05)
        shipment = (await shipping.GetShipment(
            shipping_pb2.GetShipmentRequest(order_id=confirmed.id), timeout=5)).shipment
        assert shipment.tracking_number == order.tracking_number
        return {"buyer": buyer, "decliner": decliner, "order": confirmed.id, "loose": loose}
    finally:
        for channel in channels.values():
            await channel.close()


# --- quiescence and snapshots ---------------------------------------------------------------


def db_paths(system: System) -> dict[str, Path]:
    paths = {s: system.data_dir / f"{s}.db" for s in SERVICES}
    missing = [str(p) for p in paths.values() if not p.is_file()]
    assert not missing, f"service databases not found: {missing}"
    return paths


def snapshot(path: Path) -> dict[str, list[tuple[Any, ...]]]:
    """Every table but the bookkeeping, every row, in a stable order."""
    out: dict[str, list[tuple[Any, ...]]] = {}
    with sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=5) as conn:
        tables = [r[0] for r in conn.execute(
            "SELECT name FROM sqlite_master WHERE type = 'table' ORDER BY name")]
        for table in tables:
            if table in BOOKKEEPING:
                continue
            cols = [r[1] for r in conn.execute(f'PRAGMA table_info("{table}")')]
            rows = conn.execute(f'SELECT * FROM "{table}"').fetchall()
            if table == "sqlite_sequence":  # AUTOINCREMENT counters, bookkeeping's excluded
                rows = [r for r in rows if r[0] not in BOOKKEEPING]
            out[table] = sorted(rows, key=lambda r: tuple((v is None, repr(v)) for v in r))
            assert cols, table
    return out


def snapshot_all(system: System) -> Snapshot:
    return {svc: snapshot(path) for svc, path in db_paths(system).items()}


async def consumers_idle(js: JetStreamContext) -> tuple[bool, dict[str, tuple[int, int, int]]]:
    """(all idle?, durable -> (num_pending, num_ack_pending, delivered stream seq))."""
    infos = await js.consumers_info(STREAM)
    state = {i.name: (int(i.num_pending or 0), int(i.num_ack_pending or 0),
                      int(i.delivered.stream_seq if i.delivered else 0)) for i in infos}
    idle = all(p == 0 and a == 0 for p, a, _ in state.values())
    return idle, state


async def settle(js: JetStreamContext, system: System, durables: set[str]) -> None:
    """Wait until every outbox is published and every durable has acked everything;
    then wait once more for the same, so a write caused by the last events (an
    order.shipped written by shipping's handler) is caught too."""
    deadline = time.monotonic() + SETTLE_WITHIN_S
    calm = 0
    last: Any = None
    while calm < 3:
        assert time.monotonic() < deadline, f"system never went idle: {last}"
        unsent = {s: unsent_outbox_rows(p) for s, p in db_paths(system).items()}
        idle, state = await consumers_idle(js)
        last = (unsent, state)
        if idle and not any(unsent.values()) and durables <= set(state):
            calm += 1
        else:
            calm = 0
        await asyncio.sleep(0.2)


def diff(before: Snapshot, after: Snapshot) -> list[str]:
    problems: list[str] = []
    for svc in sorted(set(before) | set(after)):
        b, a = before.get(svc, {}), after.get(svc, {})
        for table in sorted(set(b) | set(a)):
            rb, ra = b.get(table, []), a.get(table, [])
            if rb != ra:
                gone = [r for r in rb if r not in ra]
                new = [r for r in ra if r not in rb]
                problems.append(f"{svc}.{table}: {len(rb)} -> {len(ra)} rows; "
                                f"gone {gone[:3]}; new {new[:3]}")
    return problems


# --- the test ------------------------------------------------------------------------------


@pytest.fixture
async def js(system: System) -> AsyncIterator[JetStreamContext]:
    nc: NATS = await nats.connect(system.nats_url, connect_timeout=5, **nats_auth().options())
    try:
        yield nc.jetstream()
    finally:
        await nc.close()


async def redeliver_everything(js: JetStreamContext) -> list[str]:
    """Publish every stored message again with the same bytes and a new Nats-Msg-Id;
    returns their subjects."""
    info = await js.stream_info(STREAM)
    first, last = int(info.state.first_seq), int(info.state.last_seq)
    subjects: list[str] = []
    for seq in range(first, last + 1):
        raw = await js.get_msg(STREAM, seq)
        assert raw.subject and raw.data
        headers = dict(raw.headers or {})
        headers["Nats-Msg-Id"] = f"redelivery-{uuid.uuid4().hex}"
        ack = await js.publish(raw.subject, raw.data, headers=headers, timeout=5)
        assert not ack.duplicate, f"JetStream dropped the repeat of #{seq}"
        subjects.append(raw.subject)
    after = await js.stream_info(STREAM)
    assert int(after.state.last_seq) == last + len(subjects)
    return subjects


async def test_every_event_delivered_twice_changes_nothing(system: System,
                                                           js: JetStreamContext) -> None:
    ids = await asyncio.wait_for(run_flow(system), timeout=60)
    durables = expected_durables(system)  # every consumer of the eight services
    assert len(durables) == 6, durables
    await settle(js, system, durables)
    before = snapshot_all(system)

    # The flow made the rows this test is about (so an empty snapshot cannot pass).
    assert before["notification"]["notifications"], "no notifications written"
    assert len(before["shipping"]["shipments"]) == 1
    assert {r[0] for r in before["order"]["orders"]} >= {ids["order"]}
    payments = {r[0]: r[2] for r in before["payment"]["payments"]}
    assert payments[ids["loose"]] == "REFUNDED"

    # Every subject of the flow is in the stream, every envelope decodes.
    subjects = await redeliver_everything(js)
    assert {"user.created", "order.created", "order.confirmed", "order.cancelled",
            "order.shipped", "payment.completed", "payment.failed", "payment.refunded",
            "inventory.reserved", "inventory.released"} <= set(subjects)
    assert set(subjects) <= set(CATALOGUE)
    first = await js.get_msg(STREAM, (await js.stream_info(STREAM)).state.last_seq)
    assert first.data is not None
    assert envelope_pb2.Envelope.FromString(first.data).id  # same bytes, same event id

    await settle(js, system, durables)
    # Every durable saw the second copies, not just the first ones.
    _, state = await consumers_idle(js)
    last_seq = int((await js.stream_info(STREAM)).state.last_seq)
    for durable in durables:
        assert state[durable][2] > last_seq - len(subjects), (durable, state[durable])

    after = snapshot_all(system)
    problems = diff(before, after)
    assert not problems, "a second delivery had an effect:\n" + "\n".join(problems)

    # Nothing was dead-lettered on the way.
    dlq = await js.stream_info(DLQ_STREAM)
    assert int(dlq.state.messages) == 0
