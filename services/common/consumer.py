"""Durable JetStream pull consumer with an inbox: each event has its effect exactly once.

Per fetched batch, one unit of work (`storage.write`): an event already in the inbox is
skipped, any other runs its handler inside a savepoint and gets an inbox row. A handler
that raises rolls back only its savepoint; that message is nak'ed with back-off, or
dead-lettered and terminated on its last delivery. Acks go out after the commit, so a
crash in between means a redelivery that the inbox turns into a no-op. On SQLite the
batch is one hop on the connection's thread, group-committed with the service's other
writes, and savepoints cost nothing; on PostgreSQL a batch first runs without them (two
round trips fewer per event) and is redone with them only when a handler failed.

A handler (`Route(subject, Payload, fn)`, `await fn(tx, env, payload)`) acts only through
`tx`, the consumer's transaction: it may run again after a rollback. It may return a
callable, run on the event loop once the batch committed (e.g. waking a saga).

A route may also name a *skip check* (`Route(..., skip=fn)`, `await fn(tx, env, payload)
-> bool`): a read that is True only when the event has no effect now and never will (the
state it would act on has moved on for good). Events whose check says so are acked after
one read (`storage.read`), with no write and no inbox row: having no effect, a
redelivery runs the same check and is the same no-op. Any other event goes the usual way.

The inbox only has to remember an event as long as the stream could deliver it again: a
running consumer deletes rows older than `inbox_retain_s` (the stream's max age plus a
margin, see bus.py; never when the stream keeps events for ever), a bounded chunk at a
time, at most every `prune_every_s`.

A partial batch is followed by a linger (`linger_s`, `CONSUMER_LINGER_S`: 100 ms) before
the next fetch, so a busy stream is handled in batches of several events rather than one
fetch round trip, one transaction (one fsync) and one round of acks per event. An event
behind a partial batch waits at most that long; a first event after a quiet spell is
fetched at once. The per-fetch work runs on the same event loops as the orders, so at one
connection an order took less CPU and time with it than with 50 ms (in alternating rounds
on a 2-core box). 250 ms saved more still, but with a busy core a NATS kill -9 then left a
delivery to be redelivered only after `ack_wait` (30 s; tests/faults/test_nats_restart.py
settled in 33 s instead of 12): not kept.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any

from google.protobuf.message import Message
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription
from nats.js import JetStreamContext
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy
from shop.events.v1 import envelope_pb2

from services.common.bus import Bus, inbox_retention_s
from services.common.cancellation import raise_if_cancelled
from services.common.consumer_metrics import ConsumerMetrics
from services.common.correlation import event_scope, in_scope
from services.common.dlq import dead_letter
from services.common.events import STREAM
from services.common.storage import Storage, Tx

__all__ = ["AfterCommit", "ConsumerStats", "EventConsumer", "Handler", "Route", "SkipCheck"]

log = logging.getLogger("shop.consumer")

Envelope = envelope_pb2.Envelope
# Run on the event loop after the handler's transaction committed.
AfterCommit = Callable[[], None]
# Acts only through `tx` (the consumer's transaction): it may be run again after a
# rollback when another event of its batch failed.
Handler = Callable[[Tx, Envelope, Any], Awaitable[AfterCommit | None]]
# Read-only: True when the event can have no effect now or later.
SkipCheck = Callable[[Tx, Envelope, Any], Awaitable[bool]]

_INBOX_INSERT = "INSERT INTO inbox (consumer, event_id, handled_at) VALUES (?, ?, ?)"
# Bounded: one prune round never holds the write lock for long (index inbox_handled_at).
_INBOX_PRUNE = ("DELETE FROM inbox WHERE consumer = ? AND event_id IN (SELECT event_id FROM"
                " inbox WHERE consumer = ? AND handled_at < ? ORDER BY handled_at LIMIT ?)")
_PRUNE_CHUNK = 1000
CONSUMER_LINGER_S = 0.1


@dataclass
class Route:
    subject: str
    payload_type: type[Message]
    handler: Handler
    # True when the event certainly has no effect (see the module doc); None: always handle.
    skip: SkipCheck | None = None


@dataclass
class ConsumerStats:
    handled: int = 0
    duplicates: int = 0
    # Acked without a write: their skip check said they could have no effect.
    skipped: int = 0
    failed: int = 0
    dead_lettered: int = 0
    pruned: int = 0  # inbox rows deleted past the retention


class _HandlerFailed(Exception):
    """Internal: a handler raised without savepoints; redo the batch with them."""


@dataclass
class _Decoded:
    msg: Msg
    env: Envelope
    payload: Message
    route: Route


def _log_handled(durable: str, env: Envelope) -> None:
    # Inside the event's scope: the line carries the request id that caused it.
    if log.isEnabledFor(logging.DEBUG):
        log.debug("event handled", extra={"consumer": durable, "subject": env.subject,
                                          "event_id": env.id})


async def _handle(d: _Decoded, tx: Tx, durable: str) -> AfterCommit | None:
    """The handler inside the event's scope (request id, CONSUMER span); its after-commit
    hook keeps that scope."""
    with event_scope(d.env, durable):
        after: AfterCommit | None = await d.route.handler(tx, d.env, d.payload)
        _log_handled(durable, d.env)
    return None if after is None else in_scope(after)


class EventConsumer:
    def __init__(self, bus: Bus, db: Storage, *, durable: str, routes: Sequence[Route],
                 max_deliver: int = 5, ack_wait_s: float = 30.0, batch: int = 64,
                 backoff_s: Sequence[float] = (0.2, 1.0, 3.0, 5.0),
                 fetch_timeout_s: float = 1.0, linger_s: float = CONSUMER_LINGER_S,
                 inbox_retain_s: float | None = None, prune_every_s: float = 60.0,
                 locked: bool = False) -> None:
        if not routes:
            raise ValueError("a consumer needs at least one route")
        self.bus = bus
        self.db = db
        self.durable = durable
        self.routes = {r.subject: r for r in routes}
        if len(self.routes) != len(routes):
            raise ValueError("one route per subject")
        self.max_deliver = max_deliver
        self.ack_wait_s = ack_wait_s
        self.batch = batch
        self.backoff_s = tuple(backoff_s) or (1.0,)
        self.fetch_timeout_s = fetch_timeout_s
        # After a partial batch, wait this long before fetching again (batches, not trickles).
        self.linger_s = linger_s
        # 0: keep every inbox row (the stream keeps its events for ever).
        self.inbox_retain_s = (inbox_retention_s(bus.config) if inbox_retain_s is None
                               else inbox_retain_s)
        self.prune_every_s = prune_every_s
        # The handlers lock the rows they decide on (`Storage.write(locked=True)`): hot
        # rows shared with the service's own calls wait instead of failing on PostgreSQL.
        self.locked = locked
        self._pruned_at = -math.inf  # monotonic; never pruned: the first round is due
        self.stats = ConsumerStats()
        self.metrics = ConsumerMetrics(durable, self._lag)
        self._sub: JetStreamContext.PullSubscription | None = None
        self._advisory: Subscription | None = None

    @property
    def advisory_subject(self) -> str:
        return f"$JS.EVENT.ADVISORY.CONSUMER.MAX_DELIVERIES.{STREAM}.{self.durable}"

    async def start(self) -> None:
        """Create or update the durable consumer (shared by every instance: queue
        semantics) and bind to it. `run()` calls this; tests may call it first."""
        if self._sub is not None:
            return
        config = ConsumerConfig(
            name=self.durable,
            durable_name=self.durable,
            deliver_policy=DeliverPolicy.ALL,
            ack_policy=AckPolicy.EXPLICIT,
            ack_wait=self.ack_wait_s,
            max_deliver=self.max_deliver,
            filter_subjects=sorted(self.routes),
        )
        await self.bus.js.add_consumer(STREAM, config)  # create or update
        self._sub = await self.bus.js.pull_subscribe_bind(durable=self.durable, stream=STREAM)
        # A queue group: one instance of the service handles each advisory.
        self._advisory = await self.bus.nc.subscribe(
            self.advisory_subject, queue=f"{self.durable}-dlq", cb=self._on_max_deliveries)
        self.metrics.serve()

    async def run(self) -> None:
        """Consume forever; cancel the task to stop."""
        await self.start()
        assert self._sub is not None
        try:
            while True:
                try:
                    msgs = await self._sub.fetch(self.batch, timeout=self.fetch_timeout_s)
                except TimeoutError:  # nothing to do (nats' TimeoutError subclasses it)
                    raise_if_cancelled()  # fetch's own wait_for can swallow our cancel
                    await self._maybe_prune()
                    continue
                except asyncio.CancelledError:
                    raise
                except Exception as e:  # disconnected: the client reconnects by itself
                    log.warning("consumer fetch failed",
                                extra={"consumer": self.durable, "error": repr(e)})
                    await asyncio.sleep(0.5)
                    continue
                raise_if_cancelled()
                await self.process(msgs)
                if len(msgs) < self.batch:
                    await self._maybe_prune()
                    if self.linger_s > 0:
                        await asyncio.sleep(self.linger_s)
        finally:
            await self.stop()

    async def _lag(self) -> int:
        info = await self.bus.js.consumer_info(STREAM, self.durable)
        return int(info.num_pending or 0)

    async def stop(self) -> None:
        self.metrics.unserve()
        for sub in (self._sub, self._advisory):
            if sub is not None:
                try:
                    await sub.unsubscribe()
                except Exception:
                    log.debug("unsubscribe failed", exc_info=True)
        self._sub = None
        self._advisory = None

    async def process(self, msgs: Sequence[Msg]) -> None:
        self.metrics.delivered(msgs)
        good: list[_Decoded] = []
        for msg in msgs:
            decoded = await self._decode(msg)
            if decoded is not None:
                good.append(decoded)
        if any(d.route.skip is not None for d in good):
            good = await self._skip_noops(good)
        if not good:
            return
        try:
            done, failed = await self._apply(good)
        except asyncio.CancelledError:
            raise
        except Exception as e:  # the transaction itself failed (e.g. busy past timeout)
            log.warning("consumer batch rolled back",
                        extra={"consumer": self.durable, "error": repr(e)})
            for d in good:
                await self._retry_or_dead_letter(d, f"transaction failed: {e!r}")
            return
        for msg in done:
            await msg.ack()
        for d, err in failed:
            await self._retry_or_dead_letter(d, f"handler failed: {err!r}")

    async def _skip_noops(self, batch: list[_Decoded]) -> list[_Decoded]:
        """Ack the events whose skip check says they have no effect (one read for the
        batch); the rest, to be handled as usual."""

        async def run(tx: Tx) -> list[bool]:
            return [d.route.skip is not None and bool(
                await d.route.skip(tx, d.env, d.payload)) for d in batch]

        try:
            noop = await self.db.read(run)
        except Exception:  # the check is an optimisation: handle them all instead
            log.warning("consumer skip check failed", extra={"consumer": self.durable},
                        exc_info=True)
            return batch
        rest: list[_Decoded] = []
        for d, skip in zip(batch, noop, strict=True):
            if skip:
                await d.msg.ack()
                self.stats.skipped += 1
            else:
                rest.append(d)
        return rest

    async def _decode(self, msg: Msg) -> _Decoded | None:
        try:
            env = Envelope.FromString(msg.data)
            route = self.routes[msg.subject]
            payload = route.payload_type()
            if not env.payload.Unpack(payload):
                raise ValueError(f"payload is {env.payload.type_url}, "
                                 f"expected {payload.DESCRIPTOR.full_name}")
        except Exception as e:
            # Can never succeed: dead-letter it and end its deliveries at once.
            await self._dead_letter(msg, "", f"undecodable: {e!r}")
            return None
        return _Decoded(msg, env, payload, route)

    async def _apply(self, batch: Sequence[_Decoded]
                     ) -> tuple[list[Msg], list[tuple[_Decoded, Exception]]]:
        if self.db.dialect == "sqlite":
            return await self._apply_with(batch, savepoints=True)
        try:
            return await self._apply_with(batch, savepoints=False)
        except _HandlerFailed:
            return await self._apply_with(batch, savepoints=True)

    async def _apply_with(self, batch: Sequence[_Decoded], *, savepoints: bool
                          ) -> tuple[list[Msg], list[tuple[_Decoded, Exception]]]:
        """The batch as one unit of work: inbox check, every handler (in its own savepoint
        when `savepoints`; else the first failure raises _HandlerFailed), the inbox rows."""
        durable = self.durable

        async def run(tx: Tx) -> tuple[list[Msg], list[tuple[_Decoded, Exception]],
                                       list[AfterCommit], int]:
            ids = [d.env.id for d in batch]
            marks = ",".join("?" * len(ids))
            seen = {r[0] for r in await tx.fetch(
                f"SELECT event_id FROM inbox WHERE consumer = ? AND event_id IN ({marks})",
                (durable, *ids))}
            done: list[Msg] = []
            failed: list[tuple[_Decoded, Exception]] = []
            afters: list[AfterCommit] = []
            rows: list[tuple[str, str, float]] = []
            now = time.time()
            for d in batch:
                if d.env.id in seen:
                    done.append(d.msg)
                    continue
                try:
                    if savepoints:
                        async with tx.savepoint():
                            after = await _handle(d, tx, durable)
                    else:
                        after = await _handle(d, tx, durable)
                except Exception as e:
                    if not savepoints:
                        raise _HandlerFailed from e
                    if not tx.alive:
                        raise  # the backend rolled back the whole transaction: all retried
                    failed.append((d, e))
                    continue
                if after is not None:
                    afters.append(after)
                seen.add(d.env.id)
                rows.append((durable, d.env.id, now))
                done.append(d.msg)
            if rows:
                await tx.run_many(_INBOX_INSERT, rows)
            return done, failed, afters, len(rows)

        done, failed, afters, handled = await self.db.write(run, locked=self.locked)
        for after in afters:
            try:
                after()
            except Exception:
                log.exception("after-commit hook failed", extra={"consumer": self.durable})
        self.stats.handled += handled
        self.metrics.handled.inc(handled)
        self.stats.duplicates += len(done) - handled
        self.stats.failed += len(failed)
        return done, failed

    async def _maybe_prune(self) -> None:
        """Delete this consumer's inbox rows past the retention, one bounded chunk per
        round, rounds `prune_every_s` apart (right after one while a backlog is left)."""
        if self.inbox_retain_s <= 0:
            return
        now = time.monotonic()
        if now - self._pruned_at < self.prune_every_s:
            return
        self._pruned_at = now
        cutoff = time.time() - self.inbox_retain_s
        durable = self.durable

        async def prune(tx: Tx) -> int:
            return await tx.run(_INBOX_PRUNE, (durable, durable, cutoff, _PRUNE_CHUNK))

        try:
            n = await self.db.write(prune)
        except Exception:
            log.warning("inbox prune failed", extra={"consumer": durable}, exc_info=True)
            return
        self.stats.pruned += n
        if n >= _PRUNE_CHUNK:
            self._pruned_at = -math.inf  # more left: the next idle moment goes on

    async def _handled(self, event_id: str) -> bool:
        async def run(tx: Tx) -> bool:
            return await tx.fetchrow("SELECT 1 FROM inbox WHERE consumer = ? AND event_id = ?",
                                     (self.durable, event_id)) is not None

        return await self.db.read(run)

    async def _retry_or_dead_letter(self, d: _Decoded, reason: str) -> None:
        delivered = d.msg.metadata.num_delivered
        if delivered >= self.max_deliver:
            await self._dead_letter(d.msg, d.env.id, reason, d.env.correlation_id)
            return
        delay = self.backoff_s[min(delivered, len(self.backoff_s)) - 1]
        await d.msg.nak(delay=delay)

    async def _dead_letter(self, msg: Msg, event_id: str, reason: str,
                           correlation_id: str = "") -> None:
        try:
            await dead_letter(
                self.bus.js, consumer=self.durable, subject=msg.subject, data=msg.data,
                reason=reason, event_id=event_id, stream_seq=msg.metadata.sequence.stream,
                correlation_id=correlation_id)
        except Exception as e:
            # Leave it to the redelivery / max-deliveries advisory path.
            log.warning("consumer could not dead-letter",
                        extra={"consumer": self.durable, "error": repr(e)})
            await msg.nak(delay=self.backoff_s[-1])
            return
        self.stats.dead_lettered += 1
        self.metrics.dead_letters.inc()
        log.error("consumer dead-lettered an event",
                  extra={"consumer": self.durable, "event_id": event_id or "?",
                         "subject": msg.subject, "reason": reason})
        await msg.term()

    async def _on_max_deliveries(self, adv: Msg) -> None:
        """A message ran out of deliveries without a verdict (e.g. its process crashed):
        it is still in the stream, fetch it by sequence and dead-letter it."""
        try:
            seq = int(json.loads(adv.data)["stream_seq"])
            raw = await self.bus.js.get_msg(STREAM, seq=seq)
            data = raw.data or b""
            event_id = ""
            correlation_id = ""
            try:
                env = Envelope.FromString(data)
                event_id, correlation_id = env.id, env.correlation_id
            except Exception:
                log.debug("advisory message undecodable", extra={"seq": seq})
            if event_id and await self._handled(event_id):
                return  # handled; only the ack was lost
            await dead_letter(
                self.bus.js, consumer=self.durable, subject=raw.subject or "", data=data,
                reason=f"max deliveries ({self.max_deliver}) exceeded without a verdict",
                event_id=event_id, stream_seq=seq, correlation_id=correlation_id)
            self.stats.dead_lettered += 1
            self.metrics.dead_letters.inc()
        except Exception:
            log.exception("max-deliveries advisory not handled",
                          extra={"consumer": self.durable})
