"""The event catalogue (services/common/events.py) against the code that really runs.

Producers: every subject is published by exactly one service, the one the catalogue
names, and that service's store really writes it to its outbox (driven here against a
temp Database, the outbox row read back and decoded).

Consumers: every route of every services/<svc>/handlers.py decodes what the real
producer wrote, with the catalogue's payload type, and its handler, run in a
transaction on a temp Database with the consumer's schema, leaves its effect row.
"""

from __future__ import annotations

import ast
import asyncio
import importlib
import inspect
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
from google.protobuf.message import Message
from shop.events.v1 import envelope_pb2

from services.cart.domain import ProductInfo
from services.cart.store import CartStore
from services.common import events
from services.common.consumer import Route
from services.common.db import Database
from services.common.schema import service_migrations
from services.common.settings import SERVICES
from services.common.storage import Row, Tx
from services.inventory.domain import Line as StockLine
from services.inventory.domain import Status
from services.inventory.store import InventoryStore
from services.order.domain import Limits, Line, Order, Outcome, SagaState, advance
from services.order.store import HistoryEntry, OrderStore
from services.payment.domain import ChargeRequest
from services.payment.store import PaymentStore
from services.user.domain import User
from services.user.store import UserStore

Envelope = envelope_pb2.Envelope
ROOT = Path(__file__).resolve().parents[2]

# Ids shared by the producers and the consumers' set-ups, so effects can be matched.
USER = "u" + uuid.uuid4().hex[:31]
CONFIRMED_ORDER = "oc" + uuid.uuid4().hex[:30]
CANCELLED_ORDER = "ox" + uuid.uuid4().hex[:30]
ATTENTION_ORDER = "oa" + uuid.uuid4().hex[:30]
PAID_ORDER = "op" + uuid.uuid4().hex[:30]
DECLINED_ORDER = "od" + uuid.uuid4().hex[:30]
RESERVED_ORDER = "or" + uuid.uuid4().hex[:30]
RESTOCKED_ORDER = "ot" + uuid.uuid4().hex[:30]
PRODUCT = "espresso-machine"
OTHER_PRODUCT = "yoga-mat"
PRICE = 24900
OWNER = "contract-test"

# Who consumes which event, as shop is designed. Each must be a real route.
DESIGNED_CONSUMERS = {
    ("notification", events.USER_CREATED),
    ("shipping", events.ORDER_CONFIRMED),
    ("cart", events.ORDER_CONFIRMED),
    ("notification", events.ORDER_CONFIRMED),
    ("notification", events.ORDER_CANCELLED),
    ("notification", events.PAYMENT_COMPLETED),
    ("order", events.PAYMENT_COMPLETED),
    ("notification", events.PAYMENT_FAILED),
    ("order", events.PAYMENT_FAILED),
    ("notification", events.PAYMENT_REFUNDED),
    ("order", events.ORDER_SHIPPED),
    ("notification", events.ORDER_SHIPPED),
    ("inventory", events.ORDER_CONFIRMED),
}


@dataclass(frozen=True)
class Published:
    """One outbox row, as the relay would publish it."""
    producer: str  # the service whose store wrote the row
    subject: str
    event_id: str
    aggregate_id: str
    data: bytes

    @property
    def envelope(self) -> Envelope:
        return Envelope.FromString(self.data)


# --- producers: drive each service's store, read its outbox -------------------------------


async def _open(path: Path, service: str) -> Database:
    return await Database.open(path / f"{service}.db", migrations=[service_migrations(service)],
                               durable=False)


async def _outbox(db: Database, producer: str) -> list[Published]:
    rows = await _rows(db, "SELECT event_id, subject, aggregate_id, data FROM outbox ORDER BY id")
    return [Published(producer, r["subject"], r["event_id"], r["aggregate_id"], bytes(r["data"]))
            for r in rows]


async def produce_user(path: Path) -> list[Published]:
    db = await _open(path, "user")
    try:
        await UserStore(db).create(
            User(USER, f"{USER}@example.com", "Ada", time.time()), "not-a-real-hash")
        return await _outbox(db, "user")
    finally:
        await db.close()


def _order(order_id: str, *, from_cart: bool = True) -> Order:
    now = time.time()
    return Order(order_id, USER, (Line(PRODUCT, 1, PRICE),), PRICE, "USD",
                 create_time=now, update_time=now, from_cart=from_cart)


