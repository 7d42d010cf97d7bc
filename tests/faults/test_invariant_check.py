"""The invariant check itself: on a settled system it passes, and each broken guarantee makes
it fail, with a violation that names what broke.

A small real run (confirmed and shipped orders, one from a cart, a declined card, one order
refused for stock) settles; its records are copied (SQLite backup) and one guarantee is
broken per copy by hand (a dropped shipment, a second receipt, a skipped restock, a stray
charge, ...); `violations()` must report each. Two breaks that the tables' keys cannot hold
(a second charge row, a second shipment) are made on the records in memory; one (a stray
charge) on the live system, through the full settling `check_invariants`.
"""

from __future__ import annotations

import asyncio
import dataclasses
import sqlite3
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from shop.cart.v1 import cart_pb2, cart_pb2_grpc

from ops.process import System
from tests.support.invariants import busy_reasons, check_invariants, expected_durables, violations
from tests.support.load import OrderClient, channel, set_stock
from tests.support.records import PaymentRow, Records, ShipmentRow, read_records, snapshot
from tests.support.users import create_users

SCARCE = "espresso-machine"
PLENTY = "french-press"
STOCK = {SCARCE: 3, PLENTY: 1000}


@dataclass(frozen=True)
class Settled:
    data_dir: Path  # a copy of the settled files
    records: Records
    shipped: str  # an order id that shipped
    declined: str  # an order cancelled for its card
    user: str


async def _run(system: System, copy_to: Path) -> Settled:
    users = await create_users(system.addr("user"), 3, "check")
    await set_stock(system.addr("inventory"), STOCK)
    async with channel(system.addr("cart")) as chan:
        await cart_pb2_grpc.CartServiceStub(chan).AddItem(
            cart_pb2.AddItemRequest(product_id=PLENTY, quantity=2),
            metadata=[("x-user-id", users[2])], timeout=10)
    async with OrderClient(system.addr("order"), timeout_s=10, retry_for_s=20) as client:
        good = [await client.create(users[i % 2], {PLENTY: 1 + i, SCARCE: 1} if i % 2
                                    else {PLENTY: 1 + i}, key=f"good-{i}") for i in range(3)]
        declined = await client.create(users[0], {PLENTY: 1}, key="declined",
                                       card="tok_chargeDeclined")
        no_stock = await client.create(users[1], {SCARCE: 50}, key="no-stock")
        from_cart = await client.create(users[2], None, key="from-cart")
    assert [a.what for a in good] == ["ORDER_STATUS_CONFIRMED"] * 3, good
    assert declined.what == no_stock.what == "FAILED_PRECONDITION", (declined, no_stock)
    assert from_cart.what == "ORDER_STATUS_CONFIRMED", from_cart
    report = await check_invariants(system, stock_set=STOCK, created=client.created,
                                    expect_orders=6, timeout_s=60)
    report.assert_ok()
    assert report.count("SHIPPED") == 4, report.summary()
    copy = snapshot(system.data_dir, copy_to)
    records = dataclasses.replace(read_records(copy), backlog=dict(report.records.backlog))
    assert violations(records, stock_set=STOCK) == []
    return Settled(copy, records, good[0].order_id, declined.order_id, users[0])


@pytest.fixture(scope="module")
def settled(system: System, tmp_path_factory: pytest.TempPathFactory) -> Settled:
    return asyncio.run(_run(system, tmp_path_factory.mktemp("settled")))


@pytest.fixture
def copy(settled: Settled, tmp_path: Path) -> Iterator[Path]:
    """A fresh copy of the settled files for one mutation."""
    yield snapshot(settled.data_dir, tmp_path / "copy")


def _sql(path: Path, sql: str, *args: object) -> None:
    with sqlite3.connect(path) as conn:
        cur = conn.execute(sql, args)
        assert cur.rowcount >= 1, f"the mutation changed nothing: {sql}"


def _new() -> str:
    return uuid.uuid4().hex


def drop_shipment(d: Path, s: Settled) -> None:
    _sql(d / "shipping.db", "DELETE FROM shipments WHERE order_id = ?", s.shipped)


