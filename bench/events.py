"""Shop's event path: OutboxRelay publishing an outbox backlog, then an EventConsumer
(inbox, one INSERT per event) consuming what the relay published.

`python -m bench.events --nats URL --data DIR --seconds S --warmup W [--database-url URL]`
prints one JSON line {"outbox": Measured, "consumer": Measured}. Both stores are durable
(SQLite: WAL + synchronous=FULL, as the order service's are; PostgreSQL: the server's
defaults, databases shop_bench_outbox / shop_bench_inbox). The relay is shop's own
(`OutboxRelay` / `PgOutboxRelay`); the bench only subclasses it to time each batch.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import uvloop
from shop.order.v1 import order_pb2

from bench.raw.jetstream import sample_event
from bench.stats import Measured, percentile
from ops.process import operator_nats
from services.common.bus import Bus
from services.common.consumer import EventConsumer, Route
from services.common.db import Database
from services.common.events import ORDER_CREATED
from services.common.outbox import OutboxRelay
from services.common.pg import PgDatabase
from services.common.pg_relay import PgOutboxRelay
from services.common.schema import COMMON, MigrationSet
from services.common.storage import Storage, Tx

__all__ = ["main"]

_FILL_TX = 500  # events per enqueue transaction while filling the backlog


class _TimedRelay(OutboxRelay):
    def __init__(self, db: Storage, bus: Bus) -> None:
        super().__init__(db, bus)
        self.batch_ms: list[float] = []

    async def relay_once(self) -> bool:
        t0 = time.perf_counter()
        more = await super().relay_once()
        if self.stats.published:
            self.batch_ms.append((time.perf_counter() - t0) * 1000)
        return more


class _TimedPgRelay(PgOutboxRelay):
    def __init__(self, db: PgDatabase, bus: Bus) -> None:
        super().__init__(db, bus)
        self.batch_ms: list[float] = []

    async def relay_once(self) -> tuple[bool, bool]:
        t0 = time.perf_counter()
        more = await super().relay_once()
        if self.stats.published:
            self.batch_ms.append((time.perf_counter() - t0) * 1000)
        return more


class _TimedConsumer(EventConsumer):
    batch_ms: list[float]

    async def process(self, msgs: Any) -> None:
        t0 = time.perf_counter()
        await super().process(msgs)
        self.batch_ms.append((time.perf_counter() - t0) * 1000)


async def _fill(db: Storage, n: int) -> None:
    payload = sample_event()
    left = n
    while left > 0:
        count = min(left, _FILL_TX)

        async def run(tx: Tx, count: int = count) -> None:
            for _ in range(count):
                await tx.emit(ORDER_CREATED, payload, source="bench",
                              aggregate_id=uuid.uuid4().hex, correlation_id=uuid.uuid4().hex)

        await db.write(run)
        left -= _FILL_TX


async def _relay_until(relay: _TimedRelay | _TimedPgRelay, target: int, cap_s: float) -> float:
    """Run the relay until `target` events in all are published; the time it took."""
    t0 = time.perf_counter()
    task = asyncio.create_task(relay.run())
    try:
        while True:
            if relay.stats.published >= target or time.perf_counter() - t0 >= cap_s:
                return time.perf_counter() - t0
            await asyncio.sleep(0.002)
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


async def _effect(tx: Tx, env: Any, payload: Any) -> None:
    await tx.run("INSERT INTO effects (event_id, order_id) VALUES (?, ?)",
                 (env.id, payload.order.id))


def _effects_migrations(data_dir: Path) -> MigrationSet:
    d = data_dir / "effects-migrations"
    d.mkdir(parents=True, exist_ok=True)
    sql = "CREATE TABLE IF NOT EXISTS effects (event_id TEXT PRIMARY KEY, order_id TEXT);\n"
    for dialect in ("sqlite", "postgres"):
        (d / f"0001_effects.{dialect}.sql").write_text(sql)
    return MigrationSet("effects", d)


async def _open(data_dir: Path, name: str, server_url: str,
                migrations: Sequence[MigrationSet]) -> Storage:
    """SQLite under data_dir, or database `shop_<name>` on the PostgreSQL server."""
    if server_url:
        parts = urlsplit(server_url)
        url = urlunsplit((parts.scheme, parts.netloc, f"/shop_{name}", parts.query, ""))
        return await PgDatabase.open(url, migrations=[COMMON, *migrations])
    return await Database.open(data_dir / f"{name}.db", durable=True,
                               migrations=[COMMON, *migrations])


async def run(url: str, data_dir: Path, seconds: float, warmup_s: float,
              server_url: str = "") -> dict[str, object]:
    bus = await Bus.connect(url, name="bench-events", auth=operator_nats())
    await bus.ensure_streams()
    out_db = await _open(data_dir, "bench_outbox", server_url, [])
    relay = (_TimedPgRelay(out_db, bus) if isinstance(out_db, PgDatabase)
             else _TimedRelay(out_db, bus))
    # Warm-up: a small backlog, which also tells how big the timed one must be.
    warm = max(100, int(1500 * warmup_s))
    await _fill(out_db, warm)
    warm_s = await _relay_until(relay, warm, cap_s=30.0 + 10 * warmup_s)
    rate = warm / warm_s if warm_s > 0 else 1000.0
    n = int(min(max(rate * seconds, 200), 100_000))
    await _fill(out_db, n)
    relay.batch_ms.clear()
    elapsed = await _relay_until(relay, warm + n, cap_s=3 * seconds + 30)
    sent = relay.stats.published - warm
    outbox = Measured(sent / elapsed if elapsed else 0.0, percentile(relay.batch_ms, 50),
                      percentile(relay.batch_ms, 99), ok=sent, errors=n - sent, seconds=elapsed,
                      tool="OutboxRelay.run", latency_of=f"one relay batch (<= {relay.batch})",
                      extra={"backlog": n, "failures": relay.stats.failures})
    await out_db.close()

    in_db = await _open(data_dir, "bench_inbox", server_url, [_effects_migrations(data_dir)])
    consumer = _TimedConsumer(bus, in_db, durable="bench-consumer", routes=[
        Route(ORDER_CREATED, order_pb2.OrderCreated, _effect)])
    consumer.batch_ms = []
    total = warm + sent
    task = asyncio.create_task(consumer.run())
    start: float | None = None
    base = 0
    cap = time.perf_counter() + 3 * seconds + 30
    try:
        while time.perf_counter() < cap:
            done = consumer.stats.handled + consumer.stats.duplicates
            if start is None and done >= warm:
                start, base = time.perf_counter(), done
                consumer.batch_ms.clear()
            if done >= total:
                break
            await asyncio.sleep(0.002)
    finally:
        end = time.perf_counter()
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
    handled = consumer.stats.handled + consumer.stats.duplicates - base
    window = end - start if start is not None else 0.0
    consumed = Measured(handled / window if window > 0 else 0.0,
                        percentile(consumer.batch_ms, 50), percentile(consumer.batch_ms, 99),
                        ok=handled, errors=total - base - handled, seconds=window,
                        tool="EventConsumer.run",
                        latency_of=f"one fetched batch (<= {consumer.batch}): decode, tx, acks",
                        extra={"failed": consumer.stats.failed,
                               "dead_lettered": consumer.stats.dead_lettered})
    await in_db.close()
    await bus.close()
    return {"outbox": outbox.to_json(), "consumer": consumed.to_json()}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.events")
    parser.add_argument("--nats", required=True)
    parser.add_argument("--data", required=True)
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--warmup", type=float, default=1.0)
    parser.add_argument("--database-url", default="",
                        help="a PostgreSQL server URL (SHOP_DATABASE_URL form); default SQLite")
    args = parser.parse_args(argv)
    data = Path(args.data)
    data.mkdir(parents=True, exist_ok=True)
    result = uvloop.run(run(args.nats, data, args.seconds, args.warmup, args.database_url))
    sys.stdout.write(json.dumps(result) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
