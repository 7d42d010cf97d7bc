"""All SQL of the shipping service."""

from __future__ import annotations

import aiosqlite
from shop.shipping.v1 import shipping_pb2

from services.common import events
from services.common.db import Database, Tx
from services.shipping.convert import to_proto
from services.shipping.domain import Shipment, Status

SOURCE = "shipping"

# order_id as primary key: one shipment per order however often order.confirmed arrives.
SCHEMA = """
CREATE TABLE IF NOT EXISTS shipments (
    order_id TEXT PRIMARY KEY,
    user_id TEXT NOT NULL,
    tracking_number TEXT NOT NULL UNIQUE,
    status TEXT NOT NULL CHECK (status IN ('LABEL_CREATED', 'SHIPPED', 'DELIVERED')),
    carrier TEXT NOT NULL,
    created_at REAL NOT NULL
) WITHOUT ROWID;
"""

_COLUMNS = "order_id, user_id, tracking_number, status, carrier, created_at"


def _row(row: aiosqlite.Row) -> Shipment:
    return Shipment(
        order_id=row["order_id"],
        user_id=row["user_id"],
        tracking_number=row["tracking_number"],
        status=Status(row["status"]),
        carrier=row["carrier"],
        created_at=float(row["created_at"]),
    )


def create_shipment_sync(tx: Tx, shipment: Shipment) -> bool:
    """Insert the shipment and its order.shipped event in the caller's transaction (on the
    connection's thread). False (and no event) when the order already has a shipment."""
    s = shipment
    cur = tx.execute(
        f"INSERT INTO shipments ({_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?)"
        " ON CONFLICT (order_id) DO NOTHING",
        (s.order_id, s.user_id, s.tracking_number, s.status.value, s.carrier, s.created_at))
    if cur.rowcount != 1:
        return False
    tx.enqueue(events.ORDER_SHIPPED, shipping_pb2.OrderShipped(shipment=to_proto(s)),
               source=SOURCE, aggregate_id=s.order_id)
    return True


class ShippingStore:
    def __init__(self, db: Database) -> None:
        self.db = db

    async def get(self, order_id: str) -> Shipment | None:
        async with self.db.reader() as conn:
            cur = await conn.execute(
                f"SELECT {_COLUMNS} FROM shipments WHERE order_id = ?", (order_id,))
            row = await cur.fetchone()
        return None if row is None else _row(row)
