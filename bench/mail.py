"""Mail delivery: mails per second from the delivery outbox through shop's MailSender to
the `make run` mail catcher (a real subprocess writing .eml files), and the notification
consumer's events/s with mail off and on, in the same run on the same box.

`python -m bench.mail [--events N] [--mails M] [--rounds R]` prints one JSON line:
{"sender": Measured, "consumer_off" / "consumer_rows_only" / "consumer_on": [Measured...],
"rows_only_vs_off", "on_vs_off": ratios of the medians}.

The consumer is shop's EventConsumer with the notification service's own routes, on a
fresh SQLite file and durable each time, reading N user.created events from a real
JetStream (ops.natsd config). rows_only writes the delivery rows with no sender running
(the cost of owing a mail); mail on also runs the sender beside it in the same process
against the catcher, as in the service (the cost of sending). The three modes alternate R
times, so all see the same box. Reported, never a pass/fail test.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import uvloop
from shop.user.v1 import user_pb2

from bench.stats import Measured
from ops.mailcatcher import CatcherProcess
from ops.natsd import NatsServer
from ops.process import operator_nats
from services.common.bus import Bus, OutMsg, envelope_headers
from services.common.consumer import EventConsumer
from services.common.db import Database
from services.common.events import USER_CREATED
from services.common.outbox import new_envelope
from services.common.schema import service_migrations
from services.common.storage import Storage, Tx
from services.notification import domain, handlers, store
from services.notification.mailconfig import MailSettings, parse_smtp_url
from services.notification.metrics import MailMetrics
from services.notification.sender import MailSender
from services.notification.store import DeliveryStore

__all__ = ["main"]

_PUBLISH_CHUNK = 256
_MIGRATIONS = service_migrations("notification")
_CAP_S = 120.0


def _sender(db: Storage, smtp_url: str) -> MailSender:
    settings = MailSettings(target=parse_smtp_url(smtp_url), backoff_s=0.2, backoff_cap_s=1.0)
    return MailSender(DeliveryStore(db), settings, MailMetrics())


async def _publish_users(bus: Bus, n: int) -> None:
    msgs = []
    for i in range(n):
        uid = uuid.uuid4().hex
        env = new_envelope(USER_CREATED, user_pb2.UserCreated(user=user_pb2.User(
            id=uid, email=f"bench-{i}@example.com", name=f"Bench {i}")), source="user",
            aggregate_id=uid, correlation_id=uuid.uuid4().hex)
        msgs.append(OutMsg(env.subject, env.SerializeToString(),
                           envelope_headers(env.id, env.correlation_id, "")))
    for start in range(0, n, _PUBLISH_CHUNK):
        results = await bus.publish_batch(msgs[start:start + _PUBLISH_CHUNK], timeout_s=30)
        failed = [r for r in results if isinstance(r, BaseException)]
        if failed:
            raise RuntimeError(f"publishing the bench events failed: {failed[0]!r}")


async def _count_sent(db: Storage) -> int:
    async def run(tx: Tx) -> int:
        return int(await tx.fetchval("SELECT count(*) FROM deliveries WHERE status = 'SENT'"))

    return await db.read(run)


async def _until(cond: Any, cap_s: float = _CAP_S) -> None:
    deadline = time.perf_counter() + cap_s
    while True:
        if await cond() or time.perf_counter() >= deadline:
            return
        await asyncio.sleep(0.005)


async def sender_rate(data: Path, smtp_url: str, m: int) -> Measured:
    """M owed mails drained into the catcher by one MailSender, nothing else running."""
    db = await Database.open(data / "bench-sender.db", migrations=[_MIGRATIONS],
                             durable=False)

    async def owe(tx: Tx) -> None:
        for i in range(m):
            await store.save_recipient(tx, f"u{i}", f"bench-{i}@example.com", f"Bench {i}")
            await store.insert(tx, domain.welcome(f"u{i}", f"Bench {i}"), f"ev-{i}", mail=True)

    await db.write(owe)
    sender = _sender(db, smtp_url)
    t0 = time.perf_counter()
    task = asyncio.create_task(sender.run())
    try:
        async def done() -> bool:
            return await _count_sent(db) >= m
        await _until(done)
    finally:
        elapsed = time.perf_counter() - t0
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
    sent = await _count_sent(db)
    await db.close()
    return Measured(sent / elapsed if elapsed else 0.0, 0.0, 0.0, ok=sent, errors=m - sent,
                    seconds=elapsed, tool="MailSender -> mail catcher", latency_of="-",
                    extra={"connections": sender.settings.concurrency,
                           "retried": sender.metrics.retried._value.get()})


def _owe_only(_notification_id: str) -> None:
    return None


async def consumer_rate(bus: Bus, data: Path, name: str, n: int, smtp_url: str | None, *,
                        rows: bool) -> Measured:
    """The n events on a fresh durable and database. `rows`: delivery rows written; with
    smtp_url also the sender running (mail on)."""
    db = await Database.open(data / f"{name}.db", migrations=[_MIGRATIONS],
                             durable=False)
    tasks: list[asyncio.Task[None]] = []
    sender = None
    if smtp_url is not None:
        sender = _sender(db, smtp_url)
        tasks.append(asyncio.create_task(sender.run()))
    wake = sender.wake if sender is not None else (_owe_only if rows else None)
    consumer = EventConsumer(bus, db, durable=name, routes=handlers.routes(wake))
    t0 = time.perf_counter()
    tasks.append(asyncio.create_task(consumer.run()))
    try:
        async def done() -> bool:
            return consumer.stats.handled >= n
        await _until(done)
    finally:
        elapsed = time.perf_counter() - t0
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
    sent = await _count_sent(db) if sender is not None else 0
    await db.close()
    handled = consumer.stats.handled
    return Measured(handled / elapsed if elapsed else 0.0, 0.0, 0.0, ok=handled,
                    errors=n - handled, seconds=elapsed, tool="EventConsumer.run",
                    latency_of="-", extra={"delivery_rows": rows, "sender": sender is not None,
                                           "sent_meanwhile": sent})


async def run(data: Path, n: int, m: int, rounds: int) -> dict[str, Any]:
    catcher = CatcherProcess(data_dir=data / "catcher", port=0)
    catcher.start()
    nats = NatsServer(data / "nats").spawn()
    off: list[Measured] = []
    rows_only: list[Measured] = []
    on: list[Measured] = []
    try:
        nats.wait_ready()
        catcher.wait_ready(30)
        sender = await sender_rate(data, catcher.smtp_url, m)
        sender.extra["caught_files"] = len(list((data / "catcher" / "mail").glob("*.eml")))
        bus = await Bus.connect(nats.url, name="bench-mail", auth=operator_nats())
        try:
            await bus.ensure_streams()
            await _publish_users(bus, n)
            for r in range(rounds):
                off.append(await consumer_rate(bus, data, f"bench-off-{r}", n, None,
                                               rows=False))
                rows_only.append(await consumer_rate(bus, data, f"bench-rows-{r}", n, None,
                                                     rows=True))
                on.append(await consumer_rate(bus, data, f"bench-on-{r}", n, catcher.smtp_url,
                                              rows=True))
        finally:
            await bus.close()
    finally:
        catcher.terminate()
        nats.stop()
    off_rps = statistics.median(x.rps for x in off)
    rows_rps = statistics.median(x.rps for x in rows_only)
    on_rps = statistics.median(x.rps for x in on)
    return {"sender": sender.to_json(), "consumer_off": [x.to_json() for x in off],
            "consumer_rows_only": [x.to_json() for x in rows_only],
            "consumer_on": [x.to_json() for x in on], "events": n,
            "rows_only_vs_off": round(rows_rps / off_rps, 3) if off_rps else 0.0,
            "on_vs_off": round(on_rps / off_rps, 3) if off_rps else 0.0,
            "median_off_rps": round(off_rps, 1), "median_rows_only_rps": round(rows_rps, 1),
            "median_on_rps": round(on_rps, 1)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.mail")
    parser.add_argument("--events", type=int, default=3000)
    parser.add_argument("--mails", type=int, default=1000)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="bench-mail-") as tmp:
        result = uvloop.run(run(Path(tmp), args.events, args.mails, args.rounds))
    sys.stdout.write(json.dumps(result) + "\n")
    s = result["sender"]
    print(f"sender: {s['rps']:.0f} mails/s into the catcher ({s['ok']} sent, "
          f"{s['extra']['caught_files']} files); consumer (median of {args.rounds}): "
          f"{result['median_off_rps']:.0f} events/s mail off, "
          f"{result['median_rows_only_rps']:.0f} with delivery rows but no sender "
          f"({result['rows_only_vs_off']:.0%}), {result['median_on_rps']:.0f} mail on "
          f"({result['on_vs_off']:.0%})", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
