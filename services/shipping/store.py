"""All SQL of the shipping service: shipments, remembered cancellations, the dispatcher's
queries. Every change and its event (order.shipped) commit together (outbox)."""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import aiosqlite
from shop.shipping.v1 import shipping_pb2

from services.common import context, events
from services.common.db import Database, Tx
from services.common.migrate import upgrade_table
from services.shipping import domain
from services.shipping.convert import to_proto
from services.shipping.domain import CancelEffect, Shipment, Status

SOURCE = "shipping"

# order_id as primary key: one shipment per order however often order.confirmed arrives.
SHIPMENTS_TABLE = """
CREATE TABLE IF NOT EXISTS shipments (
    order_id TEXT PRIMARY KEY,
    user_id TEXT NOT NULL,
    tracking_number TEXT NOT NULL UNIQUE,
    status TEXT NOT NULL CHECK (status IN
        ('LABEL_CREATED', 'PENDING', 'SHIPPED', 'DELIVERED', 'CANCELLED')),
    carrier TEXT NOT NULL,
    created_at REAL NOT NULL,
    dispatch_at REAL NOT NULL DEFAULT 0,
    -- The request id of the order.confirmed that made it: order.shipped carries it on.
    request_id TEXT NOT NULL DEFAULT ''
) WITHOUT ROWID"""

SCHEMA = SHIPMENTS_TABLE + """;
CREATE INDEX IF NOT EXISTS shipments_due ON shipments (dispatch_at) WHERE status = 'PENDING';
-- A cancellation that came before the order's order.confirmed: that event then creates
-- the shipment CANCELLED.
CREATE TABLE IF NOT EXISTS cancellations (
    order_id TEXT PRIMARY KEY,
    cancelled_at REAL NOT NULL
) WITHOUT ROWID;
"""

_COLUMNS = "order_id, user_id, tracking_number, status, carrier, created_at, dispatch_at"


def upgrade(path: str | Path) -> None:
    """A file from before the dispatch delay or the request id: shipments gain
    PENDING/CANCELLED, dispatch_at and request_id. Run before Database.open."""
    upgrade_table(path, "shipments", SHIPMENTS_TABLE, "request_id")


def _row(row: aiosqlite.Row) -> Shipment:
    return Shipment(
        order_id=row["order_id"],
        user_id=row["user_id"],
        tracking_number=row["tracking_number"],
        status=Status(row["status"]),
        carrier=row["carrier"],
        created_at=float(row["created_at"]),
        dispatch_at=float(row["dispatch_at"]),
    )


def _get_sync(tx: Tx, order_id: str) -> Shipment | None:
    row = tx.one(f"SELECT {_COLUMNS} FROM shipments WHERE order_id = ?", (order_id,))
    return None if row is None else _row(row)


def _remembered_sync(tx: Tx, order_id: str) -> bool:
    return tx.one("SELECT 1 FROM cancellations WHERE order_id = ?", (order_id,)) is not None


def create_shipment_sync(tx: Tx, order_id: str, user_id: str, now: float,
                         delay_s: float) -> Shipment | None:
    """The shipment of a confirmed order, in the caller's transaction (on the connection's
    thread): PENDING, or CANCELLED when its cancellation came first. None when the order
    already has one (a redelivered order.confirmed)."""
    if _get_sync(tx, order_id) is not None:
        return None
    s = domain.plan_shipment(order_id, user_id, now, delay_s,
                             cancelled=_remembered_sync(tx, order_id))
    tx.execute(
        f"INSERT INTO shipments ({_COLUMNS}, request_id) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
        (s.order_id, s.user_id, s.tracking_number, s.status.value, s.carrier, s.created_at,
         s.dispatch_at, context.request_id()))
    return s


@dataclass(frozen=True, slots=True)
class Due:
    """What the dispatcher learnt: how many it dispatched, and when the next one is due."""
    dispatched: int
    next_at: float | None


class ShippingStore:
    def __init__(self, db: Database) -> None:
        self.db = db

    async def get(self, order_id: str) -> Shipment | None:
        async with self.db.reader() as conn:
            cur = await conn.execute(
                f"SELECT {_COLUMNS} FROM shipments WHERE order_id = ?", (order_id,))
            row = await cur.fetchone()
        return None if row is None else _row(row)

    async def cancel(self, order_id: str) -> Shipment | None:
        """CancelShipment: the cancelled shipment, or None when order.confirmed has not
        arrived yet (the cancellation is remembered). FailedPrecondition once dispatched."""
        def run(tx: Tx) -> Shipment | None:
            existing = _get_sync(tx, order_id)
            effect = domain.decide_cancel(order_id, existing, _remembered_sync(tx, order_id))
            if effect is CancelEffect.REMEMBER:
                tx.execute("INSERT INTO cancellations (order_id, cancelled_at) VALUES (?, ?)",
                           (order_id, time.time()))
            elif effect is CancelEffect.CANCEL:
                tx.execute("UPDATE shipments SET status = ? WHERE order_id = ?",
                           (Status.CANCELLED.value, order_id))
            return _get_sync(tx, order_id)

        return await self.db.write(run)

    async def dispatch_due(self, now: float, limit: int = 200) -> Due:
        """Dispatch every PENDING shipment due by `now`: SHIPPED and its order.shipped in
        one transaction. The status guard in the UPDATE lets exactly one of several
        instances (or a racing cancel) win each shipment."""
        def run(tx: Tx) -> Due:
            rows = tx.all(f"SELECT {_COLUMNS}, request_id FROM shipments"
                          " WHERE status = 'PENDING'"
                          " AND dispatch_at <= ? ORDER BY dispatch_at LIMIT ?", (now, limit))
            done = 0
            for row in rows:
                shipped = domain.dispatch(_row(row))
                cur = tx.execute("UPDATE shipments SET status = ? WHERE order_id = ?"
                                 " AND status = 'PENDING'",
                                 (shipped.status.value, shipped.order_id))
                if cur.rowcount != 1:
                    continue
                tx.enqueue(events.ORDER_SHIPPED,
                           shipping_pb2.OrderShipped(shipment=to_proto(shipped)),
                           source=SOURCE, aggregate_id=shipped.order_id,
                           correlation_id=row["request_id"])
                done += 1
            nxt = tx.one("SELECT MIN(dispatch_at) FROM shipments WHERE status = 'PENDING'")
            return Due(done, None if nxt is None or nxt[0] is None else float(nxt[0]))

        return await self.db.write(run)
