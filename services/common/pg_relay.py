"""The outbox relay on PostgreSQL: one publisher per database at a time, chosen by a
session advisory lock; woken by LISTEN/NOTIFY.

Every instance runs a relay. Each opens a connection of its own (never a pooled one: a
pool's release would run `pg_advisory_unlock_all()` and `UNLISTEN *`) and waits in
`pg_advisory_lock` on it; the server grants the lock to one session, and hands it to the
next waiting one the moment that session ends, even by kill -9 (its socket closes). So
exactly one relay publishes, in one order, and no row is published by two relays at
once; a take-over costs no polling and no lease expiry.

Order: rows are read in `(txid, id)` order and only below the oldest transaction still
running (`pg_snapshot_xmin(pg_current_snapshot())`). A row whose transaction commits late
is never skipped (a plain serial would be: a smaller id can commit after a larger one),
and every row read later sorts after every row read now. Writes to one aggregate
conflict on its row, and under SERIALIZABLE the later one waits or is retried, so its
transaction id, and its events, come after the earlier one's.

Fencing: the mark-sent UPDATE runs on the lock's own session and only while that session
still holds the lock, so a relay that lost it (its session died) cannot mark anything, and
stops. A batch published but not marked is published again by the next holder; its
Nats-Msg-Id (the event id) makes JetStream drop the repeat. Nothing is held across a
publish but that idle session: no pooled connection, no open transaction.

The active relay LISTENs on `shop_outbox` (a statement trigger NOTIFYs it at each commit
that added outbox rows, from any instance) and lingers `linger_s` after a wake, so one
read, one publish round and one mark carry the commits of that moment. A poll every
`poll_s` covers a lost notification; when rows are held back by an older transaction
still running, it looks again after `linger_s`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from typing import Any

import asyncpg

from services.common.bus import Bus
from services.common.outbox import (
    RelayStats,
    SentPruning,
    finish_batch,
    pending,
    publish_in_waves,
)
from services.common.pg import PgDatabase

__all__ = ["RELAY_LOCK", "PgOutboxRelay"]

log = logging.getLogger("shop.outbox")

# The advisory lock key of the relay (advisory locks are per database).
RELAY_LOCK = 0x6F7574626F78  # "outbox"
CHANNEL = "shop_outbox"

_SELECT = ("SELECT id, event_id, subject, correlation_id, traceparent, data, aggregate_id, txid,"
           " pg_snapshot_xmin(pg_current_snapshot())::text::bigint AS horizon"
           " FROM outbox WHERE sent_at IS NULL ORDER BY txid, id LIMIT $1")
_MARK = ("UPDATE outbox SET sent_at = $1 WHERE id = ANY($2::bigint[]) AND sent_at IS NULL"
         " AND EXISTS (SELECT 1 FROM pg_locks WHERE locktype = 'advisory'"
         " AND pid = pg_backend_pid() AND granted"
         " AND ((classid::bigint << 32) | objid::bigint) = $3)")


class LockLost(Exception):
    """The relay's session no longer holds the lock: another relay may be publishing."""


class PgOutboxRelay:
    def __init__(self, db: PgDatabase, bus: Bus, *, batch: int = 256, poll_s: float = 5.0,
                 ack_timeout_s: float = 5.0, retain_s: float = 3600.0,
                 owner: str | None = None, linger_s: float = 0.02,
                 **_sqlite_only: Any) -> None:
        self.db = db
        self.bus = bus
        self.batch = batch
        self.poll_s = poll_s
        self.ack_timeout_s = ack_timeout_s
        self.retain_s = retain_s
        self.owner = owner or f"relay-{uuid.uuid4().hex[:8]}"
        self.linger_s = linger_s
        self.stats = RelayStats()
        self._wake = asyncio.Event()
        self._conn: asyncpg.Connection | None = None
        self._active = False
        self._pruning = SentPruning(db, retain_s)

    @property
    def active(self) -> bool:
        """True while this relay holds the lock (it is the one publishing)."""
        return self._active

    def _on_notify(self, *_: Any) -> None:
        self._wake.set()

    async def run(self) -> None:
        """Wait for the lock, then publish while holding it; cancel to stop (closing the
        session hands the lock to the next relay at once)."""
        backoff = 0.1
        while True:
            try:
                await self._session()
            except asyncio.CancelledError:
                raise
            except Exception as e:  # the session died (server restart, network): again
                self.stats.failures += 1
                log.warning("outbox relay session failed; reconnecting",
                            extra={"owner": self.owner, "error": repr(e),
                                   "retry_in_s": backoff})
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 2.0)
            else:
                backoff = 0.1

    async def _session(self) -> None:
        conn = await self.db.dedicated()
        self._conn = conn
        try:
            await conn.execute("SELECT pg_advisory_lock($1)", RELAY_LOCK)
            self._active = True
            self.stats.leases += 1
            log.info("outbox relay active", extra={"owner": self.owner})
            await conn.add_listener(CHANNEL, self._on_notify)
            await self._publish_while_active()
        finally:
            self._active = False
            self._conn = None
            # The session must end here (that is what hands the lock over): close it
            # politely, or cut it when an operation is still in progress on it.
            try:
                await asyncio.shield(conn.close(timeout=2.0))
            except BaseException as e:  # not raised: the body's own exception goes on
                log.debug("relay session closed abruptly", extra={"error": repr(e)})
                conn.terminate()

    async def _publish_while_active(self) -> None:
        backoff = 0.1
        while True:
            self._wake.clear()
            try:
                more, held_back = await finish_batch(self.relay_once(), self.ack_timeout_s)
            except (LockLost, asyncpg.PostgresError, asyncpg.InterfaceError, OSError):
                raise  # the session is in doubt: start a new one
            except Exception as e:  # a publish failed (NATS): keep the lock, retry
                self.stats.failures += 1
                log.warning("outbox relay failed; retrying", extra={"error": repr(e),
                                                                 "retry_in_s": backoff})
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 2.0)
                continue
            backoff = 0.1
            if more:
                continue
            await self._pruning.maybe()
            if held_back:
                await asyncio.sleep(max(self.linger_s, 0.005))
                continue
            # asyncio.timeout, not wait_for: 3.11's wait_for can swallow a cancel
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self.poll_s):
                    await self._wake.wait()
            if self._wake.is_set() and self.linger_s > 0:
                await asyncio.sleep(self.linger_s)

    async def relay_once(self) -> tuple[bool, bool]:
        """Publish one batch: (a full batch went out, rows wait behind an older running
        transaction). Raises when a publish failed, after marking the acknowledged
        prefix sent; LockLost when the session no longer holds the lock."""
        conn = self._conn
        if conn is None:
            raise LockLost("no session")
        rows = await conn.fetch(_SELECT, self.batch)
        ready = [r for r in rows if r["txid"] < r["horizon"]]
        held_back = len(ready) < len(rows)
        if not ready:
            return False, held_back
        ok, failure = await publish_in_waves(self.bus, ready, timeout_s=self.ack_timeout_s)
        if ok:
            ids = [int(r["id"]) for r in ready[:ok]]
            status = await conn.execute(_MARK, time.time(), ids, RELAY_LOCK)
            if status.rsplit(" ", 1)[-1] == "0":
                raise LockLost(f"{self.owner} marked nothing: the lock is not held")
            self.stats.published += ok
            self.stats.batches += 1
        if ok < len(ready):
            raise failure or RuntimeError("publish not acknowledged")
        return len(rows) == self.batch and not held_back, held_back

    async def pending(self) -> int:
        return await pending(self.db)

