"""All SQL of the product service. The table is the source of truth; the servicer serves
reads from an in-memory copy it loads (and follows) through `load_since`."""

from __future__ import annotations

import time
from collections.abc import Iterable
from typing import Protocol

from services.common.errors import AlreadyExists
from services.common.storage import IntegrityError, Row, Storage, Tx
from services.product.domain import Product

# Where a follower has read up to, in commit order: (txid, seq) on PostgreSQL, (0, seq)
# on SQLite (one writer at a time: seq is commit order there).
Cursor = tuple[int, int]
START: Cursor = (0, 0)


class ProductRepository(Protocol):
    async def seed(self, products: Iterable[Product]) -> int: ...
    async def create(self, product: Product) -> Product: ...
    async def get(self, product_id: str) -> Product | None: ...
    async def load_since(self, cursor: Cursor) -> tuple[list[Product], Cursor]: ...


_COLUMNS = "id, name, description, category, price_cents, currency"
_INSERT = f"INSERT INTO products ({_COLUMNS}, created_at) VALUES (?, ?, ?, ?, ?, ?, ?)"
_FOLLOW = {
    "sqlite": f"SELECT 0, seq, {_COLUMNS} FROM products WHERE seq > ? ORDER BY seq",
    # Only rows of transactions older than every running one: those are all committed,
    # and any row still to come sorts after them.
    "postgres": f"SELECT txid, seq, {_COLUMNS} FROM products WHERE (txid, seq) > (?, ?)"
                " AND txid < pg_snapshot_xmin(pg_current_snapshot())::text::bigint"
                " ORDER BY txid, seq",
}


def _row_to_product(row: Row, at: int = 0) -> Product:
    return Product(id=row[at], name=row[at + 1], description=row[at + 2],
                   category=row[at + 3], price_cents=int(row[at + 4]), currency=row[at + 5])


def _values(p: Product, now: float) -> tuple[str, str, str, str, int, str, float]:
    return (p.id, p.name, p.description, p.category, p.price_cents, p.currency, now)


class ProductStore:
    def __init__(self, storage: Storage) -> None:
        self.storage = storage

    async def seed(self, products: Iterable[Product]) -> int:
        """Insert the products whose id is not taken yet; returns how many were new.
        Idempotent, and safe when several instances start at once."""
        rows = [_values(p, time.time()) for p in products]

        async def run(tx: Tx) -> int:
            before = int(await tx.fetchval("SELECT count(*) FROM products"))
            await tx.run_many(f"{_INSERT} ON CONFLICT (id) DO NOTHING", rows)
            return int(await tx.fetchval("SELECT count(*) FROM products")) - before

        return await self.storage.write(run)

    async def create(self, product: Product) -> Product:
        async def run(tx: Tx) -> None:
            await tx.run(_INSERT, _values(product, time.time()))

        try:
            await self.storage.write(run)
        except IntegrityError:
            raise AlreadyExists(f"product {product.id} already exists") from None
        return product

    async def get(self, product_id: str) -> Product | None:
        async def run(tx: Tx) -> Row | None:
            return await tx.fetchrow(f"SELECT {_COLUMNS} FROM products WHERE id = ?",
                                     (product_id,))

        row = await self.storage.read(run)
        return None if row is None else _row_to_product(row)

    async def load_since(self, cursor: Cursor) -> tuple[list[Product], Cursor]:
        """Products committed after `cursor` in commit order, and the new cursor."""
        sql = _FOLLOW[self.storage.dialect]
        params = (cursor[1],) if self.storage.dialect == "sqlite" else cursor

        async def run(tx: Tx) -> list[Row]:
            return await tx.fetch(sql, params)

        rows = await self.storage.read(run)
        top = (int(rows[-1][0]), int(rows[-1][1])) if rows else cursor
        return [_row_to_product(r, 2) for r in rows], top
