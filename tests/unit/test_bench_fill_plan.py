"""The grown shop's plan: sizes, fates, events and inbox rows, and the consumer table
against the consumers the services declare."""

from __future__ import annotations

import random
from collections import Counter

from shop.events.v1 import envelope_pb2

from bench.fill_plan import CONSUMERS, FATES, FULL, FillSizes, Planner, inbox_rows
from services.cart import handlers as cart
from services.common import events as ev
from services.inventory import handlers as inventory
from services.notification import handlers as notification
from services.order import handlers as order
from services.payment import handlers as payment
from services.shipping import handlers as shipping

SIZES = FillSizes(orders=2_000, users=150, inbox=1_500, events=1_800)
NOW = 1_800_000_000.0


def test_the_plan_has_the_sizes_asked_for_and_valid_ids() -> None:
    planner = Planner(SIZES, NOW)
    orders = list(planner.orders())
    assert len(orders) == SIZES.orders
    assert len({o.id for o in orders}) == SIZES.orders
    users = set(planner.user_ids)
    assert len(users) == SIZES.users
    assert all(o.user_id in users for o in orders)
    assert [o.create_time for o in orders] == sorted(o.create_time for o in orders)
    assert all(o.create_time <= NOW for o in orders)
    recent = [o for o in orders if o.index >= SIZES.orders - planner.recent]
    events = list(planner.events(recent))
    assert len(events) == SIZES.events
    assert len({e.id for e in events}) == SIZES.events
    by_db = inbox_rows(events, SIZES.inbox)
    assert sum(len(rows) for rows in by_db.values()) == SIZES.inbox
    ids = {e.id for e in events}
    assert all(event_id in ids for rows in by_db.values() for _, event_id, _ in rows)


def test_the_full_fill_covers_exactly_the_events_asked_for() -> None:
    planner = Planner(FULL, NOW)
    newest = planner.fates[len(planner.fates) - planner.recent:]
    covered = sum(len(f.events) for f in newest)
    assert covered >= FULL.events > covered - len(newest[0].events)


def test_notifications_name_the_events_that_made_them() -> None:
    planner = Planner(SIZES, NOW)
    orders = list(planner.orders())
    recent = [o for o in orders if o.index >= SIZES.orders - planner.recent]
    consumed = next(set(s) for _, d, s in CONSUMERS if d == notification.DURABLE)
    by_id = {e.id: e for e in planner.events(recent)}
    rng = random.Random(1)
    notes = [n for o in recent for n, _ in planner.notification_rows(o, rng)]
    assert notes
    in_stream = [n for n in notes if n[7] in by_id]
    assert in_stream and all(by_id[n[7]].subject in consumed for n in in_stream)
    welcome = list(planner.welcome_rows(rng))
    assert len(welcome) == SIZES.users
    assert {n[1] for n, _ in welcome} == set(planner.user_ids)
    assert all(d[0] == n[0] and d[3] == "SENT" for n, d in welcome)


def test_statuses_spread_over_every_fate_and_no_saga_is_left_in_flight() -> None:
    planner = Planner(SIZES, NOW)
    fates = Counter(o.fate.name for o in planner.orders())
    assert set(fates) == {f.name for f in FATES}
    assert abs(sum(f.weight for f in FATES) - 1.0) < 1e-9
    assert fates["shipped"] > fates["attention"] > 0
    for fate in FATES:
        assert fate.saga_status in ("done", "requires_attention"), fate.name
        assert fate.history and fate.events[0] == ev.ORDER_CREATED


def test_events_are_envelopes_of_their_subject_for_their_order() -> None:
    planner = Planner(SIZES, NOW)
    recent = list(planner.orders())[-50:]
    for e in planner.events(recent):
        env = envelope_pb2.Envelope.FromString(e.data)
        assert (env.id, env.subject) == (e.id, e.subject)
        spec = ev.spec_for(e.subject)
        assert env.type == spec.payload_type.DESCRIPTOR.full_name
        assert env.source == spec.producer
        assert env.aggregate_id in {o.id for o in recent}
        assert env.payload.Unpack(spec.payload_type())


def test_the_consumer_table_is_the_consumers_the_services_declare() -> None:
    payments, shipments = order.routes(lambda _order_id: None)
    declared = {
        order.PAYMENTS_DURABLE: {r.subject for r in payments},
        order.SHIPMENTS_DURABLE: {r.subject for r in shipments},
        notification.DURABLE: {r.subject for r in notification.routes()},
        cart.DURABLE: {r.subject for r in cart.routes()},
        shipping.DURABLE: {r.subject for r in shipping.routes()},
        inventory.DURABLE: {r.subject for r in inventory.routes()},
    }
    # A service that gains a consumer must be added to the table (its durable would
    # otherwise start at the first of the grown stream's events).
    assert payment.routes() == []
    assert {durable: set(subjects) for _, durable, subjects in CONSUMERS} == declared
