"""Inventory persistence: the stock ledger, per-order reservations and their outbox events.

The ledger (services.inventory.eventstore) is the source of truth for stock: every change
is an event appended to the product's stream, and the stock row is its projection,
written in the same unit of work as the events, the reservation row and the outbox event.
Decisions read the stream heads from the stock rows (the projection is exactly the fold
of its stream at its version, which `rebuild` proves); a head that moved between read and
append (another writer) is a VersionConflict, and the whole unit of work runs again on
fresh state.

Every call is one unit of work with few statements: the reservation, the heads it
touches, per product one guarded stock update and one event row, the reservation row, one
outbox row. Every product's stock row is hot (each order of it moves it twice), so the
appends are `locked` units of work: they lock the reservation and the heads they decide on
(`tx.for_update`, heads in product order, so two never deadlock). On SQLite the one writer
serializes them anyway; on PostgreSQL they run READ COMMITTED and wait for each other's
row locks, and the version guard never fires there unless something wrote a stock row
without its lock.
"""

from __future__ import annotations

import json
import time
from collections.abc import Awaitable, Callable, Iterable, Sequence
from typing import Protocol, TypeVar

from shop.inventory.v1 import inventory_pb2

from services.common.errors import NotFound, Unavailable
from services.common.events import INVENTORY_RELEASED, INVENTORY_RESERVED, INVENTORY_RESTOCKED
from services.common.storage import Row, Storage, Tx
from services.inventory import eventstore as es
from services.inventory.convert import reservation_pb
from services.inventory.domain import (
    Effect,
    HistoryEntry,
    HistoryPage,
    Line,
    Reservation,
    Status,
    Stock,
    Transition,
    decide_commit,
    decide_confirmed_commit,
    decide_release,
    decide_reserve,
    decide_restock,
)
from services.inventory.ledger import Event, Kind, Level

SERVICE = "inventory"
DEFAULT_SNAPSHOT_EVERY = 100
# A unit of work that keeps meeting moved heads is given up (UNAVAILABLE, retryable).
_MAX_ATTEMPTS = 32

T = TypeVar("T")


def snapshot_every(every: int) -> int:
    """INVENTORY_SNAPSHOT_EVERY, checked: a snapshot per stream every this many events
    (0: none)."""
    if every < 0:
        raise ValueError(f"INVENTORY_SNAPSHOT_EVERY must not be negative, got {every}")
    return every


def _items_json(items: Iterable[Line]) -> str:
    return json.dumps([[li.product_id, li.quantity] for li in items], separators=(",", ":"))


def _reservation(row: Row) -> Reservation:
    items = tuple(Line(str(pid), int(qty)) for pid, qty in json.loads(row["items"]))
    return Reservation(row["order_id"], Status(row["status"]), items, row["reason"])


def _stock(row: Row) -> Stock:
    return Stock(row["product_id"], row["available"], row["reserved"], row["sold"])


def stock_of(product_id: str, level: Level) -> Stock:
    return Stock(product_id, level.available, level.reserved, level.sold)


class StockMoveError(RuntimeError):
    """A reservation names a product without a stream: the transaction is rolled back."""


class InventoryRepository(Protocol):
    async def seed(self, stock: Iterable[tuple[str, int]]) -> None: ...
    async def get_stock(self, product_id: str) -> Stock: ...
    async def stock_at(self, product_id: str, at: float) -> Stock: ...
    async def history(self, product_id: str, size: int, before: int | None) -> HistoryPage: ...
    async def set_stock(self, product_id: str, available: int) -> Stock: ...
    async def reserve(self, order_id: str, lines: Sequence[Line]) -> Reservation: ...
    async def release(self, order_id: str) -> Reservation: ...
    async def commit(self, order_id: str) -> Reservation: ...
    async def commit_confirmed(self, order_id: str) -> Reservation: ...
    async def restock(self, order_id: str) -> Reservation: ...
    async def get_reservation(self, order_id: str) -> Reservation | None: ...
    async def all_stock(self) -> list[Stock]: ...
    async def stale_reservations(self, older_than: float, limit: int = 100) -> list[str]: ...


