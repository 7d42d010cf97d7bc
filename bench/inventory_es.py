"""The event-sourced inventory against the stock table it replaced, in one run.

    python -m bench.inventory_es [--backend sqlite|postgres] [--quick]

1. ReserveStock throughput at the store: the ledger (events + guarded projection update +
   snapshot every INVENTORY_SNAPSHOT_EVERY + reservation row + outbox row in one unit of
   work) against the previous plain table update (stock UPDATE + reservation row + outbox
   row), same storage settings (durable), same concurrency, rounds interleaved.
2. Rebuild (replay every stream and compare with the stock rows) of 1,000,000 events
   across 1,000 products, from snapshots and from the first event.
3. Loading one product with 100,000 events, from its latest snapshot and from scratch.

The ledgers of 2 and 3 are bulk-filled straight into the tables (valid streams, their
projection rows and snapshots every 100 events), not through the API. Figures are printed
and written as JSON (--out); nothing here passes or fails on time.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import shutil
import statistics
import tempfile
import time
from collections.abc import Awaitable, Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

from shop.inventory.v1 import inventory_pb2

from services.common.events import INVENTORY_RESERVED
from services.common.schema import service_migrations
from services.common.settings import Settings
from services.common.storage import Storage, Tx, open_storage
from services.inventory import eventstore as es
from services.inventory import ledger
from services.inventory.convert import reservation_pb
from services.inventory.domain import Line, Reservation, Status, decide_reserve
from services.inventory.ledger import Event, Kind, Level
from services.inventory.rebuild import rebuild
from services.inventory.store import DEFAULT_SNAPSHOT_EVERY, InventoryStore

__all__ = ["PlainReserve", "main"]

_TAKE = ("UPDATE stock SET available = available - ?, reserved = reserved + ?, updated_at = ?"
         " WHERE product_id = ? AND available >= ?")
_INSERT_RESERVATION = ("INSERT INTO reservations (order_id, status, items, reason, created_at,"
                       " updated_at) VALUES (?, ?, ?, ?, ?, ?)")


class PlainReserve:
    """ReserveStock as the stock table did it before the ledger: the same reads and
    decision (locked, as a `locked` unit of work), then an UPDATE per line instead of an
    append."""

    def __init__(self, storage: Storage) -> None:
        self.storage = storage

    async def reserve(self, order_id: str, lines: Sequence[Line]) -> Reservation:
        lines = tuple(lines)

        async def run(tx: Tx) -> Reservation:
            row = await tx.fetchrow("SELECT order_id, status, items, reason FROM reservations"
                                    " WHERE order_id = ?" + tx.for_update, (order_id,))
            if row is not None:
                return Reservation(order_id, Status(row["status"]), lines, row["reason"])
            marks = ",".join("?" * len(lines))
            available = {r[0]: int(r[1]) for r in await tx.fetch(
                f"SELECT product_id, available FROM stock WHERE product_id IN ({marks})"
                f" ORDER BY product_id{tx.for_update}", [li.product_id for li in lines])}
            decided = decide_reserve(order_id, lines, available)
            now = time.time()
            if decided.status is Status.RESERVED:
                for li in decided.items:
                    moved = await tx.run(_TAKE, (li.quantity, li.quantity, now, li.product_id,
                                                 li.quantity))
                    assert moved == 1
            items = json.dumps([[li.product_id, li.quantity] for li in decided.items])
            await tx.run(_INSERT_RESERVATION, (order_id, decided.status.value, items,
                                               decided.reason, now, now))
            if decided.status is Status.RESERVED:
                await tx.emit(INVENTORY_RESERVED,
                              inventory_pb2.StockReserved(reservation=reservation_pb(decided)),
                              source="inventory", aggregate_id=order_id)
            return decided

        return await self.storage.write(run, locked=True)


Reserve = Callable[[str, Sequence[Line]], Awaitable[Reservation]]


class Backend:
    """Fresh, migrated inventory storages of one kind, each in its own file/database."""

    def __init__(self, kind: str, root: Path) -> None:
        self.kind = kind
        self.root = root
        self._pg: Any = None
        self._pg_dir = root
        self._n = 0

    def __enter__(self) -> Backend:
        if self.kind == "postgres":
            from ops.pgserve import EmbeddedPostgres

            # Right under the system temp dir: the server runs as its own user (as root),
            # which must be able to reach its data dir.
            self._pg_dir = Path(tempfile.mkdtemp(prefix="shop-bench-pg-"))
            self._pg = EmbeddedPostgres(self._pg_dir).start()
        return self

    def __exit__(self, *exc: object) -> None:
        if self._pg is not None:
            self._pg.stop()
            shutil.rmtree(self._pg_dir, ignore_errors=True)

    async def fresh(self) -> Storage:
        self._n += 1
        name = f"bench{self._n}"
        url = ""
        if self._pg is not None:
            url = self._pg.url(f"shop_inventory_{name}")  # created on first open
        settings = Settings(service=f"inventory-{name}", data_dir=self.root, database_url=url)
        return await open_storage(settings, service_migrations("inventory"), durable=True)


# --- 1. ReserveStock throughput -----------------------------------------------------------


async def _reserve_round(reserve: Reserve, tag: str, n: int, in_flight: int,
                         products: int) -> float:
    """Reservations per second: `n` one-line orders, `in_flight` at a time."""
    queue = iter(range(n))

    async def worker() -> None:
        for i in queue:
            r = await reserve(f"{tag}-{i}", [Line(f"p{i % products}", 1)])
            assert r.status is Status.RESERVED

    t0 = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(in_flight)))
    return n / (time.perf_counter() - t0)


async def bench_reserve(backend: Backend, *, n: int, rounds: int, in_flight: int,
                        products: int = 100) -> dict[str, Any]:
    es_store = InventoryStore(await backend.fresh(), snapshot_every=DEFAULT_SNAPSHOT_EVERY)
    plain_storage = await backend.fresh()
    plain = PlainReserve(plain_storage)
    stock = [(f"p{i}", 10_000_000) for i in range(products)]
    await es_store.seed(stock)  # stream v1 + projection rows for both:
    await InventoryStore(plain_storage).seed(stock)  # the plain table just has the rows
    # A warm-up round each, not counted (the first writes to a fresh file grow it).
    await _reserve_round(es_store.reserve, "es-warm", n // 2, in_flight, products)
    await _reserve_round(plain.reserve, "pl-warm", n // 2, in_flight, products)
    es_rates: list[float] = []
    plain_rates: list[float] = []
    for k in range(rounds):  # interleaved: both see the same machine load
        es_rates.append(await _reserve_round(es_store.reserve, f"es{k}", n, in_flight, products))
        plain_rates.append(await _reserve_round(plain.reserve, f"pl{k}", n, in_flight,
                                                products))
        _say(f"  round {k + 1}: ledger {es_rates[-1]:,.0f}/s, table {plain_rates[-1]:,.0f}/s")
    diffs = await rebuild(es_store.storage, verify_only=True, from_scratch=True)
    assert diffs.differences == [], diffs.differences[:3]
    await es_store.storage.close()
    await plain_storage.close()
    es_rate, plain_rate = statistics.median(es_rates), statistics.median(plain_rates)
    return {"ledger_per_s": round(es_rate), "table_per_s": round(plain_rate),
            "ratio": round(es_rate / plain_rate, 3), "orders_per_round": n,
            "rounds": rounds, "in_flight": in_flight, "products": products,
            "ledger_rounds": [round(r) for r in es_rates],
            "table_rounds": [round(r) for r in plain_rates]}


# --- bulk fill ------------------------------------------------------------------------------


def _stream(n: int) -> Iterator[Event]:
    """A valid stream of `n` events: a count, then reservations that are committed,
    released, restocked in turn."""
    yield Event(Kind.STOCK_SET, 1_000_000)
    i = 1
    order = 0
    while i < n:
        order += 1
        oid = f"o{order}"
        yield Event(Kind.RESERVED, 2, oid)
        i += 1
        if i >= n:
            return
        kind = Kind.COMMITTED if order % 3 else Kind.RELEASED
        yield Event(kind, 2, oid)
        i += 1
        if kind is Kind.COMMITTED and order % 5 == 0 and i < n:
            yield Event(Kind.RESTOCKED, 2, oid)
            i += 1


_BATCH_ROWS = 20_000


async def bulk_fill(storage: Storage, streams: dict[str, int], every: int) -> None:
    """Events, projection rows and snapshots (every `every` events) straight into the
    tables, a batch of rows per unit of work."""
    t0 = 1_700_000_000.0
    for pid, n in streams.items():
        level = ledger.EMPTY
        events: list[tuple[Any, ...]] = []
        snaps: list[tuple[Any, ...]] = []
        at = t0
        for e in _stream(n):
            level = ledger.apply(level, e)
            at = t0 + level.version * 0.001
            events.append((pid, level.version, e.kind.value, e.order_id, e.quantity, None, None,
                           at))
            if every and level.version % every == 0:
                snaps.append((pid, level.version, ledger.SNAPSHOT_FORMAT,
                              ledger.snapshot_state(level), at))
        final: Level = level
        for start in range(0, len(events), _BATCH_ROWS):
            chunk = events[start:start + _BATCH_ROWS]

            async def put(tx: Tx, chunk: list[tuple[Any, ...]] = chunk) -> None:
                await tx.run_many(
                    "INSERT INTO inventory_events (product_id, version, kind, order_id,"
                    " quantity, carried_reserved, carried_sold, recorded_at)"
                    " VALUES (?, ?, ?, ?, ?, ?, ?, ?)", chunk)

            await storage.write(put)

        async def head(tx: Tx, pid: str = pid, snaps: list[tuple[Any, ...]] = snaps,
                       lv: Level = final, at: float = at) -> None:
            if snaps:
                await tx.run_many("INSERT INTO inventory_snapshots (product_id, version,"
                                  " format, state, recorded_at) VALUES (?, ?, ?, ?, ?)", snaps)
            await tx.run("INSERT INTO stock (product_id, available, reserved, sold, total,"
                         " version, updated_at) VALUES (?, ?, ?, ?, ?, ?, ?)",
                         (pid, lv.available, lv.reserved, lv.sold, lv.total, lv.version, at))

        await storage.write(head)


# --- 2. rebuild, 3. loading one product -------------------------------------------------------


def _lengths(products: int, mean: int) -> dict[str, int]:
    """Stream lengths spread over mean-50 .. mean+49 (so a stream ends anywhere between two
    snapshots, not just on one), `products * mean` events in all."""
    lengths = {f"r{i:04d}": mean + (i % 100) - 50 for i in range(products)}
    short = products * mean - sum(lengths.values())
    for pid in list(lengths)[:short]:
        lengths[pid] += 1
    assert sum(lengths.values()) == products * mean
    return lengths



async def bench_rebuild(backend: Backend, *, products: int, per_product: int) -> dict[str, Any]:
    storage = await backend.fresh()
    t0 = time.perf_counter()
    await bulk_fill(storage, _lengths(products, per_product), DEFAULT_SNAPSHOT_EVERY)
    fill_s = time.perf_counter() - t0
    _say(f"  filled {products * per_product:,} events in {fill_s:.1f} s")
    out: dict[str, Any] = {"events": products * per_product, "products": products,
                           "snapshot_every": DEFAULT_SNAPSHOT_EVERY, "fill_s": round(fill_s, 1)}
    for label, scratch in (("with_snapshots", False), ("without_snapshots", True)):
        t0 = time.perf_counter()
        report = await rebuild(storage, verify_only=False, from_scratch=scratch)
        took = time.perf_counter() - t0
        assert report.differences == [] and report.products == products, report.differences[:3]
        out[f"{label}_s"] = round(took, 3)
        out[f"{label}_events_replayed"] = report.events
        _say(f"  rebuild {label.replace('_', ' ')}: {took:.2f} s "
             f"({report.events:,} events replayed)")
    out["ratio"] = round(out["with_snapshots_s"] / out["without_snapshots_s"], 4)
    await storage.close()
    return out


async def bench_load(backend: Backend, *, events: int, repeats: int) -> dict[str, Any]:
    storage = await backend.fresh()
    await bulk_fill(storage, {"big": events}, DEFAULT_SNAPSHOT_EVERY)
    out: dict[str, Any] = {"events": events, "snapshot_every": DEFAULT_SNAPSHOT_EVERY}
    levels = []
    # At the head (a snapshot at exactly 100,000), one event before it (the worst case:
    # the snapshot 99 events back), and with no snapshot.
    cases = (("with_snapshot", True, None), ("with_snapshot_99_after", True, events - 1),
             ("without_snapshot", False, None))
    for label, snapshots, upto in cases:
        times = []
        for _ in range(repeats):
            async def load(tx: Tx, snapshots: bool = snapshots,
                           upto: int | None = upto) -> es.Loaded:
                return await es.load(tx, "big", snapshots=snapshots, upto_version=upto)

            t0 = time.perf_counter()
            loaded = await storage.read(load)
            times.append(time.perf_counter() - t0)
        if upto is None:
            levels.append(loaded.level)
        out[f"{label}_ms"] = round(statistics.median(times) * 1000, 2)
        out[f"{label}_events_replayed"] = loaded.replayed
        _say(f"  load {label.replace('_', ' ')}: {out[f'{label}_ms']:.2f} ms "
             f"({loaded.replayed:,} events replayed)")
    assert levels[0] == levels[1], levels
    await storage.close()
    return out


def _say(msg: str) -> None:
    print(msg, flush=True)


async def run(args: argparse.Namespace) -> dict[str, Any]:
    root = Path(tempfile.mkdtemp(prefix="shop-bench-inventory-"))
    try:
        with Backend(args.backend, root) as backend:
            quick = args.quick
            _say(f"inventory ledger bench on {args.backend}")
            _say("1. ReserveStock throughput, ledger vs plain table update:")
            reserve = await bench_reserve(backend, n=500 if quick else 4000,
                                          rounds=2 if quick else 5, in_flight=32)
            _say(f"  median: ledger {reserve['ledger_per_s']:,}/s, table "
                 f"{reserve['table_per_s']:,}/s, ratio {reserve['ratio']:.2f}")
            _say("2. rebuild:")
            rebuilt = await bench_rebuild(backend, products=100 if quick else 1000,
                                          per_product=100 if quick else 1000)
            _say(f"  with snapshots / without: {rebuilt['ratio']:.1%}")
            _say("3. loading one product:")
            loaded = await bench_load(backend, events=10_000 if quick else 100_000,
                                      repeats=3 if quick else 5)
            return {"backend": args.backend, "reserve": reserve, "rebuild": rebuilt,
                    "load": loaded}
    finally:
        shutil.rmtree(root, ignore_errors=True)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.inventory_es",
                                     description=__doc__.splitlines()[0] if __doc__ else "")
    parser.add_argument("--backend", choices=("sqlite", "postgres"), default="sqlite")
    parser.add_argument("--quick", action="store_true", help="small sizes: a smoke run")
    parser.add_argument("--out", type=Path, default=None, help="write the figures as JSON")
    args = parser.parse_args(argv)
    result = asyncio.run(run(args))
    text = json.dumps(result, indent=2)
    if args.out is not None:
        args.out.write_text(text + "\n")
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
