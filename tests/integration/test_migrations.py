"""Versioned migrations on both backends: an older database (with data) is upgraded in
place, instances starting together apply each migration once, and the schema keeps the
money invariants itself."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import asyncpg
import pytest
from shop.payment.v1 import payment_pb2

from ops.pgserve import EmbeddedPostgres
from services.common import db as sqlite_backend
from services.common import pg as pg_backend
from services.common.schema import COMMON, MigrationSet, service_migrations
from services.common.storage import IntegrityError, Storage, Tx
from tests.fixtures_storage import OpenStorage, both_backends

# The shared set's migrations: outbox and inbox, relay lease, inbox by age, sent by time.
ALL_COMMON = [("common", 1), ("common", 2), ("common", 3), ("common", 4)]

pytestmark = [pytest.mark.timeout(60), both_backends]

PAYMENT = service_migrations("payment")
OLD_COMMON = MigrationSet(COMMON.component, COMMON.directory, upto=1)
_INSERT = ("INSERT INTO payments (order_id, user_id, status, amount_cents, refunded_cents,"
           " currency, decline_reason, created_at, updated_at)"
           " VALUES (?, 'u1', ?, ?, ?, 'USD', '', ?, ?)")


async def _versions(storage: Storage) -> list[tuple[str, int]]:
    async def run(tx: Tx) -> list[tuple[str, int]]:
        return [(str(r[0]), int(r[1])) for r in await tx.fetch(
            "SELECT component, version FROM schema_migrations ORDER BY component, version")]

    return await storage.read(run)


async def _charge(storage: Storage, order_id: str, amount: int, refunded: int = 0) -> None:
    async def run(tx: Tx) -> None:
        now = time.time()
        await tx.run(_INSERT, (order_id, "CHARGED", amount, refunded, now, now))
        await tx.emit("payment.completed", payment_pb2.PaymentCompleted(), source="payment",
                      aggregate_id=order_id)

    await storage.write(run)


async def test_an_older_database_with_data_is_upgraded(storage_for: OpenStorage) -> None:
    old = await storage_for("payment", migrations=PAYMENT, common=OLD_COMMON)
    assert await _versions(old) == [("common", 1), ("payment", 1)]
    await _charge(old, "o-before", 2500)
    await old.close()

    new = await storage_for("payment")  # today's migration sets
    assert await _versions(new) == [*ALL_COMMON, ("payment", 1)]

    async def kept(tx: Tx) -> tuple[int, int]:
        return (int(await tx.fetchval("SELECT amount_cents FROM payments WHERE order_id = ?",
                                      ("o-before",))),
                int(await tx.fetchval("SELECT count(*) FROM outbox WHERE sent_at IS NULL")))

    assert await new.read(kept) == (2500, 1)  # rows and the unsent event survived
    await _charge(new, "o-after", 100)
    assert await new.read(kept) == (2500, 2)
    # What 0002 brought: the relay's lease row table (SQLite), its wake-up trigger
    # (PostgreSQL).
    sql = ("SELECT count(*) FROM sqlite_master WHERE name = 'outbox_lease'"
           if new.dialect == "sqlite" else
           "SELECT count(*) FROM pg_trigger WHERE tgname = 'outbox_notify'")

    async def has(tx: Tx) -> int:
        return int(await tx.fetchval(sql))

    assert await new.read(has) == 1


async def test_instances_starting_together_apply_each_migration_once(
        backend: str, tmp_path: Path, request: pytest.FixtureRequest) -> None:
    sets = [COMMON, PAYMENT]
    if backend == "sqlite":
        path = tmp_path / "payment.db"
        runs = await asyncio.gather(*[asyncio.to_thread(sqlite_backend.migrate, path, sets)
                                      for _ in range(4)])
    else:
        pg: EmbeddedPostgres = request.getfixturevalue("pg_server")
        url = pg.url("shop_payment")
        await pg_backend.ensure_database(url)
        conns = [await asyncpg.connect(url) for _ in range(4)]
        try:
            runs = await asyncio.gather(*[pg_backend.migrate(c, sets) for c in conns])
        finally:
            for c in conns:
                await c.close()
    applied = sorted(v for run in runs for v in run)
    assert applied == [*ALL_COMMON, ("payment", 1)]
    assert sum(1 for run in runs if run) == 1  # one instance did all of it, the rest waited


async def test_the_schema_keeps_money_invariants(storage_for: OpenStorage) -> None:
    storage = await storage_for("payment")
    with pytest.raises(IntegrityError):
        await _charge(storage, "o-over", 100, refunded=101)  # refunded above the amount
    with pytest.raises(IntegrityError):
        await _charge(storage, "o-neg", -1)
    await _charge(storage, "o-ok", 100)
    with pytest.raises(IntegrityError):
        await _charge(storage, "o-ok", 100)  # one payment per order

    async def count(tx: Tx) -> tuple[int, int]:
        return (int(await tx.fetchval("SELECT count(*) FROM payments")),
                int(await tx.fetchval("SELECT count(*) FROM outbox")))

    assert await storage.read(count) == (1, 1)  # refused units left no row and no event


async def test_shipments_gain_pending_and_dispatch_at_keeping_their_rows(
        storage_for: OpenStorage) -> None:
    """Shipping's 0002 changes a CHECK and adds a column: SQLite rebuilds the table,
    PostgreSQL alters it; the rows made under 0001 stay as they were."""
    shipping = service_migrations("shipping")
    old = await storage_for("shipping", migrations=MigrationSet(
        shipping.component, shipping.directory, upto=1))

    async def ship_one(tx: Tx) -> None:
        await tx.run("INSERT INTO shipments (order_id, user_id, tracking_number, status,"
                     " carrier, created_at) VALUES ('o1', 'u1', 'TRK1', 'SHIPPED', 'ups', 1.5)")

    await old.write(ship_one)

    async def pending(tx: Tx) -> None:
        await tx.run("INSERT INTO shipments (order_id, user_id, tracking_number, status,"
                     " carrier, created_at) VALUES ('o2', 'u1', 'TRK2', 'PENDING', 'ups', 2.0)")

    with pytest.raises(IntegrityError):
        await old.write(pending)  # not a status yet
    await old.close()

    new = await storage_for("shipping")

    async def rows(tx: Tx) -> list[tuple[str, str, float]]:
        return [(str(r[0]), str(r[1]), float(r[2])) for r in await tx.fetch(
            "SELECT order_id, status, dispatch_at FROM shipments ORDER BY order_id")]

    assert await new.read(rows) == [("o1", "SHIPPED", 0.0)]
    await new.write(pending)
    assert [r[:2] for r in await new.read(rows)] == [("o1", "SHIPPED"), ("o2", "PENDING")]
    with pytest.raises(IntegrityError):
        await new.write(lambda tx: tx.run("UPDATE shipments SET status = 'LOST'"))



NOTIFICATION = service_migrations("notification")
_NOTE = ("INSERT INTO notifications (id, user_id, kind, subject, body, read, created_at,"
         " event_id) VALUES (?, ?, 'RECEIPT', 's', 'b', ?, ?, ?)")


async def _unread_counts(storage: Storage) -> tuple[dict[str, int], dict[str, int]]:
    """(the kept counts, the counts over the notifications themselves)."""
    async def run(tx: Tx) -> tuple[dict[str, int], dict[str, int]]:
        kept = {str(r[0]): int(r[1]) for r in await tx.fetch(
            "SELECT user_id, unread FROM unread_counts WHERE unread > 0")}
        true = {str(r[0]): int(r[1]) for r in await tx.fetch(
            "SELECT user_id, count(*) FROM notifications WHERE read = 0 GROUP BY user_id")}
        return kept, true

    return await storage.read(run)


async def test_unread_counts_are_backfilled_then_kept_whoever_writes(
        storage_for: OpenStorage) -> None:
    old = await storage_for("notification", migrations=MigrationSet(
        NOTIFICATION.component, NOTIFICATION.directory, upto=1))

    async def before(tx: Tx) -> None:
        for nid, user, read in (("n1", "u1", 0), ("n2", "u1", 0), ("n3", "u1", 1),
                                ("n4", "u2", 0)):
            await tx.run(_NOTE, (nid, user, read, time.time(), f"e-{nid}"))

    await old.write(before)
    await old.close()

    new = await storage_for("notification")
    kept, true = await _unread_counts(new)
    assert kept == true == {"u1": 2, "u2": 1}

    async def churn(tx: Tx) -> None:  # plain SQL: no code path keeps the counts but the schema
        await tx.run(_NOTE, ("n5", "u2", 0, time.time(), "e-n5"))
        await tx.run(_NOTE, ("n6", "u3", 1, time.time(), "e-n6"))
        await tx.run("UPDATE notifications SET read = 1 WHERE id = ?", ("n1",))
        await tx.run("UPDATE notifications SET read = 1 WHERE id = ?", ("n1",))  # no change
        await tx.run("UPDATE notifications SET read = 0 WHERE id = ?", ("n3",))
        await tx.run("UPDATE notifications SET user_id = 'u3' WHERE id = ?", ("n2",))
        await tx.run("DELETE FROM notifications WHERE id = ?", ("n4",))

    await new.write(churn)
    kept, true = await _unread_counts(new)
    assert kept == true == {"u1": 1, "u2": 1, "u3": 1}
