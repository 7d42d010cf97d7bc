"""All SQL of the payment service. Each state change and its event share one transaction."""

from __future__ import annotations

import time

import aiosqlite
from shop.payment.v1 import payment_pb2

from services.common import events
from services.common.db import Database, Tx
from services.payment import domain
from services.payment.convert import to_proto
from services.payment.domain import ChargeRequest, Payment, Status

SOURCE = "payment"

# order_id is the primary key: one payment row per order, ever, which is what makes
# Charge idempotent even when two instances share this file.
SCHEMA = """
CREATE TABLE IF NOT EXISTS payments (
    order_id TEXT PRIMARY KEY,
    user_id TEXT NOT NULL,
    status TEXT NOT NULL CHECK (status IN ('CHARGED', 'DECLINED', 'REFUNDED', 'VOID')),
    amount_cents INTEGER NOT NULL CHECK (amount_cents >= 0),
    refunded_cents INTEGER NOT NULL DEFAULT 0
        CHECK (refunded_cents >= 0 AND refunded_cents <= amount_cents),
    currency TEXT NOT NULL,
    decline_reason TEXT NOT NULL DEFAULT '',
    created_at REAL NOT NULL,
    updated_at REAL NOT NULL
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS payments_user ON payments (user_id);
"""

_COLUMNS = ("order_id, user_id, status, amount_cents, refunded_cents, currency, "
            "decline_reason, created_at, updated_at")


def _row_to_payment(row: aiosqlite.Row) -> Payment:
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


class PaymentStore:
    def __init__(self, db: Database) -> None:
        self.db = db

    async def get(self, order_id: str) -> Payment | None:
        return await self.db.read(lambda tx: _select_sync(tx, order_id))

    async def charge(self, req: ChargeRequest) -> Payment:
        """The payment for the order: a new one (with its event) or the one already there."""
        def run(tx: Tx) -> Payment:
            existing = _select_sync(tx, req.order_id)
            decision = domain.decide_charge(req, existing, time.time())
            p = decision.payment
            if decision.is_new:
                # BEGIN IMMEDIATE serializes writers across processes, so the read above
                # is current; the primary key would still refuse a second row.
                tx.execute(
                    f"INSERT INTO payments ({_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    (p.order_id, p.user_id, p.status.value, p.amount_cents, p.refunded_cents,
                     p.currency, p.decline_reason, p.created_at, p.updated_at))
                if p.status is Status.CHARGED:
                    tx.enqueue(events.PAYMENT_COMPLETED,
                               payment_pb2.PaymentCompleted(payment=to_proto(p)),
                               source=SOURCE, aggregate_id=p.order_id)
                else:
                    tx.enqueue(events.PAYMENT_FAILED,
                               payment_pb2.PaymentFailed(payment=to_proto(p),
                                                         reason=p.decline_reason),
                               source=SOURCE, aggregate_id=p.order_id)
            return p

        return await self.db.write(run)

    async def refund(self, order_id: str, reason: str, caller: str = "") -> Payment:
        def run(tx: Tx) -> Payment:
            existing = _select_sync(tx, order_id)
            decision = domain.decide_refund(order_id, existing, time.time(), caller)
            p = decision.payment
            if decision.changed:
                # Upsert covers both the CHARGED -> REFUNDED update and a new tombstone.
                tx.execute(
                    f"INSERT INTO payments ({_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)"
                    " ON CONFLICT (order_id) DO UPDATE SET status = excluded.status,"
                    " refunded_cents = excluded.refunded_cents,"
                    " updated_at = excluded.updated_at",
                    (p.order_id, p.user_id, p.status.value, p.amount_cents, p.refunded_cents,
                     p.currency, p.decline_reason, p.created_at, p.updated_at))
            if decision.emit:
                tx.enqueue(events.PAYMENT_REFUNDED,
                           payment_pb2.PaymentRefunded(payment=to_proto(p), reason=reason),
                           source=SOURCE, aggregate_id=p.order_id)
            return p

        return await self.db.write(run)


def _select_sync(tx: Tx, order_id: str) -> Payment | None:
    row = tx.one(f"SELECT {_COLUMNS} FROM payments WHERE order_id = ?", (order_id,))
    return None if row is None else _row_to_payment(row)
