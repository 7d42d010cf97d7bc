"""Client-side discovery: a live list of instances per service, from the registry bucket.

One `Discovery` per process watches `shop_registry` and keeps, per service, the
registered instances and the round-robin ring of the healthy ones. `Downstream` asks it
for the next instance on every call (`pick`, O(1), no awaits); an instance that answers
UNAVAILABLE is taken out of the ring (`mark_down`) until a grpc.health.v1 Check says
SERVING again. The Check names the service expected there (`shop.<svc>.v1.<Svc>Service`),
so another shop server that took over a reused port is not healthy for this one. Every
instance is health-checked now and then, a down one often. One
channel per instance, shared by every Downstream of the process, closed (after its calls
in flight finish) when the instance leaves the registry.

    disc = Discovery(link, transport=transport, breakers=breakers)  # the composition root's
    orders = Downstream("order", OrderServiceStub, picker=disc, transport=transport,
                        breakers=breakers)  # (services/common/wiring.py does both)
    await disc.start(wait_s)          # the process lifecycle starts it and stops it
    ...
    await disc.stop()

Settings (a `DiscoveryConfig`): SHOP_DISCOVERY_HEALTH_S (check every instance, default
5 s), SHOP_DISCOVERY_RECHECK_S (check a down one, 0.25 s), SHOP_DISCOVERY_CHECK_TIMEOUT_S
(0.5 s). Each instance's breaker is in the process's `Breakers`; its channel is made by
the process's `Transport`; weighted routes come from its `Traffic`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from dataclasses import dataclass
from typing import Any

import nats.errors

from services.common.breakers import Breakers
from services.common.cancellation import cancel_and_wait, within
from services.common.clients import Endpoint, Health
from services.common.config import DiscoveryConfig
from services.common.registry import Instance, RegistryLink, bucket_ttl
from services.common.tls import Transport
from services.common.traffic import Traffic, WeightedRing, load_traffic

__all__ = ["Discovery", "InstanceView"]

log = logging.getLogger("shop.discovery")

_DELETES = ("DEL", "PURGE")
# A leaving instance's channel stays open this long for the calls already on it.
_CLOSE_GRACE_S = 30.0


@dataclass(frozen=True)
class InstanceView:
    """What discovery currently believes about one instance (metrics, status pages)."""

    service: str
    instance_id: str
    addr: str
    healthy: bool


class _Known:
    __slots__ = ("endpoint", "info", "key", "seen")

    def __init__(self, key: str, info: Instance, endpoint: Endpoint) -> None:
        self.key = key
        self.info = info
        self.endpoint = endpoint
        self.seen = time.monotonic()


class _Pool:
    """The instances of one service and the ring picks go round."""

    __slots__ = ("everyone", "known", "n", "ring", "service", "split", "traffic")

    def __init__(self, service: str, traffic: Traffic) -> None:
        self.service = service
        self.traffic = traffic
        self.known: dict[str, _Known] = {}
        self.everyone: list[Endpoint] = []
        self.ring: list[Endpoint] = []
        self.split: WeightedRing[Endpoint] | None = None
        self.n = 0

    def rebuild(self) -> None:
        self.everyone = [k.endpoint for k in self.known.values()]
        self.ring = [ep for ep in self.everyone if ep.healthy]
        # A weighted route between versions (proto/traffic.toml), over the healthy ones.
        weights = self.traffic.routes.get(self.service)
        self.split = None
        if weights:
            split = WeightedRing(weights, [(k.info.version, k.endpoint)
                                           for k in self.known.values() if k.endpoint.healthy])
            self.split = split if split else None

    def pick(self) -> Endpoint | None:
        if self.split is not None:
            return self.split.pick()
        # None healthy: try them all anyway (better than failing without a call).
        ring = self.ring or self.everyone
        if not ring:
            return None
        # Outlier ejection: skip an instance whose breaker would refuse the call; when
        # every one would, the next one still gets it (fails fast, never a blackhole: its
        # breaker's health watch half-opens it once it serves again).
        for _ in range(len(ring)):
            self.n += 1
            ep = ring[self.n % len(ring)]
            if ep.breaker is None or ep.breaker.admits():
                return ep
        self.n += 1
        return ring[self.n % len(ring)]


class Discovery:
    """Watches the registry; implements clients.Picker."""

    def __init__(
        self,
        link: RegistryLink,
        *,
        transport: Transport,
        breakers: Breakers,
        traffic: Traffic | None = None,
        config: DiscoveryConfig | None = None,
        health_every_s: float | None = None,
        recheck_s: float | None = None,
        check_timeout_s: float | None = None,
    ) -> None:
        c = config or DiscoveryConfig()
        self.link = link
        self.transport = transport
        self.breakers = breakers
        self.traffic = traffic if traffic is not None else load_traffic()
        self.health_every_s = c.health_s if health_every_s is None else health_every_s
        self.recheck_s = c.recheck_s if recheck_s is None else recheck_s
        self.check_timeout_s = c.check_timeout_s if check_timeout_s is None else check_timeout_s
        self.ttl_s = link.ttl_s
        self.synced = asyncio.Event()  # the bucket's content has been read once
        self._pools: dict[str, _Pool] = {}
        self._by_key: dict[str, _Known] = {}
        self._tasks: list[asyncio.Task[None]] = []
        self._closing: set[asyncio.Task[None]] = set()

    # -- the hot path ------------------------------------------------------------

    def pick(self, service: str) -> Endpoint | None:
        pool = self._pools.get(service)
        return pool.pick() if pool is not None else None

    def endpoints(self, service: str) -> list[Endpoint]:
        pool = self._pools.get(service)
        return list(pool.everyone) if pool is not None else []

    def mark_down(self, endpoint: Endpoint, *, draining: bool = False) -> None:
        """Out of the ring until a check says SERVING. `draining`: the instance said
        NOT_SERVING itself (its graceful stop), which is expected, not a fault."""
        if not endpoint.healthy:
            return
        endpoint.healthy = False
        pool = self._pools.get(endpoint.service)
        if pool is not None:
            pool.rebuild()
        log.log(
            logging.INFO if draining else logging.WARNING,
            "instance draining" if draining else "instance marked down",
            extra={
                "downstream": endpoint.service,
                "downstream_instance": endpoint.instance,
                "addr": endpoint.addr,
            },
        )

    # -- views -------------------------------------------------------------------

    def instances(self, service: str | None = None) -> list[InstanceView]:
        out = [
            InstanceView(k.info.service, k.info.instance_id, k.endpoint.addr, k.endpoint.healthy)
            for k in self._by_key.values()
            if service is None or k.info.service == service
        ]
        return sorted(out, key=lambda v: (v.service, v.instance_id))

    def healthy_addrs(self, service: str) -> list[str]:
        pool = self._pools.get(service)
        return [ep.addr for ep in pool.ring] if pool is not None else []

    # -- life --------------------------------------------------------------------

    async def start(self, wait_s: float = 2.0) -> bool:
        """Start watching; wait up to `wait_s` for the first full read. True if synced."""
        self.link.start()
        if not self._tasks:
            self._tasks = [
                asyncio.create_task(self._watch_loop(), name="discovery-watch"),
                asyncio.create_task(self._health_loop(), name="discovery-health"),
            ]
        if wait_s > 0:
            with contextlib.suppress(TimeoutError):
                await within(self.synced.wait(), wait_s)
        return self.synced.is_set()

    async def stop(self) -> None:
        await cancel_and_wait(self._tasks)
        self._tasks = []
        for task in list(self._closing):
            task.cancel()
        for known in list(self._by_key.values()):
            with contextlib.suppress(Exception):
                await known.endpoint.close()
        self._by_key.clear()
        self._pools.clear()

    # -- registry changes ------------------------------------------------------------

    def _upsert(self, key: str, info: Instance) -> None:
        known = self._by_key.get(key)
        if known is not None and known.endpoint.addr == info.addr:
            known.info = info
            known.seen = time.monotonic()
            return
        if known is not None:
            self._remove(key)  # same instance id, new address: a new channel
        ep = Endpoint(info.service, info.addr, info.instance_id, transport=self.transport)
        ep.breaker = self.breakers.breaker_for(info.service, info.instance_id)
        known = _Known(key, info, ep)
        self._by_key[key] = known
        pool = self._pools.get(info.service)
        if pool is None:
            pool = self._pools[info.service] = _Pool(info.service, self.traffic)
        pool.known[key] = known
        pool.rebuild()
        log.info(
            "instance joined",
            extra={
                "downstream": info.service,
                "downstream_instance": info.instance_id,
                "addr": info.addr,
            },
        )

    def _remove(self, key: str) -> None:
        known = self._by_key.pop(key, None)
        if known is None:
            return
        pool = self._pools.get(known.info.service)
        if pool is not None:
            pool.known.pop(key, None)
            pool.rebuild()
        known.endpoint.healthy = False
        log.info(
            "instance left",
            extra={
                "downstream": known.info.service,
                "downstream_instance": known.info.instance_id,
                "addr": known.endpoint.addr,
            },
        )
        task = asyncio.create_task(known.endpoint.close(_CLOSE_GRACE_S))
        self._closing.add(task)
        task.add_done_callback(self._closing.discard)

    def _resync(self, present: set[str]) -> None:
        for key in [k for k in self._by_key if k not in present]:
            self._remove(key)

    def _sweep(self) -> None:
        """Backstop for a server without expiry markers: drop keys not refreshed in time."""
        limit = time.monotonic() - self.ttl_s * 1.5
        for key in [k for k, v in self._by_key.items() if v.seen < limit]:
            self._remove(key)

    async def _watch_loop(self) -> None:
        pause = 0.2
        while True:
            watcher: Any = None
            try:
                kv = await self.link.kv()
                self.ttl_s = await bucket_ttl(kv, self.link.ttl_s)
                watcher = await kv.watchall()
                await self._consume(watcher)
                pause = 0.2
            except asyncio.CancelledError:
                raise
            except Exception as err:
                log.debug("discovery watch failed, restarting", extra={"error": repr(err)})
                await asyncio.sleep(pause)
                pause = min(pause * 2, 5.0)
                with contextlib.suppress(TimeoutError, Exception):
                    await within(self.link.reopen(), 5.0)
            finally:
                if watcher is not None:
                    with contextlib.suppress(Exception):
                        await watcher.stop()

    async def _consume(self, watcher: Any) -> None:
        """Apply updates until the watch goes quiet for TTL/2 (live instances refresh every
        TTL/3, so silence means none is left or the watch is broken: start a fresh one)."""
        initial: set[str] | None = set()
        while True:
            try:
                entry = await watcher.updates(timeout=self.ttl_s / 2)
            except nats.errors.TimeoutError:
                if initial is not None:  # never got the end-of-initial marker
                    raise
                return
            if entry is None:
                if initial is not None:
                    self._resync(initial)
                    initial = None
                    self.synced.set()
                continue
            key: str = entry.key
            if entry.operation in _DELETES:
                self._remove(key)
                continue
            info = Instance.from_entry(key, entry.value)
            if info is None or info.protocol != "grpc":
                continue  # malformed, or not a gRPC service (the gateway): no call target
            self._upsert(key, info)
            if initial is not None:
                initial.add(key)

    # -- health --------------------------------------------------------------------

    async def _health_loop(self) -> None:
        last_full = time.monotonic()
        while True:
            await asyncio.sleep(self.recheck_s)
            self._sweep()
            now = time.monotonic()
            full = now - last_full >= self.health_every_s
            if full:
                last_full = now
            targets = [k.endpoint for k in self._by_key.values() if full or not k.endpoint.healthy]
            if targets:
                await asyncio.gather(*(self._check(ep) for ep in targets))

    async def check(self, endpoint: Endpoint) -> bool:
        """One grpc.health.v1 Check for the endpoint's own service (`health_name`), with
        a short deadline; True when SERVING."""
        return await endpoint.check_health(self.check_timeout_s)

    async def health(self, endpoint: Endpoint) -> Health:
        """One grpc.health.v1 Check of the endpoint, as a `Health`, with a short deadline."""
        return await endpoint.health(self.check_timeout_s)

    def _is_current(self, endpoint: Endpoint) -> bool:
        pool = self._pools.get(endpoint.service)
        return pool is not None and any(ep is endpoint for ep in pool.everyone)

    async def _check(self, endpoint: Endpoint) -> None:
        if not self._is_current(endpoint):
            return  # left meanwhile; its channel is closing
        found = await self.health(endpoint)
        ok = found is Health.SERVING
        if ok == endpoint.healthy or not self._is_current(endpoint):
            return
        if ok:
            endpoint.healthy = True
            pool = self._pools.get(endpoint.service)
            if pool is not None:
                pool.rebuild()
            log.info(
                "instance healthy again",
                extra={"downstream": endpoint.service, "downstream_instance": endpoint.instance},
            )
        else:
            self.mark_down(endpoint, draining=found is Health.NOT_SERVING)