class InventoryStore:
    def __init__(self, storage: Storage, *, snapshot_every: int = DEFAULT_SNAPSHOT_EVERY) -> None:
        self.storage = storage
        self.snapshot_every = snapshot_every
        # Units of work run again after a VersionConflict (read by tests and metrics).
        self.conflicts = 0

    async def _append_unit(self, fn: Callable[[Tx], Awaitable[T]]) -> T:
        """`fn` in one write unit of work, run again on fresh state while a stream head it
        read moved before its append."""
        for _ in range(_MAX_ATTEMPTS):
            try:
                return await self.storage.write(fn, locked=True)
            except es.VersionConflict:
                self.conflicts += 1
        raise Unavailable("stock is changing too fast to record this change; try again")

    async def _append(self, tx: Tx, head: es.Head | None, product_id: str,
                      events: Sequence[Event], now: float) -> Level:
        return await es.append(tx, head, product_id, events,
                               snapshot_every=self.snapshot_every, now=now)

    async def seed(self, stock: Iterable[tuple[str, int]]) -> None:
        """Initial stock for products not yet known (a restart changes nothing)."""
        wanted = dict(stock)

        async def run(tx: Tx) -> None:
            known = await es.heads(tx, list(wanted))
            now = time.time()
            for pid, qty in wanted.items():
                if pid not in known:
                    await self._append(tx, None, pid, [Event(Kind.STOCK_SET, qty)], now)

        await self._append_unit(run)

    async def get_stock(self, product_id: str) -> Stock:
        async def run(tx: Tx) -> Row | None:
            return await tx.fetchrow(
                "SELECT product_id, available, reserved, sold FROM stock WHERE product_id = ?",
                (product_id,))

        row = await self.storage.read(run)
        if row is None:
            raise NotFound(f"product {product_id} not found")
        return _stock(row)

    async def stock_at(self, product_id: str, at: float) -> Stock:
        """The stock after every event recorded at or before `at` (snapshot + the rest)."""
        async def run(tx: Tx) -> tuple[Level, bool]:
            loaded = await es.load(tx, product_id, upto_time=at)
            if loaded.level.version:
                return loaded.level, True
            exists = await tx.fetchval("SELECT 1 FROM stock WHERE product_id = ?",
                                       (product_id,))
            return loaded.level, exists is not None

        level, exists = await self.storage.read(run)
        if not exists:
            raise NotFound(f"product {product_id} not found")
        if not level.version:
            raise NotFound(f"product {product_id} had no stock yet at that time")
        return stock_of(product_id, level)

    async def history(self, product_id: str, size: int, before: int | None) -> HistoryPage:
        """Up to `size` events below version `before` (None: the newest), newest first,
        each with the stock right after it."""
        async def run(tx: Tx) -> HistoryPage | None:
            page = await es.newest_first(tx, product_id, before=before, limit=size + 1)
            if not page:
                exists = await tx.fetchval("SELECT 1 FROM stock WHERE product_id = ?",
                                           (product_id,))
                return None if exists is None else HistoryPage([], None)
            more = len(page) > size
            ascending = list(reversed(page[:size]))
            start = await es.load(tx, product_id, upto_version=ascending[0].version - 1)
            entries = [HistoryEntry(product_id, r.version, r.event.kind, r.event.quantity,
                                    r.event.order_id, r.at, stock_of(product_id, level))
                       for r, level in es.with_levels(start.level, ascending)]
            entries.reverse()
            return HistoryPage(entries, ascending[0].version if more else None)

        found = await self.storage.read(run)
        if found is None:
            raise NotFound(f"product {product_id} not found")
        return found

    async def set_stock(self, product_id: str, available: int) -> Stock:
        """Set available (an operator's count); reserved and sold stay as they are."""
        async def run(tx: Tx) -> Level:
            head = (await es.heads(tx, [product_id])).get(product_id)
            return await self._append(tx, head, product_id,
                                      [Event(Kind.STOCK_SET, available)], time.time())

        return stock_of(product_id, await self._append_unit(run))

    async def reserve(self, order_id: str, lines: Sequence[Line]) -> Reservation:
        """The reservation for `order_id`: the stored one if any, else a new RESERVED
        (stock taken, event queued) or REJECTED one. Unknown products: NotFound,
        nothing written."""
        lines = tuple(lines)

        async def run(tx: Tx) -> Reservation:
            existing, heads = await _reservation_and_heads(
                tx, order_id, [li.product_id for li in lines])
            if existing is not None:
                return existing
            available = {pid: h.level.available for pid, h in heads.items()}
            decided = decide_reserve(order_id, lines, available)
            now = time.time()
            if decided.status is Status.RESERVED:
                await self._move(tx, Kind.RESERVED, decided, now, heads)
            await tx.run(
                "INSERT INTO reservations (order_id, status, items, reason, created_at,"
                " updated_at) VALUES (?, ?, ?, ?, ?, ?)",
                (order_id, decided.status.value, _items_json(decided.items), decided.reason,
                 now, now))
            if decided.status is Status.RESERVED:
                await tx.emit(INVENTORY_RESERVED,
                              inventory_pb2.StockReserved(reservation=reservation_pb(decided)),
                              source=SERVICE, aggregate_id=order_id)
            return decided

        return await self._append_unit(run)

    async def release(self, order_id: str) -> Reservation:
        async def run(tx: Tx) -> Reservation:
            t = decide_release(order_id, await _get(tx, order_id, lock=True))
            now = time.time()
            if t.effect is Effect.RETURN:
                await self._move(tx, Kind.RELEASED, t.reservation, now)
                await _set_status(tx, t.reservation, now)
                await tx.emit(
                    INVENTORY_RELEASED,
                    inventory_pb2.StockReleased(reservation=reservation_pb(t.reservation)),
                    source=SERVICE, aggregate_id=order_id)
            elif t.effect is Effect.TOMBSTONE:
                await tx.run(
                    "INSERT INTO reservations (order_id, status, items, reason, created_at,"
                    " updated_at) VALUES (?, ?, '[]', '', ?, ?)",
                    (order_id, t.reservation.status.value, now, now))
            return t.reservation

        return await self._append_unit(run)

    async def commit(self, order_id: str) -> Reservation:
        async def run(tx: Tx) -> Reservation:
            t = decide_commit(order_id, await _get(tx, order_id, lock=True))
            return await _sell(tx, t, self.snapshot_every)

        return await self._append_unit(run)

    async def commit_confirmed(self, order_id: str) -> Reservation:
        """The commit that follows the order's confirmation, in a unit of work of its own
        (the expiry of a stale reservation whose order was confirmed)."""
        return await self._append_unit(
            lambda tx: commit_confirmed(tx, order_id, snapshot_every=self.snapshot_every))

    async def restock(self, order_id: str) -> Reservation:
        """A confirmed order's units back to available, with inventory.restocked: from
        sold, or from reserved when the cancel came before the commit; a repeat changes
        nothing. FailedPrecondition when no stock was held."""
        async def run(tx: Tx) -> Reservation:
            t = decide_restock(order_id, await _get(tx, order_id, lock=True))
            if t.effect in (Effect.RESTOCK, Effect.RETURN):
                now = time.time()
                kind = Kind.RESTOCKED if t.effect is Effect.RESTOCK else Kind.RELEASED
                await self._move(tx, kind, t.reservation, now)
                await _set_status(tx, t.reservation, now)
                await tx.emit(
                    INVENTORY_RESTOCKED,
                    inventory_pb2.StockRestocked(reservation=reservation_pb(t.reservation)),
                    source=SERVICE, aggregate_id=order_id)
            return t.reservation

        return await self._append_unit(run)

    async def _move(self, tx: Tx, kind: Kind, r: Reservation, now: float,
                    heads: dict[str, es.Head] | None = None) -> None:
        await _move(tx, kind, r, now, self.snapshot_every, heads)

    async def get_reservation(self, order_id: str) -> Reservation | None:
        async def run(tx: Tx) -> Reservation | None:
            return await _get(tx, order_id)

        return await self.storage.read(run)

    async def all_stock(self) -> list[Stock]:
        async def run(tx: Tx) -> list[Stock]:
            return [_stock(r) for r in await tx.fetch(
                "SELECT product_id, available, reserved, sold FROM stock ORDER BY product_id")]

        return await self.storage.read(run)

    async def stale_reservations(self, older_than: float, limit: int = 100) -> list[str]:
        """Order ids of reservations still holding stock, made before `older_than`."""
        async def run(tx: Tx) -> list[str]:
            return [str(r[0]) for r in await tx.fetch(
                "SELECT order_id FROM reservations WHERE status = 'RESERVED' AND created_at < ?"
                " ORDER BY created_at LIMIT ?", (older_than, limit))]

        return await self.storage.read(run)


