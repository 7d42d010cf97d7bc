"""What a grown shop holds, row by row: users, orders with their sagas and history, the
events of the newest orders and the consumers' inbox rows for them.

Pure and deterministic (a seeded generator): the same sizes and seed give the same rows.
Each order ends in one of a few fates, with the saga row, history rows and events the
saga writes for it (as a real run shows them: `done` sagas after reserve, charge and
confirm; cancelled ones after a refusal and its compensation; a few that gave up and
wait for an operator). No saga is left in flight: a system at rest has none, and the
order service would resume them at start (that would be work, not data).

The stream holds the events of the newest orders only (the stream forgets old events;
the databases keep every order), and the inbox rows are the consumers' rows for those
events, newest first, up to the size asked for.
"""

from __future__ import annotations

import bisect
import hashlib
import json
import random
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from typing import Any

from google.protobuf.message import Message
from shop.events.v1 import envelope_pb2
from shop.inventory.v1 import inventory_pb2
from shop.order.v1 import order_pb2
from shop.payment.v1 import payment_pb2
from shop.shipping.v1 import shipping_pb2

from services.common import events as ev
from services.common.demo import CATALOGUE
from services.notification import domain as notes

__all__ = ["CONSUMERS", "FATES", "FULL", "PASSWORD", "SMOKE", "Event", "Fate", "FillSizes",
           "OrderPlan", "Planner", "event_id", "inbox_rows", "user_email", "user_name"]


@dataclass(frozen=True)
class FillSizes:
    orders: int
    users: int
    inbox: int
    events: int

    def label(self) -> str:
        return f"{self.orders}o-{self.users}u-{self.inbox}i-{self.events}e"

    def to_json(self) -> dict[str, int]:
        return asdict(self)


FULL = FillSizes(orders=1_000_000, users=100_000, inbox=1_000_000, events=1_000_000)
SMOKE = FillSizes(orders=5_000, users=500, inbox=5_000, events=5_000)

# The durable consumers on the events stream: database file, durable name, subjects. The
# fill creates them caught up with the stream (a grown system's consumers are), and their
# inbox rows go to these files.
CONSUMERS: tuple[tuple[str, str, tuple[str, ...]], ...] = (
    ("order", "order-payments", (ev.PAYMENT_COMPLETED, ev.PAYMENT_FAILED)),
    ("order", "order-shipments", (ev.ORDER_SHIPPED,)),
    ("notification", "notification-events", (
        ev.USER_CREATED, ev.PAYMENT_COMPLETED, ev.PAYMENT_FAILED, ev.PAYMENT_REFUNDED,
        ev.ORDER_CONFIRMED, ev.ORDER_CANCELLED, ev.ORDER_SHIPPED)),
    ("cart", "cart-orders", (ev.ORDER_CONFIRMED,)),
    ("inventory", "inventory-orders", (ev.ORDER_CONFIRMED,)),
    ("shipping", "shipping-orders", (ev.ORDER_CONFIRMED,)),
)


@dataclass(frozen=True)
class Fate:
    """How an order's saga ended: the order's status, the saga row's end state, the
    history rows (step, outcome, attempt, error) and the events it caused, in order."""

    name: str
    weight: float
    status: str
    saga_step: str
    saga_status: str
    charged: bool
    committed: bool
    reason: str
    refusal: str
    history: tuple[tuple[str, str, int, str], ...]
    events: tuple[str, ...]


_OK_HISTORY = (("reserve_stock", "succeeded", 1, ""), ("charge", "succeeded", 1, ""),
               ("confirm", "succeeded", 1, ""))
_DECLINED = "card declined"
_NO_STOCK = "out of stock: espresso-machine"
_GAVE_UP = "refund: payment answered UNKNOWN"

