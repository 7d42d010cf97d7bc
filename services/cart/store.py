"""Cart persistence: one row per (user, product). The only SQL of the cart service."""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Protocol

from services.cart.domain import Cart, CartLine, ProductInfo, add_line, with_line
from services.common.errors import NotFound
from services.common.storage import Storage, Tx


class CartRepository(Protocol):
    async def get(self, user_id: str) -> Cart: ...
    async def add(self, user_id: str, product: ProductInfo, quantity: int) -> Cart: ...
    async def remove(self, user_id: str, product_id: str) -> Cart: ...
    async def clear(self, user_id: str) -> Cart: ...


_SELECT = ("SELECT product_id, quantity, unit_price_cents, name, currency FROM cart_items"
           " WHERE user_id = ? ORDER BY added_at, product_id")


async def _load(tx: Tx, user_id: str) -> Cart:
    rows = await tx.fetch(_SELECT, (user_id,))
    return Cart(user_id, tuple(CartLine(r[0], r[1], r[2], r[3], r[4]) for r in rows))


async def remove_products(tx: Tx, user_id: str, product_ids: Sequence[str]) -> int:
    """Drop these products from the user's cart in the caller's unit of work (also the
    order.confirmed handler's); returns how many lines went."""
    if not product_ids:
        return 0
    marks = ",".join("?" * len(product_ids))
    return await tx.run(
        f"DELETE FROM cart_items WHERE user_id = ? AND product_id IN ({marks})",
        (user_id, *product_ids))


class CartStore:
    def __init__(self, storage: Storage) -> None:
        self.storage = storage

    async def get(self, user_id: str) -> Cart:
        async def run(tx: Tx) -> Cart:
            return await _load(tx, user_id)

        return await self.storage.read(run)

    async def add(self, user_id: str, product: ProductInfo, quantity: int) -> Cart:
        """Add `quantity` of `product`; the read and the write share one transaction, so
        concurrent adds of one product never lose a quantity or pass the limit."""
        async def run(tx: Tx) -> Cart:
            cart = await _load(tx, user_id)
            line = add_line(cart, product, quantity)
            # added_at keeps its first value: a line stays where it was in the cart.
            await tx.run(
                "INSERT INTO cart_items (user_id, product_id, quantity, unit_price_cents, name,"
                " currency, added_at) VALUES (?, ?, ?, ?, ?, ?, ?)"
                " ON CONFLICT (user_id, product_id) DO UPDATE SET quantity = excluded.quantity,"
                " unit_price_cents = excluded.unit_price_cents, name = excluded.name,"
                " currency = excluded.currency",
                (user_id, line.product_id, line.quantity, line.unit_price_cents, line.name,
                 line.currency, time.time()))
            return with_line(cart, line)

        return await self.storage.write(run)

    async def remove(self, user_id: str, product_id: str) -> Cart:
        async def run(tx: Tx) -> Cart:
            if not await remove_products(tx, user_id, [product_id]):
                raise NotFound(f"product {product_id} is not in the cart")
            return await _load(tx, user_id)

        return await self.storage.write(run)

    async def clear(self, user_id: str) -> Cart:
        async def run(tx: Tx) -> None:
            await tx.run("DELETE FROM cart_items WHERE user_id = ?", (user_id,))

        await self.storage.write(run)
        return Cart(user_id)
