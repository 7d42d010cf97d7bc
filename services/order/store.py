"""OrderStore: every SQL statement of the order service (orders, sagas, saga history).

A saga row carries a `version` (bumped by every change: optimistic concurrency between the
driving coroutine, event handlers and cancels) and a lease (`owner`, `lease_until`) so two
order instances sharing the file never drive the same saga at once. Taking a lease bumps
the version too, which fences off a previous owner's late writes.
"""

from __future__ import annotations

import dataclasses
import json
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiosqlite
from google.protobuf.message import Message
from shop.order.v1 import order_pb2

from services.common import events
from services.common.db import Database, Tx
from services.common.errors import NotFound
from services.common.migrate import upgrade_table
from services.order.convert import STATUS_BY_VALUE, order_pb, set_timestamp
from services.order.domain import (
    Line,
    Order,
    OrderStatus,
    Refusal,
    SagaState,
    SagaStatus,
    Step,
    retry_attention,
    status_while_running,
)

SOURCE = "order"

SAGAS_TABLE = """
CREATE TABLE IF NOT EXISTS sagas (
    order_id TEXT PRIMARY KEY,
    step TEXT NOT NULL,
    status TEXT NOT NULL,
    attempt INTEGER NOT NULL DEFAULT 0,
    charged INTEGER NOT NULL DEFAULT 0,
    cancel_requested INTEGER NOT NULL DEFAULT 0,
    reason TEXT NOT NULL DEFAULT '',
    card_token TEXT NOT NULL DEFAULT '',
    version INTEGER NOT NULL DEFAULT 0,
    owner TEXT NOT NULL DEFAULT '',
    lease_until REAL NOT NULL DEFAULT 0,
    updated_at REAL NOT NULL,
    committed INTEGER NOT NULL DEFAULT 0,
    uncertain INTEGER NOT NULL DEFAULT 0,
    waits INTEGER NOT NULL DEFAULT 0,
    refusal TEXT NOT NULL DEFAULT ''
)"""

SCHEMA = """
CREATE TABLE IF NOT EXISTS orders (
    id TEXT PRIMARY KEY,
    user_id TEXT NOT NULL,
    items TEXT NOT NULL,                -- JSON [[product_id, quantity, unit_price_cents], ...]
    total_cents INTEGER NOT NULL,
    currency TEXT NOT NULL,
    status TEXT NOT NULL,
    cancel_reason TEXT NOT NULL DEFAULT '',
    tracking_number TEXT NOT NULL DEFAULT '',
    from_cart INTEGER NOT NULL DEFAULT 0,
    idempotency_key TEXT,               -- NULL when the client sent none
    create_time REAL NOT NULL,
    update_time REAL NOT NULL
);
CREATE UNIQUE INDEX IF NOT EXISTS orders_idempotency
    ON orders (user_id, idempotency_key) WHERE idempotency_key IS NOT NULL;
CREATE INDEX IF NOT EXISTS orders_by_user ON orders (user_id, create_time DESC, id DESC);
""" + SAGAS_TABLE + """;
CREATE INDEX IF NOT EXISTS sagas_active ON sagas (status)
    WHERE status IN ('running', 'compensating');
CREATE TABLE IF NOT EXISTS saga_history (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    order_id TEXT NOT NULL,
    step TEXT NOT NULL,
    outcome TEXT NOT NULL,
    attempt INTEGER NOT NULL,
    time REAL NOT NULL,
    error TEXT NOT NULL DEFAULT ''
);
CREATE INDEX IF NOT EXISTS saga_history_by_order ON saga_history (order_id, id);
"""

_ORDER_COLS = ("id, user_id, items, total_cents, currency, status, cancel_reason, "
               "tracking_number, from_cart, idempotency_key, create_time, update_time")
_SAGA_COLS = ("order_id, step, status, attempt, charged, cancel_requested, reason, card_token, "
              "version, owner, lease_until, committed, uncertain, waits, refusal")
# The columns a transition writes (write_saga, write_saga_sync, record), in this order.
_SAGA_SET = ("step = ?, status = ?, attempt = ?, charged = ?, cancel_requested = ?, reason = ?,"
             " card_token = ?, committed = ?, uncertain = ?, waits = ?, refusal = ?,"
             " version = version + 1, updated_at = ?")


