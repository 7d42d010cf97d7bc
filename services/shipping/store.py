"""All SQL of the shipping service: shipments, remembered cancellations, the dispatcher's
queries. Every change and its event (order.shipped) commit together (outbox)."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Protocol

from shop.shipping.v1 import shipping_pb2

from services.common import context, events
from services.common.storage import Row, Storage, Tx
from services.shipping import domain
from services.shipping.convert import to_proto
from services.shipping.domain import CancelEffect, Shipment, Status

SOURCE = "shipping"

_COLUMNS = "order_id, user_id, tracking_number, status, carrier, created_at, dispatch_at"


@dataclass(frozen=True, slots=True)
class Due:
    """What the dispatcher learnt: how many it dispatched, and when the next one is due."""
    dispatched: int
    next_at: float | None


class ShippingRepository(Protocol):
    async def get(self, order_id: str) -> Shipment | None: ...
    async def cancel(self, order_id: str) -> Shipment | None: ...
    async def dispatch_due(self, now: float, limit: int = 200) -> Due: ...


def _row(row: Row) -> Shipment:
    return Shipment(
        order_id=row["order_id"],
        user_id=row["user_id"],
        tracking_number=row["tracking_number"],
        status=Status(row["status"]),
        carrier=row["carrier"],
        created_at=float(row["created_at"]),
        dispatch_at=float(row["dispatch_at"]),
    )


async def _get(tx: Tx, order_id: str) -> Shipment | None:
    row = await tx.fetchrow(f"SELECT {_COLUMNS} FROM shipments WHERE order_id = ?", (order_id,))
    return None if row is None else _row(row)


async def _remembered(tx: Tx, order_id: str) -> bool:
    return await tx.fetchrow("SELECT 1 FROM cancellations WHERE order_id = ?",
                             (order_id,)) is not None


async def create_shipment(tx: Tx, order_id: str, user_id: str, now: float,
                          delay_s: float) -> Shipment | None:
    """The shipment of a confirmed order, in the caller's unit of work: PENDING, or
    CANCELLED when its cancellation came first. None when the order already has one (a
    redelivered order.confirmed)."""
    if await _get(tx, order_id) is not None:
        return None
    s = domain.plan_shipment(order_id, user_id, now, delay_s,
                             cancelled=await _remembered(tx, order_id))
    await tx.run(
        f"INSERT INTO shipments ({_COLUMNS}, request_id) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
        (s.order_id, s.user_id, s.tracking_number, s.status.value, s.carrier, s.created_at,
         s.dispatch_at, context.request_id()))
    return s


class ShippingStore:
    def __init__(self, storage: Storage) -> None:
        self.storage = storage

    async def get(self, order_id: str) -> Shipment | None:
        async def run(tx: Tx) -> Shipment | None:
            return await _get(tx, order_id)

        return await self.storage.read(run)

    async def cancel(self, order_id: str) -> Shipment | None:
        """CancelShipment: the cancelled shipment, or None when order.confirmed has not
        arrived yet (the cancellation is remembered). FailedPrecondition once dispatched."""
        async def run(tx: Tx) -> Shipment | None:
            existing = await _get(tx, order_id)
            effect = domain.decide_cancel(order_id, existing, await _remembered(tx, order_id))
            if effect is CancelEffect.REMEMBER:
                await tx.run("INSERT INTO cancellations (order_id, cancelled_at) VALUES (?, ?)",
                             (order_id, time.time()))
            elif effect is CancelEffect.CANCEL:
                await tx.run("UPDATE shipments SET status = ? WHERE order_id = ?",
                             (Status.CANCELLED.value, order_id))
            return await _get(tx, order_id)

        return await self.storage.write(run)

    async def dispatch_due(self, now: float, limit: int = 200) -> Due:
        """Dispatch every PENDING shipment due by `now`: SHIPPED and its order.shipped in
        one transaction. The status guard in the UPDATE lets exactly one of several
        instances (or a racing cancel) win each shipment."""
        async def run(tx: Tx) -> Due:
            rows = await tx.fetch(f"SELECT {_COLUMNS}, request_id FROM shipments"
                                  " WHERE status = 'PENDING'"
                                  " AND dispatch_at <= ? ORDER BY dispatch_at LIMIT ?",
                                  (now, limit))
            done = 0
            for row in rows:
                shipped = domain.dispatch(_row(row))
                changed = await tx.run("UPDATE shipments SET status = ? WHERE order_id = ?"
                                       " AND status = 'PENDING'",
                                       (shipped.status.value, shipped.order_id))
                if changed != 1:
                    continue
                await tx.emit(events.ORDER_SHIPPED,
                              shipping_pb2.OrderShipped(shipment=to_proto(shipped)),
                              source=SOURCE, aggregate_id=shipped.order_id,
                              correlation_id=row["request_id"])
                done += 1
            nxt = await tx.fetchval(
                "SELECT MIN(dispatch_at) FROM shipments WHERE status = 'PENDING'")
            return Due(done, None if nxt is None else float(nxt))

        return await self.storage.write(run)