async def create_order(db: Database, order_id: str) -> tuple[Order, SagaState]:
    """OrderStore.create: the order PENDING, its saga, order.created."""
    order = _order(order_id)
    saga = SagaState(order_id, card_token="tok_visa")
    created, fresh = await OrderStore(db).create(order, saga, owner=OWNER, lease_s=60)
    assert fresh
    return created, saga


async def finish_order(db: Database, order_id: str, outcomes: list[tuple[str, str]],
                       limits_compensation: int = 8) -> str:
    """Create the order, run the saga state machine through `outcomes`, record the end
    with OrderStore.record (which writes the final order.* event). Returns its status."""

    order, saga = await create_order(db, order_id)
    state, final = saga, None
    limits = Limits(compensation=limits_compensation)
    for outcome, error in outcomes:
        t = advance(state, Outcome(outcome), error, limits)
        state, final = t.state, t.final_status
    assert final is not None, f"saga of {order_id} did not end"
    ended = await OrderStore(db).record(
        order, saga, state, [HistoryEntry(state.step.value, "test", 1, time.time())],
        owner=OWNER, lease_s=60, final_status=final)
    assert ended is not None
    return ended.status.value


async def produce_order(path: Path) -> list[Published]:
    db = await _open(path, "order")
    try:
        ok = "succeeded"
        assert await finish_order(db, CONFIRMED_ORDER, [(ok, ""), (ok, ""), (ok, "")]) \
            == "CONFIRMED"
        assert await finish_order(
            db, CANCELLED_ORDER, [(ok, ""), ("refused", "card declined"), (ok, "")]) \
            == "CANCELLED"
        assert await finish_order(
            db, ATTENTION_ORDER, [(ok, ""), ("refused", "card declined"), ("unknown", "down")],
            limits_compensation=1) == "REQUIRES_ATTENTION"
        return await _outbox(db, "order")
    finally:
        await db.close()


async def produce_payment(path: Path) -> list[Published]:
    db = await _open(path, "payment")
    try:
        store = PaymentStore(db)
        paid = await store.charge(ChargeRequest(PAID_ORDER, USER, PRICE, "USD", "tok_visa"))
        assert paid.status.value == "CHARGED"
        declined = await store.charge(
            ChargeRequest(DECLINED_ORDER, USER, PRICE, "USD", "tok_chargeDeclined"))
        assert declined.status.value == "DECLINED"
        refunded = await store.refund(PAID_ORDER, "customer asked")
        assert refunded.status.value == "REFUNDED"
        return await _outbox(db, "payment")
    finally:
        await db.close()


async def produce_inventory(path: Path) -> list[Published]:
    db = await _open(path, "inventory")
    try:
        store = InventoryStore(db)
        await store.seed([(PRODUCT, 10)])
        await store.reserve(RESERVED_ORDER, [StockLine(PRODUCT, 2)])
        await store.release(RESERVED_ORDER)
        # A confirmed order cancelled before dispatch: committed, then restocked.
        await store.reserve(RESTOCKED_ORDER, [StockLine(PRODUCT, 1)])
        await store.commit(RESTOCKED_ORDER)
        await store.restock(RESTOCKED_ORDER)
        return await _outbox(db, "inventory")
    finally:
        await db.close()


async def produce_shipping(path: Path, confirmed: Published) -> list[Published]:
    """order.shipped: the shipment shipping's order.confirmed handler made (PENDING),
    dispatched once due (its only path)."""
    from services.shipping.store import ShippingStore

    db = await _open(path, "shipping")
    try:
        await run_route(db, _route("shipping", events.ORDER_CONFIRMED), confirmed)
        assert await _outbox(db, "shipping") == []  # PENDING: nothing shipped yet
        due = await ShippingStore(db).dispatch_due(time.time() + 3600)
        assert due.dispatched == 1
        return await _outbox(db, "shipping")
    finally:
        await db.close()


async def produce_all(path: Path) -> list[Published]:
    out: list[Published] = []
    for name, fn in (("user", produce_user), ("order", produce_order),
                     ("payment", produce_payment), ("inventory", produce_inventory)):
        sub = path / name
        sub.mkdir()
        out += await fn(sub)
    confirmed = [p for p in out if p.subject == events.ORDER_CONFIRMED]
    assert len(confirmed) == 1
    sub = path / "shipping"
    sub.mkdir()
    out += await produce_shipping(sub, confirmed[0])
    return out