def _saga_values(s: SagaState) -> list[object]:
    return [s.step.value, s.status.value, s.attempt, int(s.charged), int(s.cancel_requested),
            s.reason, s.card_token, int(s.committed), int(s.uncertain), s.waits,
            s.refusal.value, time.time()]


def upgrade(path: str | Path) -> None:
    """A file from before the cancellation saga: sagas gain committed, uncertain, waits
    and refusal. Run before Database.open."""
    upgrade_table(path, "sagas", SAGAS_TABLE, "refusal")
_ACTIVE = f"('{SagaStatus.RUNNING.value}', '{SagaStatus.COMPENSATING.value}')"


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


def _order(row: aiosqlite.Row) -> Order:
    return Order(
        id=row["id"], user_id=row["user_id"],
        items=tuple(Line(p, int(q), int(c)) for p, q, c in json.loads(row["items"])),
        total_cents=int(row["total_cents"]), currency=row["currency"],
        status=OrderStatus(row["status"]), cancel_reason=row["cancel_reason"],
        create_time=float(row["create_time"]), update_time=float(row["update_time"]),
        tracking_number=row["tracking_number"], from_cart=bool(row["from_cart"]),
        idempotency_key=row["idempotency_key"] or "",
    )


def _order_pb(row: Sequence[Any]) -> order_pb2.Order:
    """An orders row (the _ORDER_COLS, in order) as the message order_pb makes of it."""
    (id_, user_id, items, total_cents, currency, status, cancel_reason, tracking_number,
     from_cart, _key, create_time, update_time) = row
    msg = order_pb2.Order(id=id_, user_id=user_id, total_cents=total_cents, currency=currency,
                          status=STATUS_BY_VALUE[status], cancel_reason=cancel_reason,
                          tracking_number=tracking_number, from_cart=bool(from_cart))
    add = msg.items.add
    for product_id, quantity, unit_price_cents in json.loads(items):
        add(product_id=product_id, quantity=quantity, unit_price_cents=unit_price_cents)
    set_timestamp(msg.create_time, float(create_time))
    set_timestamp(msg.update_time, float(update_time))
    return msg


def _saga(row: aiosqlite.Row) -> SagaState:
    return SagaState(
        order_id=row["order_id"], step=Step(row["step"]), status=SagaStatus(row["status"]),
        attempt=int(row["attempt"]), charged=bool(row["charged"]),
        cancel_requested=bool(row["cancel_requested"]), reason=row["reason"],
        card_token=row["card_token"], version=int(row["version"]),
        committed=bool(row["committed"]), uncertain=bool(row["uncertain"]),
        waits=int(row["waits"]), refusal=Refusal(row["refusal"]),
    )


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


# --- statements on a caller's connection (also used by event handlers) ----------------------


async def saga_of(conn: aiosqlite.Connection, order_id: str) -> SagaState | None:
    cur = await conn.execute(f"SELECT {_SAGA_COLS} FROM sagas WHERE order_id = ?", (order_id,))
    row = await cur.fetchone()
    return _saga(row) if row else None


async def write_saga(conn: aiosqlite.Connection, old: SagaState, new: SagaState, *,
                     owner: str | None = None, lease_until: float = 0.0) -> bool:
    """Replace the saga if nobody changed it since `old` (and, with `owner`, if we still
    hold its lease); False on a conflict."""
    sql = f"UPDATE sagas SET {_SAGA_SET}"
    args: list[object] = _saga_values(new)
    if owner is not None:
        sql += ", owner = ?, lease_until = ?"
        args += [owner, lease_until]
    sql += " WHERE order_id = ? AND version = ?"
    args += [old.order_id, old.version]
    cur = await conn.execute(sql, args)
    return cur.rowcount == 1


async def add_history(conn: aiosqlite.Connection, order_id: str, entry: HistoryEntry) -> None:
    await conn.execute(
        "INSERT INTO saga_history (order_id, step, outcome, attempt, time, error)"
        " VALUES (?, ?, ?, ?, ?, ?)",
        (order_id, entry.step, entry.outcome, entry.attempt, entry.time, entry.error[:500]))


