"""What each service has recorded, read straight from its own SQLite file or PostgreSQL
database (read-only).

The invariant check (tests/support/invariants.py) judges these records rather than the
public API: the payment service's table holds every payment, so a stray or a second charge
is seen even for an order nobody asks about; the outbox tables are each service's log of
the events it emitted, so a notification can be traced to the event that caused it.

`read_records(data_dir)` reads `<data_dir>/<service>.db` for each service that has one
(a service that never started contributes nothing); `read_records(data_dir, server_url)`
reads the databases `shop_<service>` on that PostgreSQL server instead, each in one
REPEATABLE READ transaction. `snapshot(data_dir, dest)` copies the
files consistently (SQLite's backup API), so a test can change a copy and check it.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import sqlite3
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import urlsplit, urlunsplit

import asyncpg

__all__ = [
    "EventRow",
    "NotificationRow",
    "OrderRow",
    "PaymentRow",
    "Records",
    "ReservationRow",
    "SagaRow",
    "ShipmentRow",
    "StockRow",
    "read_records",
    "snapshot",
]

SERVICES_WITH_STATE = ("user", "order", "payment", "inventory", "shipping", "notification",
                       "cart")


@dataclass(frozen=True)
class OrderRow:
    id: str
    user_id: str
    items: tuple[tuple[str, int, int], ...]  # (product id, quantity, unit price in cents)
    total_cents: int
    currency: str
    status: str
    cancel_reason: str
    tracking_number: str
    from_cart: bool

    def units(self, product_id: str) -> int:
        return sum(q for p, q, _ in self.items if p == product_id)


@dataclass(frozen=True)
class SagaRow:
    order_id: str
    step: str
    status: str


@dataclass(frozen=True)
class PaymentRow:
    order_id: str
    user_id: str
    status: str
    amount_cents: int
    refunded_cents: int
    currency: str


@dataclass(frozen=True)
class StockRow:
    product_id: str
    available: int
    reserved: int
    sold: int
    total: int


@dataclass(frozen=True)
class ReservationRow:
    order_id: str
    status: str


@dataclass(frozen=True)
class ShipmentRow:
    order_id: str
    user_id: str
    tracking_number: str
    status: str


@dataclass(frozen=True)
class NotificationRow:
    id: str
    user_id: str
    kind: str
    subject: str
    event_id: str


@dataclass(frozen=True)
class EventRow:
    """One row of a service's outbox: an event it emitted."""

    service: str
    event_id: str
    subject: str
    aggregate_id: str
    sent: bool


@dataclass(frozen=True)
class Records:
    users: tuple[str, ...] = ()
    orders: tuple[OrderRow, ...] = ()
    sagas: tuple[SagaRow, ...] = ()
    payments: tuple[PaymentRow, ...] = ()
    stock: tuple[StockRow, ...] = ()
    reservations: tuple[ReservationRow, ...] = ()
    shipments: tuple[ShipmentRow, ...] = ()
    notifications: tuple[NotificationRow, ...] = ()
    events: tuple[EventRow, ...] = ()
    # From NATS, filled in by the settling wait: durable consumer -> messages not yet
    # acknowledged (pending + in flight), and how many events were dead-lettered.
    backlog: dict[str, int] = field(default_factory=dict, compare=False)
    dead_letters: int = 0

    def order(self, order_id: str) -> OrderRow | None:
        return next((o for o in self.orders if o.id == order_id), None)


@contextlib.contextmanager
def _open_ro(path: Path) -> Iterator[sqlite3.Connection | None]:
    if not path.exists():
        yield None
        return
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=10)
    try:
        yield conn
    finally:
        conn.close()


class _Cursor(Protocol):
    def fetchall(self) -> list[Any]: ...


class _Conn(Protocol):
    """What the readers below need of a connection (sqlite3's, or `_PgConn`)."""

    def execute(self, sql: str) -> _Cursor: ...


class _PgRows:
    def __init__(self, rows: list[Any]) -> None:
        self.rows = rows

    def fetchall(self) -> list[Any]:
        return [tuple(r) for r in self.rows]


class _PgConn:
    """An asyncpg connection driven from a plain thread by its own event loop."""

    def __init__(self, loop: asyncio.AbstractEventLoop, conn: asyncpg.Connection) -> None:
        self.loop = loop
        self.conn = conn

    def execute(self, sql: str) -> _PgRows:
        try:
            return _PgRows(self.loop.run_until_complete(self.conn.fetch(sql)))
        except asyncpg.UndefinedTableError as err:
            # Not migrated yet; the failed statement ended the transaction: start another.
            self.loop.run_until_complete(self.conn.execute(
                "ROLLBACK; BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY"))
            raise sqlite3.OperationalError(f"no such table: {err}") from err


def _rows(conn: _Conn | None, sql: str) -> list[tuple[object, ...]]:
    """All rows, or none when the table does not exist (yet)."""
    if conn is None:
        return []
    try:
        return list(conn.execute(sql).fetchall())
    except sqlite3.OperationalError as err:
        if "no such table" in str(err):
            return []
        raise


def _int(value: object) -> int:
    assert isinstance(value, int), value
    return value