@pytest.fixture(scope="module")
def produced(tmp_path_factory: pytest.TempPathFactory) -> dict[str, list[Published]]:
    rows = asyncio.run(asyncio.wait_for(
        produce_all(tmp_path_factory.mktemp("producers")), timeout=60))
    by_subject: dict[str, list[Published]] = {}
    for p in rows:
        by_subject.setdefault(p.subject, []).append(p)
    return by_subject


# --- consumers: every route of every handlers.py --------------------------------------------

POKED: list[str] = []


def _routes_of(service: str) -> list[Route]:
    try:
        mod = importlib.import_module(f"services.{service}.handlers")
    except ModuleNotFoundError:
        return []
    fn = mod.routes
    # Order's routes take the saga's poke; other parameters have defaults.
    result = fn(POKED.append) if "poke" in inspect.signature(fn).parameters else fn()
    if isinstance(result, tuple):  # several consumers (e.g. order: payments, shipments)
        return [r for group in result for r in group]
    return list(result)


ROUTES: dict[tuple[str, str], Route] = {
    (svc, r.subject): r for svc in SERVICES for r in _routes_of(svc)
}


def _route(service: str, subject: str) -> Route:
    return ROUTES[(service, subject)]


def decode_like_consumer(route: Route, published: Published) -> tuple[Envelope, Message]:
    """What EventConsumer._decode does with a message from the stream."""
    env = Envelope.FromString(published.data)
    payload = route.payload_type()
    assert env.payload.Unpack(payload), (
        f"{route.subject}: payload {env.payload.type_url} does not unpack as "
        f"{route.payload_type.DESCRIPTOR.full_name}")
    return env, payload


async def run_route(db: Database, route: Route, published: Published) -> Envelope:
    env, payload = decode_like_consumer(route, published)
    after = await db.write(lambda tx: route.handler(tx, env, payload))
    if callable(after):
        after()  # what the consumer runs once the batch committed
    return env


async def _rows(db: Database, sql: str, *args: object) -> list[Row]:
    async def run(tx: Tx) -> list[Row]:
        return await tx.fetch(sql, args)

    return await db.read(run)


# Per (consumer, subject): a set-up before the handler runs, and the effect check after.
Setup = Callable[[Database], Awaitable[None]]
Check = Callable[[Database, Envelope, Message], Awaitable[None]]

NOTIFICATION_KIND = {
    events.USER_CREATED: "WELCOME",
    events.PAYMENT_COMPLETED: "RECEIPT",
    events.PAYMENT_FAILED: "PAYMENT_FAILED",
    events.PAYMENT_REFUNDED: "REFUND",
    events.ORDER_CONFIRMED: "ORDER_CONFIRMED",
    events.ORDER_CANCELLED: "ORDER_CANCELLED",
    events.ORDER_SHIPPED: "SHIPPED",
}


async def _no_setup(db: Database) -> None:
    return None


def _notification_check(subject: str) -> Check:
    async def check(db: Database, env: Envelope, payload: Message) -> None:
        rows = await _rows(db, "SELECT user_id, kind, subject, body FROM notifications"
                               " WHERE event_id = ?", env.id)
        assert len(rows) == 1, f"{subject}: expected one notification, got {len(rows)}"
        assert rows[0]["user_id"] == USER
        assert rows[0]["kind"] == NOTIFICATION_KIND[subject]
        if subject == events.ORDER_SHIPPED:
            tracking = payload.shipment.tracking_number  # type: ignore[attr-defined]
            assert tracking
            assert tracking in rows[0]["subject"] + rows[0]["body"]
    return check


async def _cart_setup(db: Database) -> None:
    store = CartStore(db)
    await store.add(USER, ProductInfo(PRODUCT, "Espresso Machine", PRICE, "USD"), 1)
    await store.add(USER, ProductInfo(OTHER_PRODUCT, "Yoga Mat", 3500, "USD"), 2)


async def _cart_check(db: Database, env: Envelope, payload: Message) -> None:
    rows = await _rows(db, "SELECT product_id FROM cart_items WHERE user_id = ?", USER)
    # The ordered product is gone; a line that was not ordered stays.
    assert [r["product_id"] for r in rows] == [OTHER_PRODUCT]


async def _shipping_check(db: Database, env: Envelope, payload: Message) -> None:
    rows = await _rows(db, "SELECT user_id, tracking_number, status, dispatch_at FROM shipments"
                           " WHERE order_id = ?", CONFIRMED_ORDER)
    assert len(rows) == 1
    assert rows[0]["user_id"] == USER and rows[0]["tracking_number"]
    # Created PENDING with its due time; order.shipped waits for the dispatch.
    assert rows[0]["status"] == "PENDING" and rows[0]["dispatch_at"] > 0