def second_receipt(d: Path, s: Settled) -> None:
    _sql(d / "notification.db",
         "INSERT INTO notifications (id, user_id, kind, subject, body, created_at, event_id)"
         " VALUES (?, ?, 'RECEIPT', ?, 'again', ?, ?)",
         _new(), s.user, f"Receipt for order {s.shipped}", time.time(), _new())


def second_receipt_from_a_second_event(d: Path, s: Settled) -> None:
    """The realistic double: payment.completed emitted twice, each with its receipt."""
    event = _new()
    _sql(d / "payment.db",
         "INSERT INTO outbox (event_id, subject, aggregate_id, data, created_at, sent_at)"
         " VALUES (?, 'payment.completed', ?, x'', ?, ?)",
         event, s.shipped, time.time(), time.time())
    _sql(d / "notification.db",
         "INSERT INTO notifications (id, user_id, kind, subject, body, created_at, event_id)"
         " VALUES (?, ?, 'RECEIPT', ?, 'again', ?, ?)",
         _new(), s.user, f"Receipt for order {s.shipped}", time.time(), event)


def skip_restock(d: Path, s: Settled) -> None:
    """Units of a cancelled order left in `sold` (the check constraint still holds)."""
    _sql(d / "inventory.db", "UPDATE stock SET available = available - 1, sold = sold + 1"
                             " WHERE product_id = ?", PLENTY)


def stray_charge(d: Path, s: Settled) -> None:
    _sql(d / "payment.db",
         "INSERT INTO payments (order_id, user_id, status, amount_cents, currency,"
         " created_at, updated_at) VALUES (?, ?, 'CHARGED', 4200, 'USD', ?, ?)",
         _new(), s.user, time.time(), time.time())


def cancelled_order_keeps_money(d: Path, s: Settled) -> None:
    _sql(d / "payment.db", "UPDATE payments SET status = 'CHARGED' WHERE order_id = ?",
         s.declined)


def cancelled_order_dispatched(d: Path, s: Settled) -> None:
    _sql(d / "shipping.db",
         "INSERT INTO shipments (order_id, user_id, tracking_number, status, carrier,"
         " created_at) VALUES (?, ?, 'SHPSTRAYPARCEL1', 'SHIPPED', 'test', ?)",
         s.declined, s.user, time.time())


def order_left_pending(d: Path, s: Settled) -> None:
    _sql(d / "order.db", "UPDATE orders SET status = 'PENDING' WHERE id = ?", s.shipped)


def receipt_lost(d: Path, s: Settled) -> None:
    _sql(d / "notification.db", "DELETE FROM notifications WHERE kind = 'RECEIPT'"
                                " AND subject LIKE ?", f"%{s.shipped}%")


def second_welcome(d: Path, s: Settled) -> None:
    _sql(d / "notification.db",
         "INSERT INTO notifications (id, user_id, kind, subject, body, created_at, event_id)"
         " VALUES (?, ?, 'WELCOME', 'Welcome to shop, again', 'again', ?, ?)",
         _new(), s.user, time.time(), _new())


def shipped_notice_lost(d: Path, s: Settled) -> None:
    _sql(d / "notification.db", "DELETE FROM notifications WHERE kind = 'SHIPPED'"
                                " AND subject LIKE ?", f"%{s.shipped}%")


def event_never_published(d: Path, s: Settled) -> None:
    _sql(d / "order.db", "UPDATE outbox SET sent_at = NULL WHERE aggregate_id = ?"
                         " AND subject = 'order.confirmed'", s.shipped)


def stock_appeared(d: Path, s: Settled) -> None:
    _sql(d / "inventory.db", "UPDATE stock SET available = available + 1, total = total + 1"
                             " WHERE product_id = ?", SCARCE)


FILE_MUTATIONS: dict[str, tuple[Callable[[Path, Settled], None], str]] = {
    # name: (break it, a fragment the violation must contain)
    "drop a shipment": (drop_shipment, "has 0 shipments"),
    "second receipt": (second_receipt, "2 RECEIPT notifications"),
    "second receipt from a second event": (second_receipt_from_a_second_event,
                                           "payment.completed of"),
    "skip a restock": (skip_restock, "but confirmed/shipped orders hold"),
    "stray charge": (stray_charge, "stray charge"),
    "cancelled order keeps its money": (cancelled_order_keeps_money, "CANCELLED"),
    "cancelled order dispatched": (cancelled_order_dispatched, "CANCELLED but its shipment"),
    "order left pending": (order_left_pending, "is PENDING"),
    "receipt lost": (receipt_lost, "0 RECEIPT notifications"),
    "second welcome": (second_welcome, "2 WELCOME notifications"),
    "shipped notice lost": (shipped_notice_lost, "0 SHIPPED notifications"),
    "event never published": (event_never_published, "never published"),
    "stock appeared from nowhere": (stock_appeared, "was set"),
}