async def order_of(conn: aiosqlite.Connection, order_id: str) -> Order | None:
    cur = await conn.execute(f"SELECT {_ORDER_COLS} FROM orders WHERE id = ?", (order_id,))
    row = await cur.fetchone()
    return _order(row) if row else None


# --- the same on a write function's Tx (the connection's thread: event handlers) -----------


def saga_of_sync(tx: Tx, order_id: str) -> SagaState | None:
    row = tx.one(f"SELECT {_SAGA_COLS} FROM sagas WHERE order_id = ?", (order_id,))
    return _saga(row) if row else None


def write_saga_sync(tx: Tx, old: SagaState, new: SagaState) -> bool:
    """write_saga without a lease change: False when the saga changed since `old`."""
    cur = tx.execute(f"UPDATE sagas SET {_SAGA_SET} WHERE order_id = ? AND version = ?",
                     [*_saga_values(new), old.order_id, old.version])
    return cur.rowcount == 1


def add_history_sync(tx: Tx, order_id: str, entry: HistoryEntry) -> None:
    tx.execute(
        "INSERT INTO saga_history (order_id, step, outcome, attempt, time, error)"
        " VALUES (?, ?, ?, ?, ?, ?)",
        (order_id, entry.step, entry.outcome, entry.attempt, entry.time, entry.error[:500]))


def mark_shipped_sync(tx: Tx, order_id: str, tracking: str, *, status: bool) -> None:
    """Record the order's tracking number and, with `status`, CONFIRMED -> SHIPPED. A
    CANCELLED order is left alone (its shipment was cancelled: nothing was dispatched)."""
    tx.execute(
        "UPDATE orders SET tracking_number = ?, update_time = ?,"
        " status = CASE WHEN ? AND status = ? THEN ? ELSE status END"
        " WHERE id = ? AND status != ?",
        (tracking, time.time(), int(status), OrderStatus.CONFIRMED.value,
         OrderStatus.SHIPPED.value, order_id, OrderStatus.CANCELLED.value))


# --- the repository ------------------------------------------------------------------------