# --- statements of the units of work above ----------------------------------------------


async def commit_confirmed(tx: Tx, order_id: str, *, snapshot_every: int) -> Reservation:
    """In the caller's unit of work (inventory's consumer of `order.confirmed`, with its
    inbox row): the confirmed order's reserved units become sold; already committed, or
    restocked by a cancel that came first, changes nothing. A stream head that moved fails
    the whole unit of work, which the event's redelivery runs again."""
    t = decide_confirmed_commit(order_id, await _get(tx, order_id, lock=True))
    return await _sell(tx, t, snapshot_every)


async def _sell(tx: Tx, t: Transition, snapshot_every: int) -> Reservation:
    if t.effect is Effect.SELL:
        now = time.time()
        await _move(tx, Kind.COMMITTED, t.reservation, now, snapshot_every)
        await _set_status(tx, t.reservation, now)
    return t.reservation


async def _move(tx: Tx, kind: Kind, r: Reservation, now: float, snapshot_every: int,
                heads: dict[str, es.Head] | None = None) -> None:
    """One `kind` event per line of `r`, on each product's stream."""
    if heads is None:
        heads = await es.heads(tx, [li.product_id for li in r.items])
    for li in r.items:
        head = heads.get(li.product_id)
        if head is None:
            raise StockMoveError(f"order {r.order_id}: no stock stream for {li.product_id}")
        await es.append(tx, head, li.product_id, [Event(kind, li.quantity, r.order_id)],
                        snapshot_every=snapshot_every, now=now)


