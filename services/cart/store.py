"""Cart persistence: one row per (user, product). The only SQL of the cart service."""

from __future__ import annotations

import time
from collections.abc import Sequence

import aiosqlite

from services.cart.domain import Cart, CartLine, ProductInfo, add_line, with_line
from services.common.db import Database, Tx
from services.common.errors import NotFound

SCHEMA = """
CREATE TABLE IF NOT EXISTS cart_items (
    user_id TEXT NOT NULL,
    product_id TEXT NOT NULL,
    quantity INTEGER NOT NULL CHECK (quantity BETWEEN 1 AND 99),
    unit_price_cents INTEGER NOT NULL CHECK (unit_price_cents >= 0),
    name TEXT NOT NULL,
    currency TEXT NOT NULL,
    added_at REAL NOT NULL,
    PRIMARY KEY (user_id, product_id)
) WITHOUT ROWID;
"""

_SELECT = ("SELECT product_id, quantity, unit_price_cents, name, currency FROM cart_items"
           " WHERE user_id = ? ORDER BY added_at, product_id")


async def _load(conn: aiosqlite.Connection, user_id: str) -> Cart:
    cur = await conn.execute(_SELECT, (user_id,))
    rows = await cur.fetchall()
    return Cart(user_id, tuple(CartLine(r[0], r[1], r[2], r[3], r[4]) for r in rows))


async def remove_products(conn: aiosqlite.Connection, user_id: str,
                          product_ids: Sequence[str]) -> int:
    """Drop these products from the user's cart in the caller's transaction (the
    order.confirmed handler); returns how many lines went."""
    if not product_ids:
        return 0
    marks = ",".join("?" * len(product_ids))
    cur = await conn.execute(
        f"DELETE FROM cart_items WHERE user_id = ? AND product_id IN ({marks})",
        (user_id, *product_ids))
    return int(cur.rowcount)


def remove_products_sync(tx: Tx, user_id: str, product_ids: Sequence[str]) -> int:
    """`remove_products` on a write function's Tx (the consumer's single-hop path)."""
    if not product_ids:
        return 0
    marks = ",".join("?" * len(product_ids))
    cur = tx.execute(f"DELETE FROM cart_items WHERE user_id = ? AND product_id IN ({marks})",
                     (user_id, *product_ids))
    return int(cur.rowcount)


class CartStore:
    def __init__(self, db: Database) -> None:
        self.db = db

    async def get(self, user_id: str) -> Cart:
        async with self.db.reader() as conn:
            return await _load(conn, user_id)

    async def add(self, user_id: str, product: ProductInfo, quantity: int) -> Cart:
        """Add `quantity` of `product`; the read and the write share one transaction, so
        concurrent adds of one product never lose a quantity or pass the limit."""
        async with self.db.transaction() as conn:
            cart = await _load(conn, user_id)
            line = add_line(cart, product, quantity)
            # added_at keeps its first value: a line stays where it was in the cart.
            await conn.execute(
                "INSERT INTO cart_items (user_id, product_id, quantity, unit_price_cents, name,"
                " currency, added_at) VALUES (?, ?, ?, ?, ?, ?, ?)"
                " ON CONFLICT (user_id, product_id) DO UPDATE SET quantity = excluded.quantity,"
                " unit_price_cents = excluded.unit_price_cents, name = excluded.name,"
                " currency = excluded.currency",
                (user_id, line.product_id, line.quantity, line.unit_price_cents, line.name,
                 line.currency, time.time()))
            return with_line(cart, line)

    async def remove(self, user_id: str, product_id: str) -> Cart:
        async with self.db.transaction() as conn:
            if not await remove_products(conn, user_id, [product_id]):
                raise NotFound(f"product {product_id} is not in the cart")
            return await _load(conn, user_id)

    async def clear(self, user_id: str) -> Cart:
        async with self.db.transaction() as conn:
            await conn.execute("DELETE FROM cart_items WHERE user_id = ?", (user_id,))
        return Cart(user_id)