def _orders(conn: _Conn | None) -> tuple[OrderRow, ...]:
    return tuple(
        OrderRow(str(r[0]), str(r[1]),
                 tuple((str(p), int(q), int(c)) for p, q, c in json.loads(str(r[2]))),
                 _int(r[3]), str(r[4]), str(r[5]), str(r[6]), str(r[7]), bool(r[8]))
        for r in _rows(conn, "SELECT id, user_id, items, total_cents, currency, status, "
                             "cancel_reason, tracking_number, from_cart FROM orders "
                             "ORDER BY create_time, id"))


def _sagas(conn: _Conn | None) -> tuple[SagaRow, ...]:
    return tuple(SagaRow(str(r[0]), str(r[1]), str(r[2])) for r in
                 _rows(conn, "SELECT order_id, step, status FROM sagas ORDER BY order_id"))


def _payments(conn: _Conn | None) -> tuple[PaymentRow, ...]:
    return tuple(
        PaymentRow(str(r[0]), str(r[1]), str(r[2]), _int(r[3]), _int(r[4]), str(r[5]))
        for r in _rows(conn, "SELECT order_id, user_id, status, amount_cents, refunded_cents, "
                             "currency FROM payments ORDER BY order_id"))


def _stock(conn: _Conn | None) -> tuple[StockRow, ...]:
    return tuple(
        StockRow(str(r[0]), _int(r[1]), _int(r[2]), _int(r[3]), _int(r[4]))
        for r in _rows(conn, "SELECT product_id, available, reserved, sold, total FROM stock "
                             "ORDER BY product_id"))


def _reservations(conn: _Conn | None) -> tuple[ReservationRow, ...]:
    return tuple(ReservationRow(str(r[0]), str(r[1])) for r in
                 _rows(conn, "SELECT order_id, status FROM reservations ORDER BY order_id"))


def _shipments(conn: _Conn | None) -> tuple[ShipmentRow, ...]:
    return tuple(
        ShipmentRow(str(r[0]), str(r[1]), str(r[2]), str(r[3]))
        for r in _rows(conn, "SELECT order_id, user_id, tracking_number, status FROM shipments "
                             "ORDER BY order_id"))


def _notifications(conn: _Conn | None) -> tuple[NotificationRow, ...]:
    return tuple(
        NotificationRow(str(r[0]), str(r[1]), str(r[2]), str(r[3]), str(r[4]))
        for r in _rows(conn, "SELECT id, user_id, kind, subject, event_id FROM notifications "
                             "ORDER BY seq"))


def _events(service: str, conn: _Conn | None) -> tuple[EventRow, ...]:
    return tuple(EventRow(service, str(r[0]), str(r[1]), str(r[2]), r[3] is not None)
                 for r in _rows(conn, "SELECT event_id, subject, aggregate_id, sent_at "
                                      "FROM outbox ORDER BY id"))


def read_records(data_dir: Path, server_url: str = "") -> Records:
    """Every file (or, with `server_url`, every database) read in one read transaction of
    its own."""
    if server_url:
        return _read_postgres(server_url)
    with contextlib.ExitStack() as stack:
        conns = {s: stack.enter_context(_open_ro(data_dir / f"{s}.db"))
                 for s in SERVICES_WITH_STATE}
        for conn in conns.values():
            if conn is not None:
                conn.execute("BEGIN")
        return _records(conns)


def _read_postgres(server_url: str) -> Records:
    """The same records from `shop_<service>` on the server (a missing database: none)."""
    parts = urlsplit(server_url)
    loop = asyncio.new_event_loop()
    conns: dict[str, _Conn | None] = {}
    try:
        for service in SERVICES_WITH_STATE:
            url = urlunsplit((parts.scheme, parts.netloc, f"/shop_{service}", parts.query, ""))
            try:
                conn = loop.run_until_complete(asyncpg.connect(url))
            except asyncpg.InvalidCatalogNameError:
                conns[service] = None
                continue
            loop.run_until_complete(conn.execute(
                "BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY"))
            conns[service] = _PgConn(loop, conn)
        return _records(conns)
    finally:
        for c in conns.values():
            if isinstance(c, _PgConn):
                loop.run_until_complete(c.conn.close())
        loop.close()


def _records(conns: Mapping[str, _Conn | None]) -> Records:
    return Records(
        users=tuple(str(r[0]) for r in _rows(conns["user"], "SELECT id FROM users")),
        orders=_orders(conns["order"]),
        sagas=_sagas(conns["order"]),
        payments=_payments(conns["payment"]),
        stock=_stock(conns["inventory"]),
        reservations=_reservations(conns["inventory"]),
        shipments=_shipments(conns["shipping"]),
        notifications=_notifications(conns["notification"]),
        events=tuple(e for s, c in conns.items() for e in _events(s, c)),
    )


def snapshot(data_dir: Path, dest: Path) -> Path:
    """A consistent copy of every service's file in `dest` (created)."""
    dest.mkdir(parents=True, exist_ok=True)
    for service in SERVICES_WITH_STATE:
        src_path = data_dir / f"{service}.db"
        if not src_path.exists():
            continue
        src = sqlite3.connect(f"file:{src_path}?mode=ro", uri=True, timeout=10)
        dst = sqlite3.connect(dest / f"{service}.db")
        try:
            src.backup(dst)
        finally:
            dst.close()
            src.close()
    return dest