async def _get(tx: Tx, order_id: str, *, lock: bool = False) -> Reservation | None:
    """The reservation; with `lock`, locked until the commit (two moves of one order's
    stock wait for each other)."""
    row = await tx.fetchrow(
        "SELECT order_id, status, items, reason FROM reservations WHERE order_id = ?"
        + (tx.for_update if lock else ""), (order_id,))
    return None if row is None else _reservation(row)


async def _reservation_and_heads(tx: Tx, order_id: str, product_ids: Sequence[str]
                                 ) -> tuple[Reservation | None, dict[str, es.Head]]:
    """ReserveStock's two questions in one read (the hot path): the order's reservation, if
    any, and the heads of the streams it would move. With none of the products known, the
    reservation is read on its own."""
    marks = ",".join("?" * len(product_ids))
    rows = await tx.fetch(
        "SELECT s.product_id, s.available, s.reserved, s.sold, s.total, s.version,"
        " s.updated_at, r.status AS r_status, r.items AS r_items, r.reason AS r_reason"
        " FROM stock s LEFT JOIN reservations r ON r.order_id = ?"
        f" WHERE s.product_id IN ({marks}) ORDER BY s.product_id"
        # Only the heads are locked (PostgreSQL locks no nullable side of an outer join):
        # a reservation made meanwhile for the same order loses on its key, and the unit
        # of work runs again and finds it.
        + (f"{tx.for_update} OF s" if tx.for_update else ""), [order_id, *product_ids])
    if not rows:
        return await _get(tx, order_id), {}
    first = rows[0]
    existing = None
    if first["r_status"] is not None:
        items = tuple(Line(str(pid), int(qty)) for pid, qty in json.loads(first["r_items"]))
        existing = Reservation(order_id, Status(first["r_status"]), items, first["r_reason"])
    return existing, {h.product_id: h for h in map(es.head_of, rows)}


async def _set_status(tx: Tx, r: Reservation, now: float) -> None:
    await tx.run("UPDATE reservations SET status = ?, updated_at = ? WHERE order_id = ?",
                 (r.status.value, now, r.order_id))