@pytest.mark.parametrize("name", list(FILE_MUTATIONS))
def test_broken_guarantee_in_the_files_is_reported(name: str, settled: Settled,
                                                   copy: Path) -> None:
    mutate, fragment = FILE_MUTATIONS[name]
    mutate(copy, settled)
    found = violations(read_records(copy), stock_set=STOCK)
    assert found, f"{name}: the check saw nothing"
    assert any(fragment in v for v in found), f"{name}: {found}"


def _second_charge(r: Records, s: Settled) -> Records:
    p = next(p for p in r.payments if p.order_id == s.shipped)
    return dataclasses.replace(r, payments=(*r.payments, PaymentRow(
        p.order_id, p.user_id, "CHARGED", p.amount_cents, 0, p.currency)))


def _second_shipment(r: Records, s: Settled) -> Records:
    sh = next(x for x in r.shipments if x.order_id == s.shipped)
    return dataclasses.replace(r, shipments=(*r.shipments, ShipmentRow(
        sh.order_id, sh.user_id, "SHPSECONDPARCEL", "SHIPPED")))


def _unhandled(r: Records, s: Settled) -> Records:
    return dataclasses.replace(r, backlog={**r.backlog, "notification-events": 2})


def _dead_letter(r: Records, s: Settled) -> Records:
    return dataclasses.replace(r, dead_letters=1)


RECORD_MUTATIONS: dict[str, tuple[Callable[[Records, Settled], Records], str]] = {
    "second charge for one order": (_second_charge, "charged 2 times"),
    "second shipment for one order": (_second_shipment, "has 2 shipments"),
    "events not yet handled": (_unhandled, "not yet handled"),
    "a dead letter": (_dead_letter, "dead-lettered"),
}


@pytest.mark.parametrize("name", list(RECORD_MUTATIONS))
def test_broken_guarantee_in_the_records_is_reported(name: str, settled: Settled) -> None:
    mutate, fragment = RECORD_MUTATIONS[name]
    found = violations(mutate(settled.records, settled), stock_set=STOCK)
    assert any(fragment in v for v in found), f"{name}: {found}"


def test_a_service_whose_consumer_is_not_created_yet_keeps_the_check_waiting(
        system: System, settled: Settled) -> None:
    # Every durable the check expects of this system's services is one NATS holds: the
    # list cannot drift from the services' own wiring unnoticed.
    durables = expected_durables(system)
    assert durables == set(settled.records.backlog), (durables, settled.records.backlog)
    assert busy_reasons(settled.records, durables=durables) == []
    # A service still connecting to NATS has created no consumer: its events wait in the
    # stream, and the system has not settled (the records alone look final).
    backlog = {d: n for d, n in settled.records.backlog.items() if d != "shipping-orders"}
    early = dataclasses.replace(settled.records, backlog=backlog)
    assert busy_reasons(early, durables=durables) == [
        "consumers not created yet: ['shipping-orders']"]


async def test_stray_charge_on_the_live_system_fails_the_full_check(
        system: System, settled: Settled) -> None:
    stray = _new()
    _sql(system.data_dir / "payment.db",
         "INSERT INTO payments (order_id, user_id, status, amount_cents, currency,"
         " created_at, updated_at) VALUES (?, ?, 'CHARGED', 999, 'USD', ?, ?)",
         stray, settled.user, time.time(), time.time())
    try:
        report = await check_invariants(system, stock_set=STOCK, timeout_s=30)
        with pytest.raises(AssertionError, match=f"stray charge: 999 cents held for {stray}"):
            report.assert_ok()
    finally:
        _sql(system.data_dir / "payment.db", "DELETE FROM payments WHERE order_id = ?", stray)
    (await check_invariants(system, stock_set=STOCK, timeout_s=30)).assert_ok()
