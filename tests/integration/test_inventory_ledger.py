"""The stock ledger on both backends: appends with their projection and outbox rows in one
unit of work, snapshots, time travel, history pages, optimistic concurrency, the upgrade
of a database from before the ledger, rebuild and verify."""

from __future__ import annotations

import asyncio
import itertools
import time
from collections.abc import Awaitable, Callable
from functools import partial
from typing import Any, TypeVar

import pytest

from services.common.errors import FailedPrecondition, NotFound
from services.common.schema import MigrationSet, service_migrations
from services.common.storage import IntegrityError, Storage, Tx
from services.inventory import eventstore as es
from services.inventory import ledger
from services.inventory.domain import Line, Status, Stock, outcome
from services.inventory.ledger import Kind, Level
from services.inventory.rebuild import rebuild
from services.inventory.store import InventoryStore
from tests.fixtures_storage import OpenStorage, both_backends

pytestmark = [pytest.mark.timeout(120), both_backends]

T = TypeVar("T")
INVENTORY = service_migrations("inventory")


async def rows(storage: Storage, sql: str, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    async def run(tx: Tx) -> list[tuple[Any, ...]]:
        return [tuple(r) for r in await tx.fetch(sql, params)]

    return await storage.read(run)


async def events_of(storage: Storage, pid: str) -> list[tuple[int, str, str, int]]:
    return [(int(v), str(k), str(o), int(q)) for v, k, o, q in await rows(
        storage, "SELECT version, kind, order_id, quantity FROM inventory_events"
        " WHERE product_id = ? ORDER BY version", (pid,))]


async def projection(storage: Storage, pid: str) -> tuple[int, ...]:
    (row,) = await rows(storage, "SELECT available, reserved, sold, total, version FROM stock"
                        " WHERE product_id = ?", (pid,))
    return tuple(int(v) for v in row)


async def test_every_change_is_an_event_with_its_projection_and_outbox_row(
        storage_for: OpenStorage) -> None:
    storage = await storage_for("inventory")
    store = InventoryStore(storage)
    await store.set_stock("mug", 10)
    await store.set_stock("pen", 5)
    r = await store.reserve("o1", [Line("mug", 3), Line("pen", 1)])
    assert r.status is Status.RESERVED
    await store.commit("o1")
    await store.restock("o1")
    await store.reserve("o2", [Line("mug", 2)])
    await store.release("o2")
    await store.set_stock("mug", 4)
    assert await events_of(storage, "mug") == [
        (1, "stock_set", "", 10), (2, "reserved", "o1", 3), (3, "committed", "o1", 3),
        (4, "restocked", "o1", 3), (5, "reserved", "o2", 2), (6, "released", "o2", 2),
        (7, "stock_set", "", 4)]
    assert await events_of(storage, "pen") == [
        (1, "stock_set", "", 5), (2, "reserved", "o1", 1), (3, "committed", "o1", 1),
        (4, "restocked", "o1", 1)]
    assert await projection(storage, "mug") == (4, 0, 0, 4, 7)
    subjects = [s for (s,) in await rows(storage, "SELECT subject FROM outbox ORDER BY id")]
    assert subjects == ["inventory.reserved", "inventory.restocked", "inventory.reserved",
                        "inventory.released"]
    # The projection is exactly the replay of its stream.
    assert (await rebuild(storage, verify_only=True, from_scratch=True)).differences == []


async def test_a_repeat_finds_its_events_and_appends_none(storage_for: OpenStorage) -> None:
    storage = await storage_for("inventory")
    store = InventoryStore(storage)
    await store.set_stock("mug", 10)
    first = await store.reserve("o1", [Line("mug", 3)])
    again = await store.reserve("o1", [Line("mug", 3)])
    assert again == first
    await store.commit("o1")
    await store.commit("o1")
    await store.release("o9")  # a tombstone: no stock moves, no event
    assert [k for _, k, _, _ in await events_of(storage, "mug")] == [
        "stock_set", "reserved", "committed"]

    async def duplicate(tx: Tx) -> None:  # the database refuses a second one too
        await tx.run("INSERT INTO inventory_events (product_id, version, kind, order_id,"
                     " quantity, recorded_at) VALUES ('mug', 9, 'reserved', 'o1', 3, 1.0)")

    with pytest.raises(IntegrityError):
        await storage.write(duplicate)


async def _run_sql(sql: str, tx: Tx) -> int:
    return await tx.run(sql)


async def test_events_are_immutable(storage_for: OpenStorage) -> None:
    storage = await storage_for("inventory")
    await InventoryStore(storage).set_stock("mug", 10)
    for sql in ("UPDATE inventory_events SET quantity = 99",
                "DELETE FROM inventory_events"):
        with pytest.raises(IntegrityError, match="immutable"):
            await storage.write(partial(_run_sql, sql))
    assert await events_of(storage, "mug") == [(1, "stock_set", "", 10)]


async def test_snapshots_every_n_events_and_loading_reads_snapshot_plus_rest(
        storage_for: OpenStorage) -> None:
    storage = await storage_for("inventory")
    store = InventoryStore(storage, snapshot_every=5)
    await store.set_stock("mug", 100)
    for i in range(11):  # versions 2..12
        await store.reserve(f"o{i}", [Line("mug", 1)])
    snaps = await rows(storage, "SELECT version, format FROM inventory_snapshots"
                       " WHERE product_id = 'mug' ORDER BY version")
    assert snaps == [(5, ledger.SNAPSHOT_FORMAT), (10, ledger.SNAPSHOT_FORMAT)]

    async def load(tx: Tx) -> tuple[es.Loaded, es.Loaded]:
        return (await es.load(tx, "mug"), await es.load(tx, "mug", snapshots=False))

    from_snap, full = await storage.read(load)
    assert from_snap.replayed == 2 and full.replayed == 12
    assert from_snap.level == full.level == Level(89, 11, 0, 100, 12)

    # A snapshot of another format (a changed fold) is ignored, even if it is the newest.
    async def foreign(tx: Tx) -> None:
        await tx.run("INSERT INTO inventory_snapshots (product_id, version, format, state,"
                     " recorded_at) VALUES ('mug', 12, ?, '{\"anything\": 1}', ?)",
                     (ledger.SNAPSHOT_FORMAT + 1, time.time()))

    await storage.write(foreign)
    again, _ = await storage.read(load)
    assert again.level == full.level and again.replayed == 2


async def test_stock_as_of_a_time_and_before_the_first_event(storage_for: OpenStorage) -> None:
    storage = await storage_for("inventory")
    store = InventoryStore(storage, snapshot_every=2)
    t0 = time.time()
    await store.set_stock("mug", 10)
    await asyncio.sleep(0.02)
    t1 = time.time()
    await store.reserve("o1", [Line("mug", 4)])
    await store.commit("o1")
    await asyncio.sleep(0.02)
    t2 = time.time()
    await store.set_stock("mug", 1)
    assert await store.stock_at("mug", t1) == Stock("mug", 10, 0, 0)
    assert await store.stock_at("mug", t2) == Stock("mug", 6, 0, 4)
    assert await store.stock_at("mug", time.time()) == await store.get_stock("mug")
    with pytest.raises(NotFound, match="had no stock yet"):
        await store.stock_at("mug", t0 - 1)
    with pytest.raises(NotFound, match="product nope not found"):
        await store.stock_at("nope", t2)


async def test_history_pages_newest_first_with_the_stock_after_each_event(
        storage_for: OpenStorage) -> None:
    storage = await storage_for("inventory")
    store = InventoryStore(storage, snapshot_every=3)
    await store.set_stock("mug", 20)
    for i in range(6):
        await store.reserve(f"o{i}", [Line("mug", 2)])
    await store.commit("o0")
    seen = []
    before = None
    while True:
        page = await store.history("mug", 3, before)
        seen.extend(page.entries)
        if page.next_before is None:
            break
        before = page.next_before
    assert [e.version for e in seen] == list(range(8, 0, -1))
    assert (seen[0].kind, seen[0].order_id, seen[0].stock) == (
        Kind.COMMITTED, "o0", Stock("mug", 8, 10, 2))
    assert (seen[-1].kind, seen[-1].quantity, seen[-1].stock) == (
        Kind.STOCK_SET, 20, Stock("mug", 20, 0, 0))
    assert all(a.at >= b.at for a, b in itertools.pairwise(seen))
    assert (await store.history("mug", 100, None)).next_before is None
    with pytest.raises(NotFound):
        await store.history("nope", 10, None)


class _Racing:
    """A Tx whose first guarded stock update meets a head moved by another writer (the
    row's version bumped just before it, as a concurrent append would leave it)."""

    def __init__(self, tx: Tx, fired: list[bool]) -> None:
        self._tx = tx
        self._fired = fired

    def __getattr__(self, name: str) -> Any:
        return getattr(self._tx, name)

    async def run(self, sql: str, params: Any = ()) -> int:
        if sql.startswith("UPDATE stock SET available") and not self._fired:
            self._fired.append(True)
            await self._tx.run("UPDATE stock SET version = version + 1 WHERE product_id = ?",
                               (params[-2],))
        return await self._tx.run(sql, params)


class _RacingStorage:
    def __init__(self, inner: Storage) -> None:
        self.inner = inner
        self.fired: list[bool] = []
        self.writes = 0

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    async def write(self, fn: Callable[[Tx], Awaitable[T]], *, locked: bool = False) -> T:
        self.writes += 1
        return await self.inner.write(lambda tx: fn(_Racing(tx, self.fired)),
                                      locked=locked)


async def test_a_conflicting_append_is_retried_on_fresh_state_never_lost(
        storage_for: OpenStorage) -> None:
    inner = await storage_for("inventory")
    await InventoryStore(inner).set_stock("mug", 10)
    racing = _RacingStorage(inner)
    store = InventoryStore(racing)
    r = await store.reserve("o1", [Line("mug", 3)])
    assert r.status is Status.RESERVED
    assert store.conflicts == 1 and racing.writes == 2
    # The conflicting attempt left nothing: one reservation, one event, one outbox row.
    assert await events_of(inner, "mug") == [(1, "stock_set", "", 10), (2, "reserved", "o1", 3)]
    assert await projection(inner, "mug") == (7, 3, 0, 10, 2)
    assert await rows(inner, "SELECT count(*) FROM outbox") == [(1,)]


async def test_a_stale_head_raises_version_conflict_and_writes_nothing(
        storage_for: OpenStorage) -> None:
    storage = await storage_for("inventory")
    store = InventoryStore(storage)
    await store.set_stock("mug", 10)

    async def stale(tx: Tx) -> None:
        head = (await es.heads(tx, ["mug"]))["mug"]
        await es.append(tx, head, "mug", [ledger.Event(Kind.STOCK_SET, 5)], snapshot_every=0)
        await es.append(tx, head, "mug", [ledger.Event(Kind.STOCK_SET, 6)], snapshot_every=0)

    with pytest.raises(es.VersionConflict):
        await storage.write(stale)
    assert await events_of(storage, "mug") == [(1, "stock_set", "", 10)]


async def test_concurrent_reservations_of_one_product_take_contiguous_versions(
        storage_for: OpenStorage) -> None:
    storage = await storage_for("inventory", durable=True)
    store = InventoryStore(storage, snapshot_every=7)
    await store.set_stock("mug", 25)
    results = await asyncio.gather(*(store.reserve(f"o{i}", [Line("mug", 1)])
                                     for i in range(40)), return_exceptions=True)
    statuses = [r.status for r in results if not isinstance(r, BaseException)]
    assert len(statuses) == 40, [r for r in results if isinstance(r, BaseException)]
    assert statuses.count(Status.RESERVED) == 25
    assert [v for v, _, _, _ in await events_of(storage, "mug")] == list(range(1, 27))
    assert await projection(storage, "mug") == (0, 25, 0, 25, 26)
    report = await rebuild(storage, verify_only=True, from_scratch=True)
    assert report.differences == [] and report.events == 26


async def test_a_database_from_before_the_ledger_is_upgraded_keeping_its_stock(
        storage_for: OpenStorage) -> None:
    old = await storage_for("inventory", migrations=MigrationSet(
        INVENTORY.component, INVENTORY.directory, upto=2))

    async def fill(tx: Tx) -> None:
        await tx.run("INSERT INTO stock (product_id, available, reserved, sold, total,"
                     " updated_at) VALUES ('mug', 6, 3, 1, 10, 100.0), ('pen', 4, 0, 0, 4, 50.0)")
        await tx.run("INSERT INTO reservations (order_id, status, items, reason, created_at,"
                     " updated_at) VALUES ('o1', 'RESERVED', '[[\"mug\",3]]', '', 1.0, 1.0),"
                     " ('o0', 'COMMITTED', '[[\"mug\",1]]', '', 1.0, 1.0)")

    await old.write(fill)
    await old.close()

    new = await storage_for("inventory")
    assert await rows(new, "SELECT product_id, version, kind, quantity, carried_reserved,"
                      " carried_sold, recorded_at FROM inventory_events ORDER BY product_id") == [
        ("mug", 1, "stock_set", 6, 3, 1, 100.0), ("pen", 1, "stock_set", 4, 0, 0, 50.0)]
    assert await projection(new, "mug") == (6, 3, 1, 10, 1)
    store = InventoryStore(new)
    assert await store.stock_at("mug", 100.0) == Stock("mug", 6, 3, 1)
    # The reservations made before go on as events of the same streams.
    await store.commit("o1")
    await store.restock("o0")
    assert await store.get_stock("mug") == Stock("mug", 7, 0, 3)
    assert [k for _, k, _, _ in await events_of(new, "mug")] == [
        "stock_set", "committed", "restocked"]
    assert (await rebuild(new, verify_only=True, from_scratch=True)).differences == []


async def test_verify_finds_a_corrupted_projection_and_rebuild_fixes_it(
        storage_for: OpenStorage) -> None:
    storage = await storage_for("inventory")
    store = InventoryStore(storage, snapshot_every=4)
    for pid in ("a", "b", "c"):
        await store.set_stock(pid, 10)
    for i in range(6):
        await store.reserve(f"o{i}", [Line("b", 1)])

    async def corrupt(tx: Tx) -> None:  # a bad hand edit the CHECK cannot tell from a count
        await tx.run("UPDATE stock SET available = 1, reserved = 15, total = 16"
                     " WHERE product_id = 'b'")
        await tx.run("DELETE FROM stock WHERE product_id = 'c'")

    await storage.write(corrupt)
    for from_scratch in (False, True):
        report = await rebuild(storage, verify_only=True, from_scratch=from_scratch)
        assert (report.products, report.events) == (3, 1 + (7 if from_scratch else 3) + 1)
        assert [(d.product_id, d.problem) for d in report.differences] == [
            ("b", "served available 1 (events say 4), reserved 15 (events say 6),"
                  " total 16 (events say 10)"),
            ("c", "no stock row")]
        assert report.rewritten == 0
    assert await projection(storage, "b") == (1, 15, 0, 16, 7)  # verify wrote nothing

    fixed = await rebuild(storage, verify_only=False, from_scratch=False)
    assert fixed.rewritten == 2
    assert await projection(storage, "b") == (4, 6, 0, 10, 7)
    assert await projection(storage, "c") == (10, 0, 0, 10, 1)
    assert (await rebuild(storage, verify_only=True, from_scratch=True)).differences == []
    # Appends go on from the rebuilt heads.
    await store.reserve("o9", [Line("b", 4)])
    with pytest.raises(FailedPrecondition):
        outcome(await store.reserve("o10", [Line("b", 1)]))


async def test_from_scratch_finds_a_bad_snapshot_and_rebuild_drops_it(
        storage_for: OpenStorage) -> None:
    storage = await storage_for("inventory")
    store = InventoryStore(storage, snapshot_every=2)
    await store.set_stock("a", 10)
    for i in range(3):
        await store.reserve(f"o{i}", [Line("a", 1)])  # snapshots at 2 and 4

    async def corrupt(tx: Tx) -> None:
        await tx.run("UPDATE inventory_snapshots SET state = ? WHERE product_id = 'a'"
                     " AND version = 2", (ledger.snapshot_state(Level(5, 5, 0, 10, 2)),))

    await storage.write(corrupt)
    assert (await rebuild(storage, verify_only=True, from_scratch=False)).differences == []
    found = await rebuild(storage, verify_only=True, from_scratch=True)
    assert [d.problem for d in found.differences] == [
        "snapshot at version 2 differs from the replay"]
    await rebuild(storage, verify_only=False, from_scratch=True)
    assert await rows(storage, "SELECT version FROM inventory_snapshots ORDER BY version") == [
        (4,)]
    assert (await rebuild(storage, verify_only=True, from_scratch=True)).differences == []


async def test_verify_names_a_stream_that_cannot_be_replayed_and_rebuild_leaves_it(
        storage_for: OpenStorage) -> None:
    storage = await storage_for("inventory")
    store = InventoryStore(storage, snapshot_every=2)
    await store.set_stock("a", 3)
    await store.set_stock("b", 3)
    for i in range(3):
        await store.reserve(f"o{i}", [Line("a", 1)])  # snapshot of a at 2 and 4

    async def bad_event(tx: Tx) -> None:  # appended behind the store's back: it cannot fold
        await tx.run("INSERT INTO inventory_events (product_id, version, kind, order_id,"
                     " quantity, recorded_at) VALUES ('a', 5, 'released', 'o9', 99, ?)",
                     (time.time(),))
        # and the newest snapshot damaged: loading falls back to the one before it
        await tx.run("UPDATE inventory_snapshots SET state = 'garbage' WHERE product_id = 'a'"
                     " AND version = 4")

    await storage.write(bad_event)
    for from_scratch in (False, True):
        report = await rebuild(storage, verify_only=False, from_scratch=from_scratch)
        assert [(d.product_id, d.replayed) for d in report.differences] == [("a", None)]
        assert report.differences[0].problem.startswith(
            "events cannot be replayed: release 99 with 3 reserved")
        assert report.rewritten == 0  # nothing to rewrite it from
    assert await projection(storage, "a") == (0, 3, 0, 3, 4)
