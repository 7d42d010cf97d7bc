"""Transactional outbox: events are written with the state change, a relay publishes them.

`tx.emit(...)` runs inside the caller's unit of work; `OutboxRelay` publishes unsent rows
in id order (= commit order, as SQLite has one writer at a time) with many acks in
flight, and marks a row sent only after JetStream acknowledged it. Per aggregate the order
is strict even across a reconnect: the next event of an aggregate is sent only after the
one before it was acknowledged (`publish_in_waves`), so the stream never stores event k+1
of an aggregate before event k. A crash between the
ack and the mark publishes the row again; the Nats-Msg-Id (= event id) makes JetStream
drop that repeat inside its duplicate window.

One relay per file: every instance of a service shares one SQLite file, and only the
holder of the `outbox_lease` row publishes (owner + host + pid + expiry, created on first
use). The holder renews it every `lease_s / 3`; a standby polls and takes it over once
it expired, or at once when its holder was a process of this machine that is gone
(kill -9). A relay that cannot renew stops publishing when its own expiry passes, before
anyone may take over; a stopped relay hands the lease back.

A relay woken by a commit lingers `linger_s` (`RELAY_LINGER_S`, 100 ms) first, so a busy
service publishes in batches rather than one select/publish round per commit: an event
reaches NATS at most that much later, and a stream of orders costs far fewer rounds (see
consumer.py for what the two lingers together saved at one connection). Every database
step is a single hop (`db.read` / `db.write`, group-committed with the service's own
writes): the select of a batch, the mark-sent. What was acknowledged is marked sent at most every
`mark_every_s` (0.25 s) rather than after each batch: the relay remembers how far it
published (the next select starts past it), so a busy service writes one mark for many
batches. A crash before the mark publishes those rows again, which the Nats-Msg-Id
deduplicates as above; a relay that stops or loses its lease writes its mark first. The
mark also renews the lease (one more statement, no extra hop) once the lease is a sixth of
`lease_s` old, so the heartbeat only writes on its own when the relay is idle.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import os
import socket
import time
import uuid
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

from google.protobuf.message import Message
from shop.events.v1 import envelope_pb2

from services.common.bus import Bus, OutMsg, envelope_headers
from services.common.cancellation import cancel_and_wait
from services.common.eventtracing import producer_traceparent
from services.common.ids import new_id
from services.common.metrics import current as current_metrics
from services.common.storage import Row, Storage, Tx
from services.common.timestamps import set_timestamp

__all__ = ["MARK_EVERY_S", "OutboxRelay", "RelayStats", "finish_batch", "new_envelope", "pending",
           "prune"]

log = logging.getLogger("shop.outbox")

T = TypeVar("T")


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
    event_id = new_id()
    env = envelope_pb2.Envelope(
        id=event_id,
        type=payload.DESCRIPTOR.full_name,
        subject=subject,
        source=source,
        aggregate_id=aggregate_id,
        correlation_id=correlation_id if correlation_id is not None
        else _from_context("request_id"),
        # The event's PRODUCER span, a child of the current span (the request's trace).
        traceparent=traceparent if traceparent is not None
        else producer_traceparent(subject, event_id),
    )
    # Not Timestamp.GetCurrentTime, which goes through datetime: 7.1 us per envelope, not 9.3.
    set_timestamp(env.occurred_at, time.time())
    env.payload.Pack(payload)
    return env


@dataclass
class RelayStats:
    published: int = 0
    batches: int = 0
    failures: int = 0
    leases: int = 0  # times this relay became the active one


# How often at most a relay marks what was acknowledged as sent (see the module's doc).
MARK_EVERY_S = 0.25
# How long a relay woken by a commit waits for the commits behind it (see the module's doc).
RELAY_LINGER_S = 0.1

_LEASE_NAME = "relay"
_LEASE_SELECT = "SELECT owner, host, pid, expires_at FROM outbox_lease WHERE name = ?"
_LEASE_RENEW = ("UPDATE outbox_lease SET expires_at = ? WHERE name = ? AND owner = ?"
                " AND host = ? AND pid = ? AND expires_at > ?")
_SELECT_UNSENT = ("SELECT id, event_id, subject, correlation_id, traceparent, data, aggregate_id"
                  " FROM outbox WHERE sent_at IS NULL AND id > ? ORDER BY id LIMIT ?")
# Rows past a relay's cursor still waiting for JetStream's acknowledgement (outbox_unsent).
_COUNT_UNSENT = "SELECT count(*) FROM outbox WHERE sent_at IS NULL AND id > ?"
_BACKLOG = "SELECT count(*), min(created_at) FROM outbox WHERE sent_at IS NULL AND id > ?"
# Along the index outbox_sent (migration 0004): never a scan of the whole table.
PRUNE_SENT = "DELETE FROM outbox WHERE sent_at IS NOT NULL AND sent_at < ?"
_MARK_SENT = "UPDATE outbox SET sent_at = ? WHERE id BETWEEN ? AND ? AND sent_at IS NULL"


def _waves(aggregates: Sequence[str]) -> list[list[int]]:
    """Row indexes grouped so that wave n has the n-th row of each aggregate, in row
    order within a wave. Rows of one aggregate are in different, successive waves."""
    waves: list[list[int]] = []
    seen: dict[str, int] = {}
    for i, agg in enumerate(aggregates):
        n = seen.get(agg, 0)
        seen[agg] = n + 1
        if n == len(waves):
            waves.append([])
        waves[n].append(i)
    return waves


async def publish_in_waves(bus: Bus, rows: Sequence[Row], *, timeout_s: float
                           ) -> tuple[int, BaseException | None]:
    """Publish outbox rows (id, event_id, subject, correlation_id, traceparent, data,
    aggregate_id, ...) in waves: many acks in flight, but one event of an aggregate at a
    time. The length of the acknowledged prefix, and the first failure (None if none)."""
    acked = [False] * len(rows)
    failure: BaseException | None = None
    for wave in _waves([str(r[6]) for r in rows]):
        msgs = [OutMsg(str(rows[i][2]), bytes(rows[i][5]),
                       envelope_headers(str(rows[i][1]), str(rows[i][3]), str(rows[i][4])))
                for i in wave]
        results = await bus.publish_batch(msgs, timeout_s=timeout_s)
        for i, res in zip(wave, results, strict=False):
            if isinstance(res, BaseException):
                failure = failure or res
            else:
                acked[i] = True
        if len(results) < len(wave):
            failure = failure or RuntimeError("publish not attempted")
        if failure is not None:
            break  # the next waves would overtake what just failed
    # Only the acknowledged prefix counts: the rest is retried in order.
    ok = next((i for i, a in enumerate(acked) if not a), len(rows))
    return ok, failure


def _host_key() -> str:
    """This machine and pid namespace: a pid of the same key can be checked locally."""
    parts = [socket.gethostname()]
    with contextlib.suppress(OSError), open("/proc/sys/kernel/random/boot_id") as f:
        parts.append(f.read().strip())
    with contextlib.suppress(OSError):
        parts.append(str(os.stat("/proc/self/ns/pid").st_ino))
    return "/".join(parts)


def _pid_alive(pid: int) -> bool:
    if pid <= 0:
        return True  # unknown: never assume it is gone
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # EPERM: alive, someone else's
        return True
    return True


class OutboxRelay:
    def __init__(self, db: Storage, bus: Bus, *, batch: int = 256, poll_s: float = 1.0,
                 ack_timeout_s: float = 5.0, retain_s: float = 3600.0,
                 owner: str | None = None, lease_s: float = 5.0,
                 standby_poll_s: float | None = None, linger_s: float = RELAY_LINGER_S,
                 mark_every_s: float = MARK_EVERY_S) -> None:
        self.db = db
        self.bus = bus
        self.batch = batch
        # The poll catches rows committed by other processes sharing the file.
        self.poll_s = poll_s
        # After a commit wakes an idle relay, it waits this long so one select, one
        # publish round and one mark-sent carry the commits of that moment, not one each.
        self.linger_s = linger_s
        # Acknowledged rows are marked sent at most this often (see the module's doc).
        self.mark_every_s = mark_every_s
        self.ack_timeout_s = ack_timeout_s
        # Sent rows are kept this long (well past the duplicate window), then pruned.
        self.retain_s = retain_s
        # The lease: owner is the instance id; (owner, host, pid) is who holds it.
        if lease_s <= 0:
            raise ValueError("lease_s must be > 0")
        self.owner = owner or f"relay-{uuid.uuid4().hex[:8]}"
        self.lease_s = lease_s
        self.standby_poll_s = (standby_poll_s if standby_poll_s is not None
                               else min(1.0, lease_s / 4))
        self._host = _host_key()
        self._pid = os.getpid()
        self._lease_until = 0.0  # wall clock (time.time(), as in the row); 0 = not held
        self._renewed_at = 0.0  # wall clock of the last successful take or renewal
        self.stats = RelayStats()
        self._metrics = current_metrics()
        self._published = self._metrics.outbox_published
        self._wake = asyncio.Event()
        self._pruning = SentPruning(db, retain_s)
        # Rows up to `_acked_through` are acknowledged; up to `_marked_through` marked sent.
        self._acked_through = 0
        self._marked_through = 0
        # Monotonic; never marked yet, so the first mark is due at once (a clock that
        # started less than `mark_every_s` ago must not hold it back).
        self._marked_at = -math.inf

    @property
    def active(self) -> bool:
        """True while this relay holds an unexpired lease (it is the one publishing)."""
        return self._lease_until > time.time()

    async def run(self) -> None:
        """Publish forever while holding the lease, stand by otherwise; cancel to stop."""
        wake: Callable[[], None] = self._wake.set
        self.db.add_commit_listener(wake)
        self._metrics.add_refresher(self._refresh_backlog)
        try:
            while True:
                await self._acquire_lease()
                heartbeat = asyncio.create_task(self._heartbeat())
                try:
                    await self._publish_while_active()
                finally:
                    await cancel_and_wait([heartbeat])
                self._lease_until = 0.0
                with contextlib.suppress(Exception):
                    await self._mark_acked()
                # Another relay may publish from here on: select from the first unsent.
                self._acked_through = self._marked_through = 0
                log.warning("outbox relay: lease lost; standing by", extra={"owner": self.owner})
        finally:
            self._metrics.remove_refresher(self._refresh_backlog)
            self.db.remove_commit_listener(wake)
            # What was acknowledged is marked before anyone else may take over.
            with contextlib.suppress(BaseException):
                await asyncio.shield(self._mark_acked())
            if self._lease_until:
                # Hand over at once rather than after the expiry (also when cancelled).
                with contextlib.suppress(BaseException):
                    await asyncio.shield(self._release_lease())

    async def _publish_while_active(self) -> None:
        backoff = 0.1
        while self.active:
            self._wake.clear()
            try:
                more = await finish_batch(self.relay_once(), self.ack_timeout_s)
                if not more:
                    await self._pruning.maybe()
                    await self._wait_for_commits()
                backoff = 0.1
            except asyncio.CancelledError:
                raise
            except Exception as e:
                # A failed publish, read or mark: the cursor keeps what was acknowledged,
                # so the retry republishes nothing twice and loses nothing.
                self.stats.failures += 1
                log.warning("outbox relay failed; retrying",
                            extra={"error": repr(e), "retry_in_s": backoff})
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 2.0)

    async def _wait_for_commits(self) -> None:
        """Until a commit wakes the relay or the poll comes round; marks what went out if
        it stayed quiet until the mark was due."""
        wait_s = self.poll_s
        if self._acked_through > self._marked_through:
            wait_s = min(wait_s, max(0.0, self._marked_at + self.mark_every_s
                                     - time.monotonic()))
        # asyncio.timeout, not wait_for: 3.11's wait_for can swallow a cancel
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(wait_s):
                await self._wake.wait()
        if not self._wake.is_set() and self._acked_through > self._marked_through:
            await self._mark_acked()  # quiet since the last batch: mark what went out
        if self._wake.is_set() and self.linger_s > 0:
            # Woken by a commit: let the commits right behind it join this batch.
            await asyncio.sleep(self.linger_s)

    # -- the lease ------------------------------------------------------------------

    async def _acquire_lease(self) -> None:
        """Returns once this relay holds the lease; polls while another one does."""
        backoff = 0.1
        waiting_for = ""
        while True:
            try:
                holder = await self._try_acquire()
            except asyncio.CancelledError:
                raise
            except Exception as e:
                self.stats.failures += 1
                log.warning("outbox relay: lease check failed",
                            extra={"owner": self.owner, "error": repr(e)})
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 2.0)
                continue
            backoff = 0.1
            if holder is None:
                self.stats.leases += 1
                log.info("outbox relay: active",
                         extra={"owner": self.owner, "lease_s": self.lease_s})
                return
            if holder != waiting_for:
                waiting_for = holder
                log.info("outbox relay: standby", extra={"owner": self.owner, "holder": holder})
            await asyncio.sleep(self.standby_poll_s)

    async def _try_acquire(self) -> str | None:
        """Take or renew the lease if free, expired, ours, or held by a process of this
        machine that is gone. None when it is ours now, else the holder."""
        async def peek(tx: Tx) -> Row | None:
            return await tx.fetchrow(_LEASE_SELECT, (_LEASE_NAME,))

        # Cheap read first: a standby should not take the write lock every poll.
        row = await self.db.read(peek)
        if row is not None and not self._takeable(row, time.time()):
            return str(row[0])

        async def take(tx: Tx) -> tuple[str | None, float]:
            row = await tx.fetchrow(_LEASE_SELECT, (_LEASE_NAME,))
            now = time.time()
            if row is not None and not self._takeable(row, now):
                return str(row[0]), 0.0
            until = now + self.lease_s
            await tx.run(
                "INSERT INTO outbox_lease (name, owner, host, pid, acquired_at, expires_at)"
                " VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (name) DO UPDATE SET"
                " owner = excluded.owner, host = excluded.host, pid = excluded.pid,"
                " acquired_at = excluded.acquired_at, expires_at = excluded.expires_at",
                (_LEASE_NAME, self.owner, self._host, self._pid, now, until))
            return None, until

        holder, until = await self.db.write(take)
        if holder is None:
            self._lease_until = until
            self._renewed_at = until - self.lease_s
        return holder

    def _takeable(self, row: Any, now: float) -> bool:
        owner, host, pid, expires_at = str(row[0]), str(row[1]), int(row[2]), float(row[3])
        if expires_at <= now:
            return True
        if host != self._host:
            return False
        if owner == self.owner and pid == self._pid:
            return True  # ours
        return pid != self._pid and not _pid_alive(pid)

    async def _heartbeat(self) -> None:
        """Keep the lease renewed every lease_s/3 (a write of its own only when no batch's
        mark-sent renewed it meanwhile); on loss, mark the lease gone and wake the loop."""
        while True:
            delay = self._renewed_at + self.lease_s / 3 - time.time()
            if delay > 0:
                await asyncio.sleep(delay)
                continue
            try:
                renewed = await self._renew()
            except asyncio.CancelledError:
                raise
            except Exception as e:  # e.g. busy: retried; the local expiry still holds
                log.warning("outbox relay: lease renewal failed",
                            extra={"owner": self.owner, "error": repr(e)})
                if not self.active:
                    self._wake.set()
                    return
                await asyncio.sleep(min(0.5, self.lease_s / 10))
                continue
            if not renewed:
                self._lose_lease()
                return

    async def _renew_in(self, tx: Tx) -> float:
        """Extend our lease in `tx`; the new expiry, 0 when lost."""
        now = time.time()
        until = now + self.lease_s
        changed = await tx.run(_LEASE_RENEW, (until, _LEASE_NAME, self.owner, self._host,
                                              self._pid, now))
        return until if changed == 1 else 0.0

    def _renewed(self, until: float) -> bool:
        if not until:
            return False
        self._lease_until = until
        self._renewed_at = until - self.lease_s
        return True

    def _lose_lease(self) -> None:
        self._lease_until = 0.0
        self._wake.set()

    async def _renew(self) -> bool:
        return self._renewed(await self.db.write(self._renew_in))

    async def _release_lease(self) -> None:
        self._lease_until = 0.0
        async def release(tx: Tx) -> None:
            await tx.run(
                "DELETE FROM outbox_lease WHERE name = ? AND owner = ? AND host = ? AND pid = ?",
                (_LEASE_NAME, self.owner, self._host, self._pid))

        await self.db.write(release)

    # -- publishing -----------------------------------------------------------------

    async def relay_once(self) -> bool:
        """Publish one batch. True when a full batch went out (more may be waiting).
        Raises when a publish failed, after marking the acknowledged prefix sent."""
        batch = self.batch
        # A bounded read along outbox_unsent, inline on the read connection (no thread
        # hop): woken by a commit, it sees every row committed before it.
        after = self._acked_through

        async def select(tx: Tx) -> list[Row]:
            return await tx.fetch(_SELECT_UNSENT, (after, batch))

        rows = await self.db.read(select)
        if not rows:
            return False
        ok, failure = await publish_in_waves(self.bus, rows, timeout_s=self.ack_timeout_s)
        if ok:
            self._acked_through = int(rows[ok - 1][0])
            self.stats.published += ok
            self._published.inc(ok)
            self.stats.batches += 1
            if failure is not None or time.monotonic() - self._marked_at >= self.mark_every_s:
                await self._mark_acked()
        if ok < len(rows):
            raise failure or RuntimeError("publish not acknowledged")
        return len(rows) == self.batch

    async def _mark_acked(self) -> None:
        """Mark the acknowledged rows sent, in one write that also renews the lease once
        it is a sixth of its life old (no hop of its own)."""
        first, last = self._marked_through + 1, self._acked_through
        if last < first:
            return
        renew = time.time() - self._renewed_at >= self.lease_s / 6 and self.active

        async def mark(tx: Tx) -> float | None:
            await tx.run(_MARK_SENT, (time.time(), first, last))
            return await self._renew_in(tx) if renew else None

        until = await self.db.write(mark)
        self._marked_through = max(self._marked_through, last)
        self._marked_at = time.monotonic()
        if until is not None and not self._renewed(until):
            self._lose_lease()

    async def _refresh_backlog(self) -> None:
        """At scrape time: the unsent rows and the age of the oldest (along outbox_unsent)."""
        through = self._acked_through  # acknowledged, only waiting for their mark

        async def backlog(tx: Tx) -> Row | None:
            return await tx.fetchrow(_BACKLOG, (through,))

        row = await self.db.read(backlog)
        count = int(row[0]) if row else 0
        oldest = float(row[1]) if row and row[1] is not None else None
        self._metrics.outbox_backlog.set(count)
        self._metrics.outbox_oldest_age.set(0.0 if oldest is None
                                            else max(0.0, time.time() - oldest))

    async def pending(self) -> int:
        """Rows not yet acknowledged by JetStream (acknowledged ones may wait for their
        mark up to `mark_every_s`)."""
        return await pending(self.db, after=self._acked_through)


# How long a stopping relay waits for the batch it has in flight (a stop must stay quick;
# a batch cut short is published again by the next relay, and deduplicated).
FINISH_BATCH_S = 2.0


async def finish_batch(step: Awaitable[T], ack_timeout_s: float) -> T:
    """Run one relay step to its end even when the relay is stopped meanwhile (bounded):
    a batch published but not marked sent would be published again by the next relay."""
    task = asyncio.ensure_future(step)
    try:
        return await asyncio.shield(task)
    except asyncio.CancelledError:
        await asyncio.wait([task], timeout=min(ack_timeout_s, FINISH_BATCH_S))
        if not task.done():
            task.cancel()
        raise


async def pending(storage: Storage, *, after: int = 0) -> int:
    """Outbox rows not yet acknowledged by JetStream (past id `after`: a relay's cursor,
    beyond which rows already acknowledged only wait for their mark)."""
    async def run(tx: Tx) -> int:
        return int(await tx.fetchval(_COUNT_UNSENT, (after,)))

    return await storage.read(run)


class SentPruning:
    """Forgets sent rows older than `retain_s`, at most once a minute (both relays)."""

    def __init__(self, storage: Storage, retain_s: float, every_s: float = 60.0) -> None:
        self.storage = storage
        self.retain_s = retain_s
        self.every_s = every_s
        self._last = 0.0

    async def maybe(self) -> None:
        now = time.time()
        if now - self._last < self.every_s:
            return
        self._last = now
        await prune(self.storage, now - self.retain_s)


async def prune(storage: Storage, before: float) -> None:
    """Forget rows sent before `before` (well past the duplicate window)."""
    async def run(tx: Tx) -> None:
        await tx.run(PRUNE_SENT, (before,))

    await storage.write(run)
