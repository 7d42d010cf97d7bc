"""A service's event side, started in the background: NATS never blocks serving gRPC.

`EventWorkers(settings, db, relay=..., consumers=[ConsumerSpec(...)])`
gives the composition root one task and one on_stop hook. The task connects the Bus
(retrying forever with capped back-off; one log line per state change, not per attempt),
ensures the streams, then runs the outbox relay (one active per SQLite file, see
outbox.py's lease; one per PostgreSQL database, see pg_relay.py) and every consumer, each
restarted on its own with back-off when it fails. Meanwhile the service serves: its state
changes wait in the outbox, and the durable consumers catch up once NATS answers.

Settings (`settings.nats`): SHOP_RELAY_LEASE_S, the relay lease (5 s), and the streams'
limits; NATS is connected to as `settings.nats_identity`.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from services.common.bus import Bus
from services.common.cancellation import cancel_and_wait
from services.common.consumer import EventConsumer, Route
from services.common.natsauth import NatsAuth
from services.common.outbox import OutboxRelay
from services.common.settings import Settings
from services.common.storage import Storage

if TYPE_CHECKING:
    from services.common.pg_relay import PgOutboxRelay

__all__ = ["ConsumerSpec", "EventWorkers", "make_relay"]

log = logging.getLogger("shop.eventing")

Task = Callable[[], Awaitable[None]]


@dataclass(frozen=True)
class ConsumerSpec:
    """One durable consumer: `EventConsumer(bus, db, durable=..., routes=..., **options)`."""

    durable: str
    routes: Sequence[Route]
    options: Mapping[str, Any] = field(default_factory=dict)


class _Backoff:
    def __init__(self, first_s: float, cap_s: float) -> None:
        self.first_s = first_s
        self.cap_s = cap_s
        self.next_s = first_s

    def reset(self) -> None:
        self.next_s = self.first_s

    async def sleep(self) -> None:
        delay = self.next_s
        self.next_s = min(self.next_s * 2, self.cap_s)
        await asyncio.sleep(delay)


class EventWorkers:
    """The Bus, the outbox relay and the consumers of one service process."""

    def __init__(self, settings: Settings, db: Storage, *, relay: bool,
                 consumers: Sequence[ConsumerSpec] = (),
                 relay_options: Mapping[str, Any] | None = None,
                 backoff_s: float = 0.5, backoff_cap_s: float = 5.0) -> None:
        if not relay and not consumers:
            raise ValueError("nothing to run: no relay and no consumers")
        self.settings = settings
        self.db = db
        self.want_relay = relay
        self.specs = list(consumers)
        self.relay_options: dict[str, Any] = {
            "lease_s": settings.nats.relay_lease_s, **(relay_options or {})}
        self.auth = NatsAuth(settings.nats_identity, settings.tls)
        self.backoff_s = backoff_s
        self.backoff_cap_s = backoff_cap_s
        self.bus: Bus | None = None
        self.relay: OutboxRelay | PgOutboxRelay | None = None
        self.consumers: list[EventConsumer] = []
        self.connected = asyncio.Event()  # set once the Bus is up and the streams exist

    @property
    def tasks(self) -> list[Task]:
        return [self.run]

    @property
    def on_stop(self) -> list[Task]:
        return [self.close]

    async def run(self) -> None:
        """Connect, then run the relay and the consumers; forever, cancel to stop."""
        bus = await self._connect()
        workers: list[tuple[str, Task]] = []
        if self.want_relay:
            self.relay = make_relay(self.db, bus, owner=self.settings.instance_id,
                                    **self.relay_options)
            workers.append(("outbox relay", self.relay.run))
        for spec in self.specs:
            consumer = EventConsumer(bus, self.db, durable=spec.durable, routes=spec.routes,
                                     **spec.options)
            self.consumers.append(consumer)
            workers.append((f"consumer {spec.durable}", consumer.run))
        tasks = [asyncio.create_task(self._supervise(name, fn), name=name)
                 for name, fn in workers]
        try:
            await asyncio.gather(*tasks)
        finally:
            await cancel_and_wait(tasks)

    async def _connect(self) -> Bus:
        s = self.settings
        backoff = _Backoff(self.backoff_s, self.backoff_cap_s)
        failing = ""
        while True:
            try:
                if self.bus is None:
                    self.bus = await Bus.connect(s.nats_url, name=s.instance_id,
                                                 auth=self.auth, config=s.nats,
                                                 connect_for_s=0.0)
                await self.bus.ensure_streams()
            except asyncio.CancelledError:
                raise
            except Exception as e:
                state = type(e).__name__
                if state != failing:  # once per state change, not per attempt
                    failing = state
                    log.warning("NATS not available; serving without events, retrying",
                                extra={"error": repr(e), "retry_max_s": self.backoff_cap_s})
                else:
                    log.debug("NATS still not available", extra={"error": repr(e)})
                if self.bus is not None and self.bus.nc.is_closed:
                    self.bus = None
                await backoff.sleep()
                continue
            log.info("NATS connected; events flowing", extra={"nats": s.nats_url})
            self.connected.set()
            return self.bus

    async def _supervise(self, name: str, fn: Task) -> None:
        """Run `fn` forever: restart it with back-off when it fails (e.g. NATS went away
        before a consumer was bound)."""
        backoff = _Backoff(self.backoff_s, self.backoff_cap_s)
        failing = ""
        while True:
            started = time.monotonic()
            try:
                await fn()
            except asyncio.CancelledError:
                raise
            except Exception as e:
                if time.monotonic() - started > 30.0:  # it ran fine a while: a new failure
                    failing = ""
                    backoff.reset()
                state = repr(e)
                if state != failing:
                    failing = state
                    log.warning("background task stopped; restarting with back-off",
                                extra={"task": name, "error": state})
                else:
                    log.debug("background task still failing",
                              extra={"task": name, "error": state})
                await backoff.sleep()
                continue
            # run() methods only return by failing; treat a return the same way.
            log.warning("background task returned; restarting", extra={"task": name})
            await backoff.sleep()

    async def close(self) -> None:
        """on_stop: the task is already cancelled (relay lease handed back); close NATS."""
        bus, self.bus = self.bus, None
        if bus is not None:
            await bus.close()


def make_relay(db: Storage, bus: Bus, **options: Any) -> OutboxRelay | PgOutboxRelay:
    """The backend's relay: a lease row per SQLite file, an advisory lock on PostgreSQL.
    (The PostgreSQL one is imported only for that backend: asyncpg costs a SQLite process
    about 3 MB and its import time.)"""
    if db.dialect == "postgres":
        from services.common.pg import PgDatabase
        from services.common.pg_relay import PgOutboxRelay

        if isinstance(db, PgDatabase):
            return PgOutboxRelay(db, bus, **options)
    return OutboxRelay(db, bus, **options)
