"""All SQL of the order service (orders, sagas, saga history), behind `OrderRepository`.

A saga row carries a `version` (bumped by every change: optimistic concurrency between the
driving coroutine, event handlers and cancels) and a lease (`owner`, `lease_until`) so two
order instances sharing the database never drive the same saga at once. Taking a lease
bumps the version too, which fences off a previous owner's late writes.

Each method is one unit of work (`storage.write` / `storage.read`); the module functions
taking a `tx` are the steps the event handlers run inside the consumer's unit of work. The
saga UPDATE and the history INSERT are written once (`_update_saga`, `_add_history`).
"""

from __future__ import annotations

import dataclasses
import json
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

from google.protobuf.message import Message
from shop.order.v1 import order_pb2

from services.common import events
from services.common.errors import NotFound
from services.common.storage import Row, Storage, Tx
from services.order.convert import STATUS_BY_VALUE, order_pb, set_timestamp
from services.order.domain import (
    Line,
    Order,
    OrderStatus,
    Outcome,
    Refusal,
    SagaState,
    SagaStatus,
    Step,
    advance,
    retry_attention,
    status_while_running,
)

SOURCE = "order"

_ORDER_COLS = ("id, user_id, items, total_cents, currency, status, cancel_reason, "
               "tracking_number, from_cart, idempotency_key, create_time, update_time")
_SAGA_COLS = ("order_id, step, status, attempt, charged, cancel_requested, reason, card_token, "
              "version, owner, lease_until, committed, uncertain, waits, refusal")
# The columns every saga transition writes, in `_saga_values` order.
_SAGA_SET = ("step = ?, status = ?, attempt = ?, charged = ?, cancel_requested = ?, reason = ?,"
             " card_token = ?, committed = ?, uncertain = ?, waits = ?, refusal = ?,"
             " version = version + 1, updated_at = ?")
_ACTIVE = f"('{SagaStatus.RUNNING.value}', '{SagaStatus.COMPENSATING.value}')"
_SELECT_SAGA = f"SELECT {_SAGA_COLS} FROM sagas WHERE order_id = ?"
_SELECT_ORDER = f"SELECT {_ORDER_COLS} FROM orders WHERE id = ?"
_SELECT_BY_KEY = f"SELECT {_ORDER_COLS} FROM orders WHERE user_id = ? AND idempotency_key = ?"


@dataclass(frozen=True)
class HistoryEntry:
    step: str
    outcome: str
    attempt: int
    time: float
    error: str = ""


@dataclass(frozen=True)
class Lease:
    owner: str
    until: float


Page = tuple[list[order_pb2.Order], tuple[float, str] | None]


class OrderRepository(Protocol):
    """What the servicer and the saga know of the order service's data."""

    async def create(self, order: Order, saga: SagaState, *, owner: str,
                     lease_s: float) -> tuple[Order, bool]: ...
    async def by_key(self, user_id: str, key: str) -> Order | None: ...
    async def get(self, order_id: str) -> Order | None: ...
    async def page_for_user(self, user_id: str, after: tuple[float, str] | None,
                            limit: int) -> Page: ...
    async def saga(self, order_id: str) -> tuple[SagaState, Lease] | None: ...
    async def history(self, order_id: str) -> list[HistoryEntry]: ...
    async def acquire(self, order_id: str, owner: str, lease_s: float) -> SagaState | None: ...
    async def renew(self, owner: str, order_ids: Sequence[str], lease_s: float) -> None: ...
    async def resumable(self, owner: str, limit: int = 500) -> list[str]: ...
    async def record(self, order: Order, old: SagaState, new: SagaState,
                     entries: Sequence[HistoryEntry], *, owner: str, lease_s: float,
                     final_status: OrderStatus | None) -> Order | None: ...
    async def replace_saga(self, old: SagaState, new: SagaState, entry: HistoryEntry, *,
                           owner: str | None = None, lease_s: float = 0.0) -> bool: ...
    async def retry(self, order_id: str, *, owner: str,
                    lease_s: float) -> tuple[Order, SagaState] | None: ...


# --- rows ---------------------------------------------------------------------------------


