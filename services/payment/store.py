"""All SQL of the payment service. Each state change and its event share one transaction."""

from __future__ import annotations

import time
from typing import Protocol

from shop.payment.v1 import payment_pb2

from services.common import events
from services.common.storage import Row, Storage, Tx
from services.payment import domain
from services.payment.convert import to_proto
from services.payment.domain import ChargeRequest, Payment, Status

SOURCE = "payment"


class PaymentRepository(Protocol):
    async def get(self, order_id: str) -> Payment | None: ...
    async def charge(self, req: ChargeRequest) -> Payment: ...
    async def refund(self, order_id: str, reason: str, caller: str = "") -> Payment: ...


_COLUMNS = ("order_id, user_id, status, amount_cents, refunded_cents, currency, "
            "decline_reason, created_at, updated_at")
_INSERT = f"INSERT INTO payments ({_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)"


def _row_to_payment(row: Row) -> Payment:
    return Payment(
        order_id=row["order_id"],
        user_id=row["user_id"],
        status=Status(row["status"]),
        amount_cents=int(row["amount_cents"]),
        refunded_cents=int(row["refunded_cents"]),
        currency=row["currency"],
        decline_reason=row["decline_reason"],
        created_at=float(row["created_at"]),
        updated_at=float(row["updated_at"]),
    )


def _values(p: Payment) -> tuple[str, str, str, int, int, str, str, float, float]:
    return (p.order_id, p.user_id, p.status.value, p.amount_cents, p.refunded_cents,
            p.currency, p.decline_reason, p.created_at, p.updated_at)


async def _select(tx: Tx, order_id: str) -> Payment | None:
    row = await tx.fetchrow(f"SELECT {_COLUMNS} FROM payments WHERE order_id = ?",
                            (order_id,))
    return None if row is None else _row_to_payment(row)


class PaymentStore:
    def __init__(self, storage: Storage) -> None:
        self.storage = storage

    async def get(self, order_id: str) -> Payment | None:
        async def run(tx: Tx) -> Payment | None:
            return await _select(tx, order_id)

        return await self.storage.read(run)

    async def charge(self, req: ChargeRequest) -> Payment:
        """The payment for the order: a new one (with its event) or the one already there."""
        async def run(tx: Tx) -> Payment:
            existing = await _select(tx, req.order_id)
            decision = domain.decide_charge(req, existing, time.time())
            p = decision.payment
            if decision.is_new:
                # Writers are serialized (SQLite's write lock, PostgreSQL's serializable
                # retry), so the read above is current; the key still refuses a second row.
                await tx.run(_INSERT, _values(p))
                if p.status is Status.CHARGED:
                    await tx.emit(events.PAYMENT_COMPLETED,
                                  payment_pb2.PaymentCompleted(payment=to_proto(p)),
                                  source=SOURCE, aggregate_id=p.order_id)
                else:
                    await tx.emit(events.PAYMENT_FAILED,
                                  payment_pb2.PaymentFailed(payment=to_proto(p),
                                                            reason=p.decline_reason),
                                  source=SOURCE, aggregate_id=p.order_id)
            return p

        return await self.storage.write(run)

    async def refund(self, order_id: str, reason: str, caller: str = "") -> Payment:
        async def run(tx: Tx) -> Payment:
            existing = await _select(tx, order_id)
            decision = domain.decide_refund(order_id, existing, time.time(), caller)
            p = decision.payment
            if decision.changed:
                # Upsert covers both the CHARGED -> REFUNDED update and a new tombstone.
                await tx.run(
                    f"{_INSERT} ON CONFLICT (order_id) DO UPDATE SET status = excluded.status,"
                    " refunded_cents = excluded.refunded_cents,"
                    " updated_at = excluded.updated_at", _values(p))
            if decision.emit:
                await tx.emit(events.PAYMENT_REFUNDED,
                              payment_pb2.PaymentRefunded(payment=to_proto(p), reason=reason),
                              source=SOURCE, aggregate_id=p.order_id)
            return p

        return await self.storage.write(run)