def _order_at_charge(order_id: str) -> Setup:
    async def setup(db: Database) -> None:
        _, saga = await create_order(db, order_id)
        at_charge = advance(saga, Outcome.SUCCEEDED).state  # stock reserved
        assert await OrderStore(db).replace_saga(
            saga, at_charge, HistoryEntry("reserve_stock", "succeeded", 1, time.time()))
    return setup


def _order_reconciled(order_id: str, step: str, status: str, charged: int) -> Check:
    async def check(db: Database, env: Envelope, payload: Message) -> None:
        saga = await _rows(db, "SELECT step, status, charged FROM sagas WHERE order_id = ?",
                           order_id)
        assert [tuple(saga[0])] == [(step, status, charged)]
        hist = await _rows(db, "SELECT outcome FROM saga_history WHERE order_id = ?", order_id)
        assert "reconciled" in [h["outcome"] for h in hist]
        assert order_id in POKED
    return check


async def _order_confirmed_setup(db: Database) -> None:
    ok = "succeeded"
    assert await finish_order(db, CONFIRMED_ORDER, [(ok, ""), (ok, ""), (ok, "")]) == "CONFIRMED"


async def _order_shipped_check(db: Database, env: Envelope, payload: Message) -> None:
    rows = await _rows(db, "SELECT status, tracking_number FROM orders WHERE id = ?",
                       CONFIRMED_ORDER)
    tracking = payload.shipment.tracking_number  # type: ignore[attr-defined]
    assert [tuple(r) for r in rows] == [("SHIPPED", tracking)]


async def _inventory_setup(db: Database) -> None:
    store = InventoryStore(db)
    await store.seed([(PRODUCT, 5)])
    await store.reserve(CONFIRMED_ORDER, [StockLine(PRODUCT, 1)])


async def _inventory_check(db: Database, env: Envelope, payload: Message) -> None:
    store = InventoryStore(db)
    reservation = await store.get_reservation(CONFIRMED_ORDER)
    assert reservation is not None and reservation.status is Status.COMMITTED
    stock = await store.get_stock(PRODUCT)
    assert (stock.available, stock.reserved, stock.sold) == (4, 0, 1)  # the unit is sold


EFFECTS: dict[tuple[str, str], tuple[Setup, Check]] = {
    **{("notification", s): (_no_setup, _notification_check(s)) for s in NOTIFICATION_KIND},
    ("cart", events.ORDER_CONFIRMED): (_cart_setup, _cart_check),
    ("shipping", events.ORDER_CONFIRMED): (_no_setup, _shipping_check),
    ("order", events.PAYMENT_COMPLETED): (
        _order_at_charge(PAID_ORDER), _order_reconciled(PAID_ORDER, "confirm", "running", 1)),
    ("order", events.PAYMENT_FAILED): (
        _order_at_charge(DECLINED_ORDER),
        _order_reconciled(DECLINED_ORDER, "release_stock", "compensating", 0)),
    ("order", events.ORDER_SHIPPED): (_order_confirmed_setup, _order_shipped_check),
    ("inventory", events.ORDER_CONFIRMED): (_inventory_setup, _inventory_check),
}


# --- the catalogue itself -------------------------------------------------------------------


def test_catalogue_subjects_are_in_the_stream_and_types_unique() -> None:
    assert events.CATALOGUE, "the catalogue is empty"
    types = [spec.payload_type.DESCRIPTOR.full_name for spec in events.CATALOGUE.values()]
    assert len(types) == len(set(types)), "two subjects share a payload type"
    for subject, spec in events.CATALOGUE.items():
        aggregate, _, name = subject.partition(".")
        assert name and "." not in name, f"{subject} is not <aggregate>.<event>"
        # The stream takes `<aggregate>.>` for each aggregate: anything else is never stored.
        assert aggregate in events.AGGREGATES, f"{subject} is outside the stream"
        assert spec.producer in SERVICES
        assert events.payload_type(spec.payload_type.DESCRIPTOR.full_name) is spec.payload_type


# --- producers ------------------------------------------------------------------------------