def _order(row: Row) -> Order:
    return Order(
        id=row["id"], user_id=row["user_id"],
        items=tuple(Line(p, int(q), int(c)) for p, q, c in json.loads(row["items"])),
        total_cents=int(row["total_cents"]), currency=row["currency"],
        status=OrderStatus(row["status"]), cancel_reason=row["cancel_reason"],
        create_time=float(row["create_time"]), update_time=float(row["update_time"]),
        tracking_number=row["tracking_number"], from_cart=bool(row["from_cart"]),
        idempotency_key=row["idempotency_key"] or "",
    )


def _order_pb(row: Row) -> order_pb2.Order:
    """An orders row (the _ORDER_COLS, in order) as the message order_pb makes of it."""
    (id_, user_id, items, total_cents, currency, status, cancel_reason, tracking_number,
     from_cart, _key, create_time, update_time) = tuple(row)
    msg = order_pb2.Order(id=id_, user_id=user_id, total_cents=total_cents, currency=currency,
                          status=STATUS_BY_VALUE[status], cancel_reason=cancel_reason,
                          tracking_number=tracking_number, from_cart=bool(from_cart))
    add = msg.items.add
    for product_id, quantity, unit_price_cents in json.loads(items):
        add(product_id=product_id, quantity=quantity, unit_price_cents=unit_price_cents)
    set_timestamp(msg.create_time, float(create_time))
    set_timestamp(msg.update_time, float(update_time))
    return msg


def _saga(row: Row) -> SagaState:
    return SagaState(
        order_id=row["order_id"], step=Step(row["step"]), status=SagaStatus(row["status"]),
        attempt=int(row["attempt"]), charged=bool(row["charged"]),
        cancel_requested=bool(row["cancel_requested"]), reason=row["reason"],
        card_token=row["card_token"], version=int(row["version"]),
        committed=bool(row["committed"]), uncertain=bool(row["uncertain"]),
        waits=int(row["waits"]), refusal=Refusal(row["refusal"]),
    )


def _saga_values(s: SagaState) -> list[object]:
    return [s.step.value, s.status.value, s.attempt, int(s.charged), int(s.cancel_requested),
            s.reason, s.card_token, int(s.committed), int(s.uncertain), s.waits,
            s.refusal.value, time.time()]


def _final_event(order: Order, saga: SagaState) -> tuple[str, Message] | None:
    """The event an ended saga publishes; None for SHIPPED (shipping published it)."""
    if order.status is OrderStatus.SHIPPED:
        return None
    pb = order_pb(order)
    if order.status is OrderStatus.CONFIRMED:
        return events.ORDER_CONFIRMED, order_pb2.OrderConfirmed(order=pb)
    if order.status is OrderStatus.CANCELLED:
        return events.ORDER_CANCELLED, order_pb2.OrderCancelled(order=pb, reason=saga.reason)
    return events.ORDER_REQUIRES_ATTENTION, order_pb2.OrderRequiresAttention(
        order=pb, step=saga.step.value, error=saga.reason)


# --- statements inside a unit of work -----------------------------------------------------


async def _get_saga(tx: Tx, order_id: str) -> SagaState | None:
    row = await tx.fetchrow(_SELECT_SAGA, (order_id,))
    return _saga(row) if row else None


async def _get_order(tx: Tx, order_id: str) -> Order | None:
    row = await tx.fetchrow(_SELECT_ORDER, (order_id,))
    return _order(row) if row else None


async def _update_saga(tx: Tx, new: SagaState, *, version: int, held_by: str | None = None,
                       owner: str | None = None, lease_until: float | None = None) -> bool:
    """The one saga UPDATE: `new`'s columns (version + 1) if the row is still at `version`
    (and, with `held_by`, still leased to it); `owner` / `lease_until` move the lease too.
    False on a conflict: the saga changed since it was read."""
    sql = f"UPDATE sagas SET {_SAGA_SET}"
    args = _saga_values(new)
    if owner is not None:
        sql += ", owner = ?"
        args.append(owner)
    if lease_until is not None:
        sql += ", lease_until = ?"
        args.append(lease_until)
    sql += " WHERE order_id = ? AND version = ?"
    args += [new.order_id, version]
    if held_by is not None:
        sql += " AND owner = ?"
        args.append(held_by)
    return await tx.run(sql, args) == 1