FATES: tuple[Fate, ...] = (
    Fate("shipped", 0.70, "SHIPPED", "done", "done", True, True, "", "", _OK_HISTORY,
         (ev.ORDER_CREATED, ev.INVENTORY_RESERVED, ev.PAYMENT_COMPLETED, ev.ORDER_CONFIRMED,
          ev.ORDER_SHIPPED)),
    Fate("confirmed", 0.12, "CONFIRMED", "done", "done", True, True, "", "", _OK_HISTORY,
         (ev.ORDER_CREATED, ev.INVENTORY_RESERVED, ev.PAYMENT_COMPLETED, ev.ORDER_CONFIRMED)),
    Fate("declined", 0.08, "CANCELLED", "done", "done", False, False, _DECLINED, "declined",
         (("reserve_stock", "succeeded", 1, ""), ("charge", "refused", 1, _DECLINED),
          ("release_stock", "succeeded", 1, "")),
         (ev.ORDER_CREATED, ev.INVENTORY_RESERVED, ev.PAYMENT_FAILED, ev.INVENTORY_RELEASED,
          ev.ORDER_CANCELLED)),
    Fate("out_of_stock", 0.06, "CANCELLED", "done", "done", False, False, _NO_STOCK,
         "out_of_stock", (("reserve_stock", "refused", 1, _NO_STOCK),),
         (ev.ORDER_CREATED, ev.ORDER_CANCELLED)),
    Fate("attention", 0.04, "REQUIRES_ATTENTION", "refund", "requires_attention", True, False,
         _GAVE_UP, "commit_refused",
         (("reserve_stock", "succeeded", 1, ""), ("charge", "succeeded", 1, ""),
          ("confirm", "refused", 1, "commit refused"),
          *(("refund", "unknown", a, "UNKNOWN: payment") for a in range(1, 9))),
         (ev.ORDER_CREATED, ev.INVENTORY_RESERVED, ev.PAYMENT_COMPLETED,
          ev.ORDER_REQUIRES_ATTENTION)),
)
_PRODUCTS = tuple((p.id, p.price_cents) for p in CATALOGUE)
# Every filled user's password (one hash, computed once per fill and reused: verifying
# it costs what any user's does).
PASSWORD = "grown-password-1"
# Orders are spread over this many days before the fill; those with events in the stream
# lie in the last `_RECENT_DAYS` (inside the stream's and the inboxes' horizon).
_HISTORY_DAYS = 180.0
_RECENT_DAYS = 2.0
_DAY = 86400.0


def user_email(i: int) -> str:
    return f"customer{i}@grown.example.com"


def user_name(i: int) -> str:
    return f"Customer {i}"


def event_id(aggregate_id: str, k: int) -> str:
    """The id of the `k`-th event of an aggregate: derived, so the notification an event
    made and the consumers' inbox rows name the same event without a lookup."""
    return hashlib.blake2b(f"{aggregate_id}:{k}".encode(), digest_size=16).hexdigest()


@dataclass(frozen=True)
class OrderPlan:
    index: int
    id: str
    user_index: int
    user_id: str
    fate: Fate
    items: tuple[tuple[str, int, int], ...]
    total_cents: int
    create_time: float
    update_time: float
    tracking: str


