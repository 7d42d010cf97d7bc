"""All SQL of the product service. The table is the source of truth; the servicer serves
reads from an in-memory copy it loads (and follows) through `load_since`."""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Iterable

import aiosqlite

from services.common.db import Database
from services.common.errors import AlreadyExists
from services.product.domain import Product

# `seq` orders rows by commit (SQLite has one writer at a time), so an instance can pick
# up what others created with "seq > last seen". Products are never updated or deleted.
SCHEMA = """
CREATE TABLE IF NOT EXISTS products (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    id TEXT NOT NULL UNIQUE,
    name TEXT NOT NULL,
    description TEXT NOT NULL DEFAULT '',
    category TEXT NOT NULL DEFAULT '',
    price_cents INTEGER NOT NULL CHECK (price_cents > 0),
    currency TEXT NOT NULL,
    created_at REAL NOT NULL
);
"""

_COLUMNS = "id, name, description, category, price_cents, currency"


def _row_to_product(row: aiosqlite.Row) -> Product:
    return Product(id=row["id"], name=row["name"], description=row["description"],
                   category=row["category"], price_cents=int(row["price_cents"]),
                   currency=row["currency"])


def _values(p: Product, now: float) -> tuple[str, str, str, str, int, str, float]:
    return (p.id, p.name, p.description, p.category, p.price_cents, p.currency, now)


_INSERT = f"INSERT INTO products ({_COLUMNS}, created_at) VALUES (?, ?, ?, ?, ?, ?, ?)"


class ProductStore:
    def __init__(self, db: Database) -> None:
        self.db = db

    async def seed(self, products: Iterable[Product]) -> int:
        """Insert the products whose id is not taken yet; returns how many were new.
        Idempotent, and safe when several instances start at once."""
        now = time.time()
        async with self.db.transaction() as conn:
            before = conn.total_changes
            await conn.executemany(_INSERT.replace("INSERT", "INSERT OR IGNORE", 1),
                                   [_values(p, now) for p in products])
            return conn.total_changes - before

    async def create(self, product: Product) -> Product:
        try:
            async with self.db.transaction() as conn:
                await conn.execute(_INSERT, _values(product, time.time()))
        except sqlite3.IntegrityError:
            raise AlreadyExists(f"product {product.id} already exists") from None
        return product

    async def get(self, product_id: str) -> Product | None:
        async with self.db.reader() as conn:
            cur = await conn.execute(f"SELECT {_COLUMNS} FROM products WHERE id = ?",
                                     (product_id,))
            row = await cur.fetchone()
        return None if row is None else _row_to_product(row)

    async def load_since(self, seq: int) -> tuple[list[Product], int]:
        """Products committed after `seq` in commit order, and the new high-water mark."""
        async with self.db.reader() as conn:
            cur = await conn.execute(
                f"SELECT seq, {_COLUMNS} FROM products WHERE seq > ? ORDER BY seq", (seq,))
            rows = list(await cur.fetchall())
        top = int(rows[-1]["seq"]) if rows else seq
        return [_row_to_product(r) for r in rows], top