async def _add_history(tx: Tx, order_id: str, entry: HistoryEntry) -> None:
    await tx.run(
        "INSERT INTO saga_history (order_id, step, outcome, attempt, time, error)"
        " VALUES (?, ?, ?, ?, ?, ?)",
        (order_id, entry.step, entry.outcome, entry.attempt, entry.time, entry.error[:500]))


async def reconcile_charge(tx: Tx, order_id: str, *, charged: bool, error: str,
                           by: str) -> bool:
    """A payment event (subject `by`): move a saga still at its charge step to the charge's
    real outcome; True if moved. A saga already past the charge (the usual case: the call answered
    first) is left alone."""
    state = await _get_saga(tx, order_id)
    if state is None or state.step is not Step.CHARGE or state.status is not SagaStatus.RUNNING:
        return False
    outcome = Outcome.SUCCEEDED if charged else Outcome.REFUSED
    kind = Refusal.NONE if charged else Refusal.DECLINED
    new = advance(state, outcome, error, refusal=kind).state
    if not await _update_saga(tx, new, version=state.version):
        return False
    await _add_history(tx, order_id, HistoryEntry(
        Step.CHARGE.value, "reconciled", state.attempt + 1, time.time(),
        f"{outcome.value} by {by}" + (f": {error}" if error else "")))
    return True


async def charge_settled(tx: Tx, order_id: str) -> bool:
    """True when a payment event can no longer move the saga: it is past its charge step
    for good (confirming, compensating or ended; a saga never returns to its charge). The
    usual case, since the Charge call answered before the event came. A saga still at
    reserve or charge, or one not found, is not settled."""
    state = await _get_saga(tx, order_id)
    if state is None:
        return False
    return state.status is not SagaStatus.RUNNING or \
        state.step not in (Step.RESERVE, Step.CHARGE)


async def record_shipment(tx: Tx, order_id: str, tracking: str) -> None:
    """order.shipped: the tracking number and CONFIRMED -> SHIPPED. While a saga runs again
    (a customer's cancel of a confirmed order) only the tracking number: that saga decides
    the status (its cancel_shipment is refused once dispatched, and it ends SHIPPED). A
    CANCELLED order is left alone (its shipment was cancelled: nothing was dispatched)."""
    saga = await _get_saga(tx, order_id)
    to = OrderStatus.SHIPPED if saga is None or not saga.active else OrderStatus.CONFIRMED
    await tx.run(
        "UPDATE orders SET tracking_number = ?, update_time = ?,"
        " status = CASE WHEN status = ? THEN ? ELSE status END"
        " WHERE id = ? AND status != ?",
        (tracking, time.time(), OrderStatus.CONFIRMED.value, to.value, order_id,
         OrderStatus.CANCELLED.value))


# --- the repository -----------------------------------------------------------------------