@pytest.mark.parametrize("subject", sorted(events.CATALOGUE))
def test_subject_is_really_published_by_its_producer(
        subject: str, produced: dict[str, list[Published]]) -> None:
    spec = events.CATALOGUE[subject]
    rows = produced.get(subject, [])
    assert rows, f"{spec.producer}'s store never wrote {subject} to its outbox"
    for p in rows:
        assert p.producer == spec.producer, f"{subject} written by {p.producer}"
        env = p.envelope
        assert env.subject == subject and env.id == p.event_id
        assert len(env.id) == 32 and int(env.id, 16) >= 0
        assert env.source == spec.producer
        assert env.aggregate_id and env.aggregate_id == p.aggregate_id
        assert env.type == spec.payload_type.DESCRIPTOR.full_name
        assert env.occurred_at.seconds > 0
        payload = spec.payload_type()
        assert env.payload.Unpack(payload)
        assert payload.ByteSize() > 0


def test_every_subject_has_exactly_one_producer(produced: dict[str, list[Published]]) -> None:
    producers = {s: {p.producer for p in rows} for s, rows in produced.items()}
    assert set(producers) == set(events.CATALOGUE), "outboxes hold subjects outside the catalogue"
    for subject, names in producers.items():
        assert names == {events.CATALOGUE[subject].producer}, subject


def _subjects_enqueued_by(service: str) -> set[str]:
    """Subject constants referenced by the modules of `service` that write the outbox."""
    by_name = {name: getattr(events, name) for name in dir(events)
               if name.isupper() and isinstance(getattr(events, name), str)
               and getattr(events, name) in events.CATALOGUE}
    found: set[str] = set()
    for path in sorted((ROOT / "services" / service).glob("*.py")):
        tree = ast.parse(path.read_text())
        calls = [n for n in ast.walk(tree) if isinstance(n, ast.Call)]
        writes = ("enqueue", "emit")
        if not any((isinstance(c.func, ast.Name) and c.func.id in writes)
                   or (isinstance(c.func, ast.Attribute) and c.func.attr in writes)
                   for c in calls):
            continue
        for node in ast.walk(tree):
            if isinstance(node, ast.Attribute) and node.attr in by_name:
                found.add(by_name[node.attr])
            elif isinstance(node, ast.Name) and node.id in by_name:
                found.add(by_name[node.id])
    return found


def test_no_other_service_writes_a_subject_to_its_outbox() -> None:
    """The static side of "exactly one producer": a module that writes the outbox names
    only subjects its own service produces, and names all of them."""
    for service in SERVICES:
        mine = {s for s, spec in events.CATALOGUE.items() if spec.producer == service}
        assert _subjects_enqueued_by(service) == mine, service


# --- consumers ------------------------------------------------------------------------------


def test_routes_cover_the_designed_consumers() -> None:
    missing = DESIGNED_CONSUMERS - set(ROUTES)
    assert not missing, f"designed consumers without a route: {sorted(missing)}"


@pytest.mark.parametrize("key", sorted(ROUTES), ids=lambda k: f"{k[0]}-{k[1]}")
def test_route_payload_type_is_the_catalogue_type(key: tuple[str, str]) -> None:
    route = ROUTES[key]
    assert key[1] in events.CATALOGUE, f"{key[0]} consumes {key[1]}, which nobody produces"
    assert route.payload_type is events.CATALOGUE[key[1]].payload_type


@pytest.mark.parametrize("key", sorted(ROUTES), ids=lambda k: f"{k[0]}-{k[1]}")
def test_consumed_subject_has_a_real_producer(key: tuple[str, str],
                                              produced: dict[str, list[Published]]) -> None:
    assert produced.get(key[1]), f"{key[0]} consumes {key[1]} but no store publishes it"


@pytest.mark.parametrize("key", sorted(ROUTES), ids=lambda k: f"{k[0]}-{k[1]}")
async def test_consumer_handles_what_the_producer_publishes(
        key: tuple[str, str], produced: dict[str, list[Published]], tmp_path: Path) -> None:
    service, subject = key
    assert key in EFFECTS, f"no effect check for {service} on {subject}: add one here"
    setup, check = EFFECTS[key]
    [published] = [p for p in produced[subject]
                   if subject != events.ORDER_CONFIRMED or p.aggregate_id == CONFIRMED_ORDER]
    db = await _open(tmp_path, service)
    try:
        await setup(db)
        env = await asyncio.wait_for(run_route(db, ROUTES[key], published), timeout=10)
        _, payload = decode_like_consumer(ROUTES[key], published)
        await check(db, env, payload)
    finally:
        await db.close()
