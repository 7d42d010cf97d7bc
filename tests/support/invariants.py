"""The guarantees every fault and chaos test checks once the system has settled
(docs/guarantees.md), judged on what each service recorded (tests/support/records.py):

1. every order ends CONFIRMED/SHIPPED or CANCELLED (none PENDING, none needing attention,
   no saga still running);
2. money: per order, the charges minus the refunds of every payment row the payment service
   holds equal the total when CONFIRMED/SHIPPED and 0 when CANCELLED; a payment for an
   order that does not exist is a stray charge, two charges for one order a double charge;
3. stock: per product available + reserved + sold == its total (and the stock the test set),
   none negative; with every order final nothing stays reserved;
4. exactly once: each event was emitted once per fact (one order.confirmed per confirmed
   order, one payment.completed per charge, ...), nothing is left unsent, unconsumed or
   dead-lettered, and every notification kind exists exactly once per its causing fact
   (WELCOME per user, RECEIPT per charge, PAYMENT_FAILED per decline, REFUND per refund,
   ORDER_CONFIRMED per confirmation, ORDER_CANCELLED per cancellation, SHIPPED per dispatch);
   every confirmed/shipped order has exactly one live shipment, and a dispatched one has
   made the order SHIPPED;
5. goods and money agree: no CANCELLED order has a dispatched (or still dispatchable)
   shipment, and per product `sold` equals the units of CONFIRMED/SHIPPED orders, so the
   units of a cancelled order are back in `available`.

    report = await check_invariants(system, stock_set={"headphones": 30})
    report.assert_ok()

`check_invariants` waits (bounded by `timeout_s`) until nothing is in progress (no order
pending, no saga running, every outbox sent, every durable consumer of the services it
runs created and caught up, every shipment of a confirmed order dispatched), then until
the records stay unchanged for `quiet_s` (a late duplicate would show in that window), and
reports every violation at once.
`violations(records)` is the same judgement on records alone, for tests of the check.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import re
import time
from collections import Counter, defaultdict
from collections.abc import Collection, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from nats.js.errors import NotFoundError

from services.cart import handlers as cart_handlers
from services.common.bus import Bus
from services.common.events import DLQ_STREAM, STREAM
from services.inventory import handlers as inventory_handlers
from services.notification import handlers as notification_handlers
from services.order import handlers as order_handlers
from services.shipping import handlers as shipping_handlers
from tests.support.mesh import nats_auth
from tests.support.records import OrderRow, Records, StockRow, read_records

__all__ = [
    "CANCELLED",
    "DISPATCHED",
    "DONE",
    "InvariantReport",
    "busy_reasons",
    "check_invariants",
    "expected_durables",
    "violations",
]

DONE = frozenset({"CONFIRMED", "SHIPPED"})
CANCELLED = "CANCELLED"
FINAL = DONE | {CANCELLED}
DISPATCHED = frozenset({"SHIPPED", "DELIVERED"})  # the parcel has left the warehouse
SHIPMENT_CANCELLED = "CANCELLED"
CHARGED = frozenset({"CHARGED", "REFUNDED"})  # money moved at some point
SAGA_ACTIVE = frozenset({"running", "compensating"})
# Each service's durable consumers on the events stream (payment and user consume none).
SERVICE_DURABLES: Mapping[str, tuple[str, ...]] = {
    "cart": (cart_handlers.DURABLE,),
    "inventory": (inventory_handlers.DURABLE,),
    "notification": (notification_handlers.DURABLE,),
    "order": (order_handlers.PAYMENTS_DURABLE, order_handlers.SHIPMENTS_DURABLE),
    "shipping": (shipping_handlers.DURABLE,),
}

WELCOME, RECEIPT, PAYMENT_FAILED, REFUND = "WELCOME", "RECEIPT", "PAYMENT_FAILED", "REFUND"
ORDER_CONFIRMED, ORDER_CANCELLED, SHIPPED = "ORDER_CONFIRMED", "ORDER_CANCELLED", "SHIPPED"
KINDS = frozenset({WELCOME, RECEIPT, PAYMENT_FAILED, REFUND, ORDER_CONFIRMED,
                   ORDER_CANCELLED, SHIPPED})
# A notification's subject names its order ("Receipt for order <id>", "Order <id> shipped"):
# the fallback key when its event cannot be found in any outbox.
_ORDER_IN_SUBJECT = re.compile(r"[Oo]rder (\S+)")

_ID = re.compile(r"\b[0-9a-f]{32}\b")
_NUMBER = re.compile(r"\b\d+\b")
_NATS_TIMEOUT_S = 3.0
_POLL_S = 0.2


class _HasState(Protocol):
    @property
    def data_dir(self) -> Path: ...

    @property
    def nats_url(self) -> str: ...


def server_url_of(system: object) -> str:
    """The PostgreSQL server its processes were given (SHOP_DATABASE_URL), "" for SQLite."""
    envs = [getattr(p, "extra_env", {}) for p in getattr(system, "processes", ())]
    envs.append(getattr(system, "base_env", {}))
    return next((str(e["SHOP_DATABASE_URL"]) for e in envs if e.get("SHOP_DATABASE_URL")), "")


@dataclass
class InvariantReport:
    records: Records = field(default_factory=Records)
    violations: list[str] = field(default_factory=list)
    waited_s: float = 0.0

    @property
    def orders(self) -> tuple[OrderRow, ...]:
        return self.records.orders

    @property
    def stock(self) -> dict[str, StockRow]:
        return {s.product_id: s for s in self.records.stock}

    def count(self, *statuses: str) -> int:
        return sum(1 for o in self.orders if o.status in statuses)

    def summary(self) -> str:
        r = self.records
        charged = sum(1 for p in r.payments if p.status in CHARGED)
        refunded = sum(1 for p in r.payments if p.status == "REFUNDED")
        dispatched = sum(1 for s in r.shipments if s.status in DISPATCHED)
        return (f"{len(r.orders)} orders: {self.count(*DONE)} confirmed/shipped, "
                f"{self.count(CANCELLED)} cancelled, {self.count('PENDING')} pending, "
                f"{self.count('REQUIRES_ATTENTION')} needing attention; {charged} charged, "
                f"{refunded} refunded; {len(r.shipments)} shipments ({dispatched} dispatched);"
                f" {len(r.notifications)} notifications; settled after {self.waited_s:.1f} s")

    def kinds(self) -> Counter[str]:
        """Violations by kind: ids and figures blanked, so alike ones count together."""
        return Counter(_NUMBER.sub("N", _ID.sub("<id>", v))
                       for v in self.violations)

    def assert_ok(self) -> None:
        if self.violations:
            kinds = "\n  ".join(f"{n} x {k}" for k, n in self.kinds().most_common(12))
            shown = "\n  ".join(self.violations[:40])
            more = len(self.violations) - 40
            tail = f"\n  ... and {more} more" if more > 0 else ""
            raise AssertionError(f"{len(self.violations)} invariant violations "
                                 f"({self.summary()}), by kind:\n  {kinds}\nfirst ones:\n"
                                 f"  {shown}{tail}")


# --- the judgement ----------------------------------------------------------------------------


def _final_orders(rec: Records, out: list[str]) -> None:
    for o in rec.orders:
        if o.status not in FINAL:
            out.append(f"order {o.id} is {o.status} ({o.cancel_reason!r})")
    for s in rec.sagas:
        if s.status in SAGA_ACTIVE:
            out.append(f"saga of order {s.order_id} still {s.status} at {s.step}")
    ids = [o.id for o in rec.orders]
    for oid, n in Counter(ids).items():
        if n > 1:
            out.append(f"order {oid} recorded {n} times")


def _money(rec: Records, out: list[str]) -> None:
    orders = {o.id: o for o in rec.orders}
    by_order: dict[str, list[int]] = defaultdict(list)  # order id -> net of each charge
    for p in rec.payments:
        if p.refunded_cents > p.amount_cents or min(p.amount_cents, p.refunded_cents) < 0:
            out.append(f"payment of {p.order_id}: refunded {p.refunded_cents} of "
                       f"{p.amount_cents}")
        if p.status not in CHARGED:
            continue
        by_order[p.order_id].append(p.amount_cents - p.refunded_cents)
        o = orders.get(p.order_id)
        if o is None:
            if p.amount_cents - p.refunded_cents:
                out.append(f"stray charge: {p.amount_cents - p.refunded_cents} cents held "
                           f"for {p.order_id}, which is no order")
            continue
        if p.user_id != o.user_id:
            out.append(f"order {o.id} of {o.user_id} charged to {p.user_id}")
        if p.currency != o.currency:
            out.append(f"order {o.id} in {o.currency} charged in {p.currency}")
        if p.amount_cents != o.total_cents:
            out.append(f"order {o.id}: charged {p.amount_cents}, total {o.total_cents}")
    for oid, nets in by_order.items():
        if len(nets) > 1:
            out.append(f"order {oid} charged {len(nets)} times")
    for o in rec.orders:
        net = sum(by_order.get(o.id, ()))
        if o.status in DONE and net != o.total_cents:
            out.append(f"order {o.id} {o.status} total {o.total_cents} but net charge {net}")
        elif o.status == CANCELLED and net != 0:
            out.append(f"order {o.id} CANCELLED ({o.cancel_reason!r}) but net charge {net}")


def _stock(rec: Records, stock_set: Mapping[str, int] | None, out: list[str]) -> None:
    rows = {s.product_id: s for s in rec.stock}
    for product, amount in (stock_set or {}).items():
        s = rows.get(product)
        if s is None:
            out.append(f"no stock recorded for {product}")
        elif s.total != amount:
            out.append(f"stock of {product}: total {s.total}, but {amount} was set")
    all_final = all(o.status in FINAL for o in rec.orders)
    for s in rows.values():
        if min(s.available, s.reserved, s.sold) < 0:
            out.append(f"stock of {s.product_id} negative: {s}")
        if s.available + s.reserved + s.sold != s.total:
            out.append(f"stock of {s.product_id}: {s.available} + {s.reserved} + {s.sold} "
                       f"!= {s.total}")
        if all_final:
            if s.reserved:
                out.append(f"{s.product_id}: {s.reserved} still reserved with every order "
                           f"final")
            # Invariant 5: a cancelled order's units are not left in `sold`.
            sold = sum(o.units(s.product_id) for o in rec.orders if o.status in DONE)
            if s.sold != sold:
                out.append(f"{s.product_id}: sold {s.sold}, but confirmed/shipped orders "
                           f"hold {sold}")
    ordered = {p for o in rec.orders if o.status in DONE for p, _, _ in o.items}
    for product in sorted(ordered - set(rows)):
        out.append(f"{product} was sold but has no stock row")
    reservations = {r.order_id: r.status for r in rec.reservations}
    for o in rec.orders:
        if o.status in DONE and reservations.get(o.id) != "COMMITTED":
            out.append(f"order {o.id} {o.status} but its reservation is "
                       f"{reservations.get(o.id, 'missing')}")


def _shipments(rec: Records, out: list[str]) -> None:
    orders = {o.id: o for o in rec.orders}
    live: dict[str, list[str]] = defaultdict(list)  # order id -> statuses not cancelled
    for s in rec.shipments:
        o = orders.get(s.order_id)
        if o is None:
            out.append(f"shipment {s.tracking_number} ({s.status}) for {s.order_id}, "
                       f"which is no order")
            continue
        if s.user_id != o.user_id:
            out.append(f"shipment of order {o.id} addressed to {s.user_id}, not {o.user_id}")
        if s.status != SHIPMENT_CANCELLED:
            live[o.id].append(s.status)
        if o.status == CANCELLED and s.status != SHIPMENT_CANCELLED:
            what = "dispatched" if s.status in DISPATCHED else "still to be dispatched"
            out.append(f"order {o.id} CANCELLED but its shipment is {s.status} ({what})")
        if o.status == "SHIPPED" and s.status in DISPATCHED \
                and o.tracking_number != s.tracking_number:
            out.append(f"order {o.id} tracks {o.tracking_number!r}, its shipment "
                       f"{s.tracking_number!r}")
        if o.status == "CONFIRMED" and s.status in DISPATCHED:
            out.append(f"order {o.id} still CONFIRMED though its shipment is {s.status}")
    for o in rec.orders:
        if o.status not in DONE:
            continue
        got = live.get(o.id, [])
        if len(got) != 1:
            out.append(f"order {o.id} {o.status} has {len(got)} shipments {got}")
        elif o.status == "SHIPPED" and got[0] not in DISPATCHED:
            out.append(f"order {o.id} SHIPPED but its shipment is {got[0]}")


_CHECKED_SUBJECTS = frozenset({"user.created", "order.created", "order.confirmed",
                               "order.cancelled", "payment.completed", "payment.failed",
                               "payment.refunded", "order.shipped"})


def _expected_events(rec: Records) -> Counter[tuple[str, str]]:
    """(subject, aggregate id) -> how often each fact must have been emitted."""
    want: Counter[tuple[str, str]] = Counter()
    for u in rec.users:
        want["user.created", u] = 1
    confirmed = {e.aggregate_id for e in rec.events if e.subject == "order.confirmed"}
    for o in rec.orders:
        want["order.created", o.id] = 1
        if o.status in DONE or o.id in confirmed:
            want["order.confirmed", o.id] = 1
        if o.status == CANCELLED:
            want["order.cancelled", o.id] = 1
    for p in rec.payments:
        if p.status in CHARGED:
            want["payment.completed", p.order_id] = 1
        if p.status == "DECLINED":
            want["payment.failed", p.order_id] = 1
        if p.status == "REFUNDED":
            want["payment.refunded", p.order_id] = 1
    for s in rec.shipments:
        if s.status in DISPATCHED:
            want["order.shipped", s.order_id] = 1
    return want


def _events(rec: Records, out: list[str]) -> None:
    want = _expected_events(rec)
    # Only the subjects whose facts are counted; other events (inventory.*, ...) may repeat.
    got = Counter((e.subject, e.aggregate_id) for e in rec.events
                  if e.subject in _CHECKED_SUBJECTS)
    for key in sorted(set(want) | set(got)):
        if got[key] != want[key]:
            out.append(f"{key[0]} of {key[1]} emitted {got[key]} times, want {want[key]}")
    unsent = Counter(e.service for e in rec.events if not e.sent)
    for service, n in sorted(unsent.items()):
        out.append(f"{n} events of {service} never published")
    for durable, n in sorted(rec.backlog.items()):
        if n:
            out.append(f"consumer {durable} has {n} events not yet handled")
    if rec.dead_letters:
        out.append(f"{rec.dead_letters} events dead-lettered (their effect never happened)")


def _expected_notifications(rec: Records) -> dict[tuple[str, str], str]:
    """(kind, key) -> the user who must get exactly one; key = user id for WELCOME, the
    order id for the rest."""
    want: dict[tuple[str, str], str] = {}
    orders = {o.id: o for o in rec.orders}
    for u in rec.users:
        want[WELCOME, u] = u
    for p in rec.payments:
        owner = p.user_id or (orders[p.order_id].user_id if p.order_id in orders else "")
        if p.status in CHARGED:
            want[RECEIPT, p.order_id] = owner
        if p.status == "DECLINED":
            want[PAYMENT_FAILED, p.order_id] = owner
        if p.status == "REFUNDED":
            want[REFUND, p.order_id] = owner
    confirmed = {e.aggregate_id for e in rec.events if e.subject == "order.confirmed"}
    for o in rec.orders:
        if o.status in DONE or o.id in confirmed:
            want[ORDER_CONFIRMED, o.id] = o.user_id
        if o.status == CANCELLED:
            want[ORDER_CANCELLED, o.id] = o.user_id
    for s in rec.shipments:
        if s.status in DISPATCHED:
            want[SHIPPED, s.order_id] = s.user_id
    return want


def _notifications(rec: Records, out: list[str]) -> None:
    want = _expected_notifications(rec)
    cause = {e.event_id: e for e in rec.events}
    got: Counter[tuple[str, str]] = Counter()
    for n in rec.notifications:
        if n.kind not in KINDS:
            continue
        event = cause.get(n.event_id)
        if event is not None:
            key = event.aggregate_id
        elif n.kind == WELCOME:
            key = n.user_id
        else:
            m = _ORDER_IN_SUBJECT.search(n.subject)
            key = m.group(1) if m else ""
        if event is None:
            out.append(f"{n.kind} notification {n.id} has no causing event "
                       f"(event {n.event_id} is in no outbox)")
        got[n.kind, key] += 1
        owner = want.get((n.kind, key))
        if owner and n.user_id != owner:
            out.append(f"{n.kind} notification for {key} sent to {n.user_id}, not {owner}")
    for kind, key in sorted(set(want) | set(got)):
        have, need = got[kind, key], int((kind, key) in want)
        if have != need:
            out.append(f"{have} {kind} notifications for {key}, want {need}")


def violations(rec: Records, *, stock_set: Mapping[str, int] | None = None,
               created: Collection[str] = (), expect_orders: int | None = None) -> list[str]:
    """Everything wrong with these records (empty when every invariant holds).
    `created`: order ids a client saw created (each must exist); `expect_orders`: at least
    this many orders must exist; `stock_set`: product -> the stock the test set for it."""
    out: list[str] = []
    _final_orders(rec, out)
    known = {o.id for o in rec.orders}
    missing = sorted(set(created) - known)
    if missing:
        out.append(f"{len(missing)} orders answered to a client are not recorded, e.g. "
                   f"{missing[:3]}")
    if expect_orders is not None and len(rec.orders) < expect_orders:
        out.append(f"{len(rec.orders)} orders recorded, but {expect_orders} were created")
    _money(rec, out)
    _stock(rec, stock_set, out)
    _shipments(rec, out)
    _events(rec, out)
    _notifications(rec, out)
    return out


# --- settling ---------------------------------------------------------------------------------


def busy_reasons(rec: Records, *, await_dispatch: bool = True,
                 durables: Collection[str] = ()) -> list[str]:
    """What is still in progress (each resolves on its own while the system runs).
    `durables`: the consumers the running services create; one not there yet is a service
    still connecting to NATS, whose events wait in the stream."""
    busy = []
    missing = sorted(set(durables) - set(rec.backlog))
    if missing:
        busy.append(f"consumers not created yet: {missing}")
    pending = sum(1 for o in rec.orders if o.status not in FINAL | {"REQUIRES_ATTENTION"})
    if pending:
        busy.append(f"{pending} orders pending")
    active = sum(1 for s in rec.sagas if s.status in SAGA_ACTIVE)
    if active:
        busy.append(f"{active} sagas running")
    unsent = sum(1 for e in rec.events if not e.sent)
    if unsent:
        busy.append(f"{unsent} events unsent")
    lag = {d: n for d, n in rec.backlog.items() if n}
    if lag:
        busy.append(f"consumers behind: {lag}")
    if await_dispatch:
        done = {o.id for o in rec.orders if o.status in DONE}
        waiting = sum(1 for s in rec.shipments
                      if s.order_id in done and s.status not in DISPATCHED
                      and s.status != SHIPMENT_CANCELLED)
        if waiting:
            busy.append(f"{waiting} shipments not dispatched yet")
    return busy


def expected_durables(system: object) -> set[str]:
    """The durable consumers of the services `system` runs (its `processes`' names)."""
    names = {getattr(p, "name", "") for p in getattr(system, "processes", ())}
    return {d for n in names for d in SERVICE_DURABLES.get(n, ())}


async def _nats_state(bus: Bus) -> tuple[dict[str, int], int]:
    """Durable consumer -> unhandled events (pending + in flight), and dead letters."""
    backlog: dict[str, int] = {}
    for info in await bus.js.consumers_info(STREAM):
        durable = info.config.durable_name
        if durable:
            backlog[durable] = int(info.num_pending or 0) + int(info.num_ack_pending or 0)
    try:
        dead = int((await bus.js.stream_info(DLQ_STREAM)).state.messages)
    except NotFoundError:  # no dead-letter stream yet: nothing was dead-lettered
        dead = 0
    return backlog, dead


async def check_invariants(
    system: _HasState,
    *,
    stock_set: Mapping[str, int] | None = None,
    created: Collection[str] = (),
    expect_orders: int | None = None,
    timeout_s: float = 60.0,
    quiet_s: float = 1.5,
    await_dispatch: bool = True,
) -> InvariantReport:
    """Wait until `system` (anything with `data_dir` and `nats_url`: a System, a
    ServiceFactory) has settled, then judge its records. Never raises for a violation:
    call `assert_ok()` on the report."""
    t0 = time.monotonic()
    deadline = t0 + timeout_s
    bus = await Bus.connect(system.nats_url, name="invariant-check", connect_for_s=timeout_s,
                            auth=nats_auth())
    report = InvariantReport()
    server_url = server_url_of(system)
    durables = expected_durables(system)
    try:
        stable: Records | None = None
        stable_since = 0.0
        while True:
            rec = await asyncio.to_thread(read_records, system.data_dir, server_url)
            try:
                backlog, dead = await asyncio.wait_for(_nats_state(bus), _NATS_TIMEOUT_S)
                nats_busy = []
            except Exception as err:  # NATS restarting or reconnecting: ask again
                backlog, dead, nats_busy = {}, 0, [f"NATS not answering: {err!r}"]
            rec = dataclasses.replace(rec, backlog=backlog, dead_letters=dead)
            busy = nats_busy + busy_reasons(rec, await_dispatch=await_dispatch,
                                            durables=[] if nats_busy else durables)
            now = time.monotonic()
            if busy:
                stable = None
            elif stable is None or rec != stable:
                stable, stable_since = rec, now
            elif now - stable_since >= quiet_s:
                break
            if now >= deadline:
                report.violations.append(f"not settled after {timeout_s:.0f} s: "
                                         f"{'; '.join(busy) or 'records still changing'}")
                break
            await asyncio.sleep(_POLL_S)
    finally:
        with contextlib.suppress(Exception):
            await bus.close()
    report.records = rec
    report.waited_s = time.monotonic() - t0
    report.violations += violations(rec, stock_set=stock_set, created=created,
                                    expect_orders=expect_orders)
    return report