class OrderStore:
    def __init__(self, storage: Storage) -> None:
        self.storage = storage

    async def create(self, order: Order, saga: SagaState, *, owner: str,
                     lease_s: float) -> tuple[Order, bool]:
        """Order PENDING + its saga (leased to `owner`) + order.created, one transaction.

        Returns (order, True), or (the existing order, False) when the user already has an
        order with this idempotency key."""
        items = json.dumps([[ln.product_id, ln.quantity, ln.unit_price_cents]
                            for ln in order.items])
        created = order_pb2.OrderCreated(order=order_pb(order))

        async def run(tx: Tx) -> tuple[Order, bool]:
            inserted = await tx.run(
                f"INSERT INTO orders ({_ORDER_COLS})"
                " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT DO NOTHING",
                (order.id, order.user_id, items, order.total_cents, order.currency,
                 order.status.value, order.cancel_reason, order.tracking_number,
                 int(order.from_cart), order.idempotency_key or None, order.create_time,
                 order.update_time))
            if inserted != 1:
                row = await tx.fetchrow(_SELECT_BY_KEY, (order.user_id, order.idempotency_key))
                if row is None:
                    raise RuntimeError(f"order {order.id} was neither inserted nor found")
                return _order(row), False
            now = time.time()
            await tx.run(
                "INSERT INTO sagas (order_id, step, status, card_token, owner, lease_until,"
                " updated_at) VALUES (?, ?, ?, ?, ?, ?, ?)",
                (order.id, saga.step.value, saga.status.value, saga.card_token, owner,
                 now + lease_s, now))
            await tx.emit(events.ORDER_CREATED, created, source=SOURCE, aggregate_id=order.id)
            return order, True

        return await self.storage.write(run)

    async def by_key(self, user_id: str, key: str) -> Order | None:
        async def run(tx: Tx) -> Order | None:
            row = await tx.fetchrow(_SELECT_BY_KEY, (user_id, key))
            return _order(row) if row else None

        return await self.storage.read(run)

    async def get(self, order_id: str) -> Order | None:
        async def run(tx: Tx) -> Order | None:
            return await _get_order(tx, order_id)

        return await self.storage.read(run)

    async def page_for_user(self, user_id: str, after: tuple[float, str] | None,
                            limit: int) -> Page:
        """Up to `limit` of the user's orders as messages, newest first, and the
        (create_time, id) to continue after when more follow (else None); `after` is the
        (create_time, id) of the last order already seen."""
        sql = f"SELECT {_ORDER_COLS} FROM orders WHERE user_id = ?"
        args: list[object] = [user_id]
        if after is not None:
            sql += " AND (create_time < ? OR (create_time = ? AND id < ?))"
            args += [after[0], after[0], after[1]]
        sql += " ORDER BY create_time DESC, id DESC LIMIT ?"
        args.append(limit + 1)  # one more tells whether another page exists

        # A bounded page along orders_by_user (no sort step). Rows go straight to messages
        # (no domain Order on the way: a listing has no rule to apply, and each conversion
        # costs).
        async def run(tx: Tx) -> Page:
            rows = await tx.fetch(sql, args)
            more = None
            if len(rows) > limit:
                rows = rows[:limit]
                more = (float(rows[-1]["create_time"]), str(rows[-1]["id"]))
            return [_order_pb(r) for r in rows], more

        return await self.storage.read(run)

    async def saga(self, order_id: str) -> tuple[SagaState, Lease] | None:
        async def run(tx: Tx) -> tuple[SagaState, Lease] | None:
            row = await tx.fetchrow(_SELECT_SAGA, (order_id,))
            if row is None:
                return None
            return _saga(row), Lease(row["owner"], float(row["lease_until"]))

        return await self.storage.read(run)

    async def history(self, order_id: str) -> list[HistoryEntry]:
        async def run(tx: Tx) -> list[HistoryEntry]:
            return [HistoryEntry(r["step"], r["outcome"], int(r["attempt"]), float(r["time"]),
                                 r["error"]) for r in await tx.fetch(
                "SELECT step, outcome, attempt, time, error FROM saga_history"
                " WHERE order_id = ? ORDER BY id", (order_id,))]

        return await self.storage.read(run)

    async def acquire(self, order_id: str, owner: str, lease_s: float) -> SagaState | None:
        """Take the lease of an unfinished saga that is ours or whose lease ran out."""
        now = time.time()

        async def run(tx: Tx) -> SagaState | None:
            row = await tx.fetchrow(
                "UPDATE sagas SET owner = ?, lease_until = ?, version = version + 1"
                f" WHERE order_id = ? AND status IN {_ACTIVE}"
                f" AND (owner = ? OR owner = '' OR lease_until < ?) RETURNING {_SAGA_COLS}",
                (owner, now + lease_s, order_id, owner, now))
            return _saga(row) if row else None

        return await self.storage.write(run)

    async def renew(self, owner: str, order_ids: Sequence[str], lease_s: float) -> None:
        """Heartbeat: extend the leases we still hold."""
        if not order_ids:
            return
        until = time.time() + lease_s

        async def run(tx: Tx) -> None:
            await tx.run_many("UPDATE sagas SET lease_until = ? WHERE owner = ? AND order_id = ?",
                              [(until, owner, order_id) for order_id in order_ids])

        await self.storage.write(run)

    async def resumable(self, owner: str, limit: int = 500) -> list[str]:
        """Unfinished sagas that are ours (a previous life of this instance) or unowned."""
        async def run(tx: Tx) -> list[str]:
            return [str(r[0]) for r in await tx.fetch(
                f"SELECT order_id FROM sagas WHERE status IN {_ACTIVE}"
                " AND (owner = ? OR owner = '' OR lease_until < ?) LIMIT ?",
                (owner, time.time(), limit))]

        return await self.storage.read(run)

    async def record(self, order: Order, old: SagaState, new: SagaState,
                     entries: Sequence[HistoryEntry], *, owner: str, lease_s: float,
                     final_status: OrderStatus | None) -> Order | None:
        """The saga from `old` (as persisted) to `new` in one transaction: its history rows
        (the attempts since `old`), the saga row (fenced by the version and the lease) and,
        when the saga ended, the order's status and its event. None when the saga changed
        under us (the history rows are kept: the attempts did happen)."""
        now = time.time()
        ended: Order | None = None
        payload: tuple[str, Message] | None = None
        if final_status is not None:
            cancel_reason = new.reason if final_status in (
                OrderStatus.CANCELLED, OrderStatus.REQUIRES_ATTENTION) else ""
            ended = dataclasses.replace(order, status=final_status,
                                        cancel_reason=cancel_reason, update_time=now)
            payload = _final_event(ended, new)

        async def run(tx: Tx) -> Order | None:
            for entry in entries:
                await _add_history(tx, order.id, entry)
            if not await _update_saga(tx, new, version=old.version, held_by=owner,
                                      lease_until=now + lease_s):
                return None
            if ended is None:
                return order
            await tx.run(
                "UPDATE orders SET status = ?, cancel_reason = ?, update_time = ? WHERE id = ?",
                (ended.status.value, ended.cancel_reason, now, order.id))
            if payload is not None:
                await tx.emit(payload[0], payload[1], source=SOURCE, aggregate_id=order.id)
            return ended

        return await self.storage.write(run)

    async def replace_saga(self, old: SagaState, new: SagaState, entry: HistoryEntry, *,
                           owner: str | None = None, lease_s: float = 0.0) -> bool:
        """A change made outside the driving coroutine (a cancel), with its history row;
        with `owner`, the lease is taken too. False when the saga changed since `old`, and
        once the order shipped (a shipment recorded since the caller's read)."""
        async def run(tx: Tx) -> bool:
            current = await _get_order(tx, old.order_id)
            if current is not None and current.status is OrderStatus.SHIPPED:
                return False
            lease_until = None if owner is None else time.time() + lease_s
            if not await _update_saga(tx, new, version=old.version, owner=owner,
                                      lease_until=lease_until):
                return False
            await _add_history(tx, old.order_id, entry)
            return True

        return await self.storage.write(run)

    async def retry(self, order_id: str, *, owner: str,
                    lease_s: float) -> tuple[Order, SagaState] | None:
        """An operator's retry: a saga in REQUIRES_ATTENTION runs again from the step that
        gave up (leased to `owner`), the order back to its status while it runs, with a
        history row, in one transaction. None when a retry is already under way (a
        repeat: nothing to change). NotFound for an unknown order, FailedPrecondition for
        a saga in any other state."""
        now = time.time()

        async def run(tx: Tx) -> tuple[Order, SagaState] | None:
            order = await _get_order(tx, order_id)
            state = await _get_saga(tx, order_id)
            if order is None or state is None:
                raise NotFound(f"order {order_id} not found")
            if state.active and await tx.fetchrow(
                    "SELECT 1 FROM saga_history WHERE order_id = ? AND step = 'retry' LIMIT 1",
                    (order_id,)):
                return None
            new = retry_attention(state)
            status = status_while_running(new)
            if not await _update_saga(tx, new, version=state.version, owner=owner,
                                      lease_until=now + lease_s):
                raise RuntimeError(f"saga {order_id} changed inside its own transaction")
            await tx.run("UPDATE orders SET status = ?, cancel_reason = '', update_time = ?"
                         " WHERE id = ?", (status.value, now, order_id))
            await _add_history(tx, order_id, HistoryEntry(
                "retry", "requested", 1, now, f"resumes {new.step.value}"))
            return (dataclasses.replace(order, status=status, cancel_reason="",
                                        update_time=now),
                    dataclasses.replace(new, version=state.version + 1))

        return await self.storage.write(run)