class OrderStore:
    def __init__(self, db: Database) -> None:
        self.db = db

    async def create(self, order: Order, saga: SagaState, *, owner: str,
                     lease_s: float) -> tuple[Order, bool]:
        """Order PENDING + its saga (leased to `owner`) + order.created, one transaction.

        Returns (order, True), or (the existing order, False) when the user already has an
        order with this idempotency key."""
        items = json.dumps([[ln.product_id, ln.quantity, ln.unit_price_cents]
                            for ln in order.items])
        created = order_pb2.OrderCreated(order=order_pb(order))

        def run(tx: Tx) -> tuple[Order, bool]:
            cur = tx.execute(
                f"INSERT OR IGNORE INTO orders ({_ORDER_COLS})"
                " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (order.id, order.user_id, items, order.total_cents, order.currency,
                 order.status.value, order.cancel_reason, order.tracking_number,
                 int(order.from_cart), order.idempotency_key or None, order.create_time,
                 order.update_time))
            if cur.rowcount != 1:
                row = tx.one(f"SELECT {_ORDER_COLS} FROM orders"
                             " WHERE user_id = ? AND idempotency_key = ?",
                             (order.user_id, order.idempotency_key))
                if row is None:
                    raise RuntimeError(f"order {order.id} was neither inserted nor found")
                return _order(row), False
            now = time.time()
            tx.execute(
                "INSERT INTO sagas (order_id, step, status, card_token, owner, lease_until,"
                " updated_at) VALUES (?, ?, ?, ?, ?, ?, ?)",
                (order.id, saga.step.value, saga.status.value, saga.card_token, owner,
                 now + lease_s, now))
            tx.enqueue(events.ORDER_CREATED, created, source=SOURCE, aggregate_id=order.id)
            return order, True

        return await self.db.write(run)

    async def _by_key(self, conn: aiosqlite.Connection, user_id: str, key: str) -> Order | None:
        cur = await conn.execute(
            f"SELECT {_ORDER_COLS} FROM orders WHERE user_id = ? AND idempotency_key = ?",
            (user_id, key))
        row = await cur.fetchone()
        return _order(row) if row else None

    async def by_key(self, user_id: str, key: str) -> Order | None:
        def run(tx: Tx) -> Order | None:
            row = tx.one(f"SELECT {_ORDER_COLS} FROM orders"
                         " WHERE user_id = ? AND idempotency_key = ?", (user_id, key))
            return _order(row) if row else None

        return await self.db.read(run)

    async def get(self, order_id: str) -> Order | None:
        def run(tx: Tx) -> Order | None:
            row = tx.one(f"SELECT {_ORDER_COLS} FROM orders WHERE id = ?", (order_id,))
            return _order(row) if row else None

        return await self.db.read(run)

    async def get_with_saga(self, order_id: str) -> tuple[Order, SagaState] | None:
        async with self.db.reader() as conn:
            order = await order_of(conn, order_id)
            saga = await saga_of(conn, order_id)
        return (order, saga) if order is not None and saga is not None else None

    async def page_for_user(self, user_id: str, after: tuple[float, str] | None,
                            limit: int) -> tuple[list[order_pb2.Order], tuple[float, str] | None]:
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

        # A bounded page along orders_by_user (no sort step): read at once on the read
        # connection. Rows go straight to messages (no domain Order on the way: a
        # read-only listing has no rule to apply, and each conversion costs).
        def run(tx: Tx) -> tuple[list[order_pb2.Order], tuple[float, str] | None]:
            rows = tx.all(sql, args)
            more = None
            if len(rows) > limit:
                rows = rows[:limit]
                more = (float(rows[-1]["create_time"]), str(rows[-1]["id"]))
            return [_order_pb(r) for r in rows], more

        return await self.db.read_now(run)

    async def saga(self, order_id: str) -> tuple[SagaState, Lease] | None:
        row = await self.db.read(lambda tx: tx.one(
            f"SELECT {_SAGA_COLS} FROM sagas WHERE order_id = ?", (order_id,)))
        if row is None:
            return None
        return _saga(row), Lease(row["owner"], float(row["lease_until"]))

    async def history(self, order_id: str) -> list[HistoryEntry]:
        async with self.db.reader() as conn:
            cur = await conn.execute(
                "SELECT step, outcome, attempt, time, error FROM saga_history"
                " WHERE order_id = ? ORDER BY id", (order_id,))
            rows = await cur.fetchall()
        return [HistoryEntry(r["step"], r["outcome"], int(r["attempt"]), float(r["time"]),
                             r["error"]) for r in rows]

    async def acquire(self, order_id: str, owner: str, lease_s: float) -> SagaState | None:
        """Take the lease of an unfinished saga that is ours or whose lease ran out."""
        now = time.time()

        def run(tx: Tx) -> SagaState | None:
            cur = tx.execute(
                "UPDATE sagas SET owner = ?, lease_until = ?, version = version + 1"
                f" WHERE order_id = ? AND status IN {_ACTIVE}"
                " AND (owner = ? OR owner = '' OR lease_until < ?)",
                (owner, now + lease_s, order_id, owner, now))
            if cur.rowcount != 1:
                return None
            row = tx.one(f"SELECT {_SAGA_COLS} FROM sagas WHERE order_id = ?", (order_id,))
            return _saga(row) if row else None

        return await self.db.write(run)

    async def renew(self, owner: str, order_ids: Sequence[str], lease_s: float) -> None:
        """Heartbeat: extend the leases we still hold."""
        if not order_ids:
            return
        marks = ",".join("?" * len(order_ids))
        async with self.db.transaction() as conn:
            await conn.execute(
                f"UPDATE sagas SET lease_until = ? WHERE owner = ? AND order_id IN ({marks})",
                (time.time() + lease_s, owner, *order_ids))

    async def resumable(self, owner: str, limit: int = 500) -> list[str]:
        """Unfinished sagas that are ours (a previous life of this instance) or unowned."""
        async with self.db.reader() as conn:
            cur = await conn.execute(
                f"SELECT order_id FROM sagas WHERE status IN {_ACTIVE}"
                " AND (owner = ? OR owner = '' OR lease_until < ?) LIMIT ?",
                (owner, time.time(), limit))
            rows = await cur.fetchall()
        return [r[0] for r in rows]

    async def record(self, order: Order, old: SagaState, new: SagaState,
                     entry: HistoryEntry, *, owner: str, lease_s: float,
                     final_status: OrderStatus | None) -> Order | None:
        """One saga transition in one transaction: history row, saga row and, when the saga
        ended, the order's status and its event. None when the saga changed under us (the
        history row is kept: the attempt did happen)."""
        now = time.time()
        ended: Order | None = None
        payload: tuple[str, Message] | None = None
        if final_status is not None:
            cancel_reason = new.reason if final_status in (
                OrderStatus.CANCELLED, OrderStatus.REQUIRES_ATTENTION) else ""
            ended = dataclasses.replace(order, status=final_status,
                                        cancel_reason=cancel_reason, update_time=now)
            payload = _final_event(ended, new)

        def run(tx: Tx) -> Order | None:
            tx.execute(
                "INSERT INTO saga_history (order_id, step, outcome, attempt, time, error)"
                " VALUES (?, ?, ?, ?, ?, ?)",
                (order.id, entry.step, entry.outcome, entry.attempt, entry.time,
                 entry.error[:500]))
            cur = tx.execute(
                f"UPDATE sagas SET {_SAGA_SET}, lease_until = ?"
                " WHERE order_id = ? AND version = ? AND owner = ?",
                [*_saga_values(new), now + lease_s, order.id, old.version, owner])
            if cur.rowcount != 1:
                return None
            if ended is None:
                return order
            tx.execute(
                "UPDATE orders SET status = ?, cancel_reason = ?, update_time = ? WHERE id = ?",
                (ended.status.value, ended.cancel_reason, now, order.id))
            if payload is not None:
                tx.enqueue(payload[0], payload[1], source=SOURCE, aggregate_id=order.id)
            return ended

        return await self.db.write(run)

    async def replace_saga(self, old: SagaState, new: SagaState, entry: HistoryEntry, *,
                           owner: str | None = None, lease_s: float = 0.0) -> bool:
        """A change made outside the driving coroutine (a cancel), with its history row.
        False also once the order shipped (a shipment recorded since the caller's read)."""
        async with self.db.transaction() as conn:
            shipped = await order_of(conn, old.order_id)
            if shipped is not None and shipped.status is OrderStatus.SHIPPED:
                return False
            ok = await write_saga(conn, old, new, owner=owner,
                                  lease_until=time.time() + lease_s)
            if ok:
                await add_history(conn, old.order_id, entry)
            return ok

    async def retry(self, order_id: str, *, owner: str,
                    lease_s: float) -> tuple[Order, SagaState] | None:
        """An operator's retry: a saga in REQUIRES_ATTENTION runs again from the step that
        gave up (leased to `owner`), the order back to its status while it runs, with a
        history row, in one transaction. None when a retry is already under way (a
        repeat: nothing to change). NotFound for an unknown order, FailedPrecondition for
        a saga in any other state."""
        now = time.time()

        def run(tx: Tx) -> tuple[Order, SagaState] | None:
            row = tx.one(f"SELECT {_ORDER_COLS} FROM orders WHERE id = ?", (order_id,))
            state = saga_of_sync(tx, order_id)
            if row is None or state is None:
                raise NotFound(f"order {order_id} not found")
            if state.active and tx.one("SELECT 1 FROM saga_history WHERE order_id = ?"
                                       " AND step = 'retry' LIMIT 1", (order_id,)):
                return None
            new = retry_attention(state)
            status = status_while_running(new)
            tx.execute(f"UPDATE sagas SET {_SAGA_SET}, owner = ?, lease_until = ?"
                       " WHERE order_id = ? AND version = ?",
                       [*_saga_values(new), owner, now + lease_s, order_id, state.version])
            tx.execute("UPDATE orders SET status = ?, cancel_reason = '', update_time = ?"
                       " WHERE id = ?", (status.value, now, order_id))
            add_history_sync(tx, order_id, HistoryEntry(
                "retry", "requested", 1, now, f"resumes {new.step.value}"))
            order = dataclasses.replace(_order(row), status=status, cancel_reason="",
                                        update_time=now)
            return order, dataclasses.replace(new, version=state.version + 1)

        return await self.db.write(run)