class Planner:
    """The rows of a grown shop of `sizes`, as of time `now` (unix seconds)."""

    def __init__(self, sizes: FillSizes, now: float, seed: int = 17) -> None:
        self.sizes = sizes
        self.now = now
        self.seed = seed
        rng = random.Random(seed)
        self.user_ids = [f"{rng.getrandbits(128):032x}" for _ in range(sizes.users)]
        cum: list[float] = []
        acc = 0.0
        for f in FATES:
            acc += f.weight
            cum.append(acc)
        draw = random.Random(seed + 5)
        # Each order's fate, drawn first: how many of the newest orders the stream's
        # events cover is then known exactly.
        self.fates = [FATES[min(bisect.bisect_right(cum, draw.random()), len(FATES) - 1)]
                      for _ in range(sizes.orders)]
        self.recent = self._recent_orders()

    def _recent_orders(self) -> int:
        """How many of the newest orders have their events in the stream: the fewest
        whose events are at least `sizes.events`."""
        total = 0
        for n, fate in enumerate(reversed(self.fates), 1):
            total += len(fate.events)
            if total >= self.sizes.events:
                return n
        return len(self.fates)

    def orders(self) -> Iterator[OrderPlan]:
        """Every order, oldest first (the order the service would have written them)."""
        n = self.sizes.orders
        rng = random.Random(self.seed + 1)
        old = n - self.recent
        start_old = self.now - _HISTORY_DAYS * _DAY
        start_recent = self.now - _RECENT_DAYS * _DAY
        users = self.user_ids
        for i in range(n):
            if i < old:
                t = start_old + (i / max(1, old)) * (_HISTORY_DAYS - _RECENT_DAYS) * _DAY
            else:
                t = start_recent + ((i - old) / max(1, self.recent)) * _RECENT_DAYS * _DAY
            fate = self.fates[i]
            lines = []
            for _ in range(1 + (rng.random() < 0.3)):
                pid, price = _PRODUCTS[rng.randrange(len(_PRODUCTS))]
                lines.append((pid, 1 + (rng.random() < 0.2), price))
            total = sum(q * c for _, q, c in lines)
            tracking = (f"SHP{rng.getrandbits(60):012X}"[:15] if fate.status == "SHIPPED"
                        else "")
            u = rng.randrange(len(users))
            yield OrderPlan(i, f"{rng.getrandbits(128):032x}", u, users[u], fate, tuple(lines),
                            total, t, t + 2.0 + rng.random() * 3600, tracking)

    # --- rows ---------------------------------------------------------------------------

    @staticmethod
    def order_row(o: OrderPlan) -> tuple[Any, ...]:
        cancel = o.fate.reason if o.fate.status in ("CANCELLED", "REQUIRES_ATTENTION") else ""
        return (o.id, o.user_id, json.dumps([list(ln) for ln in o.items]), o.total_cents, "USD",
                o.fate.status, cancel, o.tracking, 0, None, o.create_time, o.update_time)

    @staticmethod
    def saga_row(o: OrderPlan) -> tuple[Any, ...]:
        f = o.fate
        return (o.id, f.saga_step, f.saga_status, 8 if f.saga_status != "done" else 0,
                int(f.charged), 0, f.reason, "", 3 + len(f.history), "order-1",
                o.create_time + 10.0, o.update_time, int(f.committed), 0, 0, f.refusal)

    @staticmethod
    def history_rows(o: OrderPlan) -> Iterator[tuple[Any, ...]]:
        for k, (step, outcome, attempt, error) in enumerate(o.fate.history):
            yield (o.id, step, outcome, attempt, o.create_time + 0.005 * (k + 1), error)

    def _user_time(self, i: int) -> float:
        """Users signed up over the months before the first order."""
        step = (_HISTORY_DAYS * _DAY) / max(1, len(self.user_ids))
        return self.now - (_HISTORY_DAYS + 30) * _DAY + i * step

    def user_rows(self, password_hash: str) -> Iterator[tuple[Any, ...]]:
        for i, uid in enumerate(self.user_ids):
            yield (uid, user_email(i), user_name(i), password_hash, self._user_time(i))

    def recipient_rows(self) -> Iterator[tuple[Any, ...]]:
        for i, uid in enumerate(self.user_ids):
            yield (uid, user_email(i), user_name(i))

    def notification_rows(self, o: OrderPlan, rng: random.Random
                          ) -> Iterator[tuple[tuple[Any, ...], tuple[Any, ...]]]:
        """(notification, delivery) rows of the notifications order `o`'s events made, as
        the notification consumer writes them (mail sent); the older ones partly read."""
        for k, subject in enumerate(o.fate.events):
            draft = self._draft(o, subject)
            if draft is None:
                continue
            t = o.create_time + 0.005 * (k + 1) + 0.05
            read = int(t < self.now - _RECENT_DAYS * _DAY and rng.random() < 0.6)
            yield self._note(draft, event_id(o.id, k), t, read, o.user_index, rng)

    def welcome_rows(self, rng: random.Random
                     ) -> Iterator[tuple[tuple[Any, ...], tuple[Any, ...]]]:
        for i, uid in enumerate(self.user_ids):
            yield self._note(notes.welcome(uid, user_name(i)), event_id(uid, 0),
                             self._user_time(i) + 0.05, int(rng.random() < 0.8), i, rng)

    @staticmethod
    def _note(draft: notes.Draft, ev_id: str, t: float, read: int, user_index: int,
              rng: random.Random) -> tuple[tuple[Any, ...], tuple[Any, ...]]:
        nid = f"{rng.getrandbits(128):032x}"
        return ((nid, draft.user_id, draft.kind.value, draft.subject, draft.body, read, t,
                 ev_id),
                (nid, user_email(user_index), user_name(user_index), "SENT", 1, t,
                 f"{rng.getrandbits(128):032x}", t, t + 0.5))

    @staticmethod
    def _draft(o: OrderPlan, subject: str) -> notes.Draft | None:
        if subject == ev.PAYMENT_COMPLETED:
            return notes.receipt(o.user_id, o.id, o.total_cents, "USD")
        if subject == ev.PAYMENT_FAILED:
            return notes.payment_failed(o.user_id, o.id, o.total_cents, "USD", _DECLINED)
        if subject == ev.ORDER_CONFIRMED:
            return notes.order_confirmed(o.user_id, o.id, o.total_cents, "USD")
        if subject == ev.ORDER_CANCELLED:
            return notes.order_cancelled(o.user_id, o.id, o.fate.reason)
        if subject == ev.ORDER_SHIPPED:
            return notes.shipped(o.user_id, o.id, o.tracking, "shop-post")
        return None

    # --- events -------------------------------------------------------------------------

    def event_of(self, o: OrderPlan, k: int, subject: str, rng: random.Random) -> Event:
        """The `k`-th event of order `o` as the producing service would have written it."""
        t = o.create_time + 0.005 * (k + 1)
        order = order_pb2.Order(id=o.id, user_id=o.user_id, total_cents=o.total_cents,
                                currency="USD", tracking_number=o.tracking)
        for pid, q, c in o.items:
            order.items.add(product_id=pid, quantity=q, unit_price_cents=c)
        order.create_time.FromNanoseconds(int(o.create_time * 1e9))
        order.update_time.FromNanoseconds(int(t * 1e9))
        payload: Message
        source = ev.spec_for(subject).producer
        if subject == ev.ORDER_CREATED:
            order.status = order_pb2.ORDER_STATUS_PENDING
            payload = order_pb2.OrderCreated(order=order)
        elif subject == ev.ORDER_CONFIRMED:
            order.status = order_pb2.ORDER_STATUS_CONFIRMED
            payload = order_pb2.OrderConfirmed(order=order)
        elif subject == ev.ORDER_CANCELLED:
            order.status = order_pb2.ORDER_STATUS_CANCELLED
            order.cancel_reason = o.fate.reason
            payload = order_pb2.OrderCancelled(order=order, reason=o.fate.reason)
        elif subject == ev.ORDER_REQUIRES_ATTENTION:
            order.status = order_pb2.ORDER_STATUS_REQUIRES_ATTENTION
            payload = order_pb2.OrderRequiresAttention(order=order, step="refund",
                                                       error=o.fate.reason)
        elif subject in (ev.INVENTORY_RESERVED, ev.INVENTORY_RELEASED):
            res = inventory_pb2.Reservation(order_id=o.id)
            for pid, q, _ in o.items:
                res.items.add(product_id=pid, quantity=q)
            payload = (inventory_pb2.StockReserved(reservation=res)
                       if subject == ev.INVENTORY_RESERVED
                       else inventory_pb2.StockReleased(reservation=res))
        elif subject in (ev.PAYMENT_COMPLETED, ev.PAYMENT_FAILED):
            pay = payment_pb2.Payment(order_id=o.id, user_id=o.user_id,
                                      amount_cents=o.total_cents, currency="USD")
            pay.create_time.FromNanoseconds(int(t * 1e9))
            pay.update_time.FromNanoseconds(int(t * 1e9))
            if subject == ev.PAYMENT_COMPLETED:
                payload = payment_pb2.PaymentCompleted(payment=pay)
            else:
                pay.decline_reason = _DECLINED
                payload = payment_pb2.PaymentFailed(payment=pay, reason=_DECLINED)
        elif subject == ev.ORDER_SHIPPED:
            ship = shipping_pb2.Shipment(order_id=o.id, user_id=o.user_id,
                                         tracking_number=o.tracking, carrier="shop-post")
            ship.create_time.FromNanoseconds(int(t * 1e9))
            payload = shipping_pb2.OrderShipped(shipment=ship)
        else:  # pragma: no cover - every fate's subjects are above
            raise ValueError(f"no payload for {subject}")
        env = envelope_pb2.Envelope(
            id=event_id(o.id, k), type=payload.DESCRIPTOR.full_name, subject=subject, source=source,
            correlation_id=f"{rng.getrandbits(128):032x}", aggregate_id=o.id,
            traceparent=f"00-{rng.getrandbits(128):032x}-{rng.getrandbits(64):016x}-01")
        env.occurred_at.FromNanoseconds(int(t * 1e9))
        env.payload.Pack(payload)
        return Event(env.id, subject, env.SerializeToString(), env.correlation_id,
                     env.traceparent, t)

    def events(self, orders: list[OrderPlan]) -> Iterator[Event]:
        """The events of `orders` (the newest ones, oldest first), at most `sizes.events`:
        the oldest orders' first events are the ones the stream already forgot."""
        rng = random.Random(self.seed + 2)
        subjects = [(o, k, s) for o in orders for k, s in enumerate(o.fate.events)]
        for o, k, s in subjects[max(0, len(subjects) - self.sizes.events):]:
            yield self.event_of(o, k, s, rng)


@dataclass(frozen=True)
class Event:
    id: str
    subject: str
    data: bytes
    correlation_id: str
    traceparent: str
    time: float


def inbox_rows(events: list[Event], limit: int) -> dict[str, list[tuple[str, str, float]]]:
    """Per database file, the consumers' inbox rows for `events`, newest first, `limit` in
    all (the oldest rows are the ones already pruned). Handled a little after each event."""
    by_subject: dict[str, list[tuple[str, str]]] = {}
    for db, durable, subjects in CONSUMERS:
        for s in subjects:
            by_subject.setdefault(s, []).append((db, durable))
    out: dict[str, list[tuple[str, str, float]]] = {db: [] for db, _, _ in CONSUMERS}
    left = limit
    for e in reversed(events):
        for db, durable in by_subject.get(e.subject, ()):
            if left <= 0:
                return out
            out[db].append((durable, e.id, e.time + 0.05))
            left -= 1
    return out
