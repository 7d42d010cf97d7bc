"""Transactional outbox: events are written with the state change, a relay publishes them.

`enqueue` runs inside the caller's `db.transaction()`; `OutboxRelay` publishes unsent rows
in id order (= commit order, as SQLite has one writer at a time) with many acks in
flight, and marks a row sent only after JetStream acknowledged it. A crash between the
ack and the mark publishes the row again; the Nats-Msg-Id (= event id) makes JetStream
drop that repeat inside its duplicate window.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass

import aiosqlite
from google.protobuf.message import Message
from shop.events.v1 import envelope_pb2

from services.common.bus import Bus, OutMsg, envelope_headers
from services.common.db import Database, mark_outbox_dirty

__all__ = ["OutboxRelay", "RelayStats", "enqueue", "new_envelope"]

log = logging.getLogger(__name__)


def _from_context(name: str) -> str:
    """A value from services.common.context if it offers it, else ""."""
    try:
        from services.common import context
    except ImportError:
        return ""
    getter = getattr(context, name, None)
    if callable(getter):
        value = getter()
        return value if isinstance(value, str) else ""
    return ""


def new_envelope(subject: str, payload: Message, *, source: str, aggregate_id: str,
                 correlation_id: str | None = None,
                 traceparent: str | None = None) -> envelope_pb2.Envelope:
    env = envelope_pb2.Envelope(
        id=uuid.uuid4().hex,
        type=payload.DESCRIPTOR.full_name,
        subject=subject,
        source=source,
        aggregate_id=aggregate_id,
        correlation_id=correlation_id if correlation_id is not None
        else _from_context("request_id"),
        traceparent=traceparent if traceparent is not None else _from_context("traceparent"),
    )
    env.occurred_at.GetCurrentTime()
    env.payload.Pack(payload)
    return env


_INSERT = """INSERT INTO outbox (event_id, subject, aggregate_id, correlation_id, traceparent,
    data, created_at) VALUES (?, ?, ?, ?, ?, ?, ?)"""


async def enqueue(conn: aiosqlite.Connection, subject: str, payload: Message, *, source: str,
                  aggregate_id: str, correlation_id: str | None = None,
                  traceparent: str | None = None) -> str:
    """Add an event to the outbox in the caller's transaction; returns the event id."""
    env = new_envelope(subject, payload, source=source, aggregate_id=aggregate_id,
                       correlation_id=correlation_id, traceparent=traceparent)
    await conn.execute(_INSERT, (env.id, env.subject, env.aggregate_id, env.correlation_id,
                                 env.traceparent, env.SerializeToString(), time.time()))
    mark_outbox_dirty(conn)
    return env.id


@dataclass
class RelayStats:
    published: int = 0
    batches: int = 0
    failures: int = 0


class OutboxRelay:
    def __init__(self, db: Database, bus: Bus, *, batch: int = 256, poll_s: float = 1.0,
                 ack_timeout_s: float = 5.0, retain_s: float = 3600.0) -> None:
        self.db = db
        self.bus = bus
        self.batch = batch
        # The poll catches rows committed by other processes sharing the file.
        self.poll_s = poll_s
        self.ack_timeout_s = ack_timeout_s
        # Sent rows are kept this long (well past the duplicate window), then pruned.
        self.retain_s = retain_s
        self.stats = RelayStats()
        self._wake = asyncio.Event()
        self._last_prune = 0.0

    async def run(self) -> None:
        """Publish forever; cancel the task to stop."""
        wake: Callable[[], None] = self._wake.set
        self.db.add_commit_listener(wake)
        backoff = 0.1
        try:
            while True:
                self._wake.clear()
                try:
                    more = await self.relay_once()
                    backoff = 0.1
                except asyncio.CancelledError:
                    raise
                except Exception as e:
                    self.stats.failures += 1
                    log.warning("outbox relay: %r; retrying in %.1fs", e, backoff)
                    await asyncio.sleep(backoff)
                    backoff = min(backoff * 2, 2.0)
                    continue
                if more:
                    continue
                await self._maybe_prune()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), self.poll_s)
        finally:
            self.db.remove_commit_listener(wake)

    async def relay_once(self) -> bool:
        """Publish one batch. True when a full batch went out (more may be waiting).
        Raises when a publish failed, after marking the acknowledged prefix sent."""
        async with self.db.reader() as conn:
            cur = await conn.execute(
                "SELECT id, event_id, subject, correlation_id, traceparent, data FROM outbox"
                " WHERE sent_at IS NULL ORDER BY id LIMIT ?", (self.batch,))
            rows = list(await cur.fetchall())
        if not rows:
            return False
        msgs = [OutMsg(r["subject"], r["data"],
                       envelope_headers(r["event_id"], r["correlation_id"], r["traceparent"]))
                for r in rows]
        results = await self.bus.publish_batch(msgs, timeout_s=self.ack_timeout_s)
        # Only the acknowledged prefix counts: stopping at the first failure keeps the
        # per-aggregate order when the rest is retried.
        ok = 0
        for res in results:
            if isinstance(res, BaseException):
                break
            ok += 1
        if ok:
            async with self.db.transaction() as conn:
                await conn.execute(
                    "UPDATE outbox SET sent_at = ? WHERE id BETWEEN ? AND ? AND sent_at IS NULL",
                    (time.time(), rows[0]["id"], rows[ok - 1]["id"]))
            self.stats.published += ok
            self.stats.batches += 1
        if ok < len(rows):
            failed = results[ok] if ok < len(results) else RuntimeError("publish not attempted")
            assert isinstance(failed, BaseException)
            raise failed
        return len(rows) == self.batch

    async def pending(self) -> int:
        """Rows not yet acknowledged by JetStream."""
        async with self.db.reader() as conn:
            cur = await conn.execute("SELECT count(*) FROM outbox WHERE sent_at IS NULL")
            row = await cur.fetchone()
        return int(row[0]) if row else 0

    async def _maybe_prune(self) -> None:
        now = time.time()
        if now - self._last_prune < 60.0:
            return
        self._last_prune = now
        async with self.db.transaction() as conn:
            await conn.execute("DELETE FROM outbox WHERE sent_at IS NOT NULL AND sent_at < ?",
                               (now - self.retain_s,))
