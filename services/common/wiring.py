"""What a process's composition root makes once from its settings and hands to the code it
builds: how channels are secured, the breakers, where calls go, who NATS sees.

    settings = load_settings("order")          # every variable, read once
    wiring = Wiring.of(settings)               # the process's shared parts
    app = await build(settings, wiring)        # products = wiring.downstream("product", ...)
    await wiring.start(life)                   # the registry link and discovery

`Wiring.of` makes the process's one `Transport` (mTLS as its identity, or plaintext),
its one `Breakers` registry (shared by discovery, every Downstream, the metrics and the
registry value), its `Traffic` rules, its `NatsAuth` and, unless SHOP_REGISTRY=off, its
registry link and `Discovery`, which every Downstream made here picks its instances
from; a `<SERVICE>_ADDR` pins a service to one address instead.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TypeVar

import pybreaker
from grpc import aio

from services.common.breakers import Breakers
from services.common.clients import Downstream
from services.common.discovery import Discovery
from services.common.lifecycle import Lifecycle
from services.common.natsauth import NatsAuth
from services.common.registry import RegistryLink
from services.common.settings import Settings
from services.common.tls import Transport
from services.common.traffic import Traffic, load_traffic

log = logging.getLogger("shop.wiring")

StubT = TypeVar("StubT")


@dataclass(frozen=True)
class Wiring:
    transport: Transport
    breakers: Breakers = field(default_factory=Breakers)
    traffic: Traffic = field(default_factory=load_traffic)
    nats: NatsAuth = field(default_factory=NatsAuth.plaintext)
    # `<SERVICE>_ADDR`: services pinned to one address.
    pinned: Mapping[str, str] = field(default_factory=dict)
    link: RegistryLink | None = None
    discovery: Discovery | None = None
    discovery_wait_s: float = 2.0

    @classmethod
    def of(cls, settings: Settings, *, identity: str = "") -> Wiring:
        """The wiring of a process claiming `identity` (default: its service's name; the
        gateway's is `gateway`). Called once, by the process's composition root."""
        claimed = identity or settings.service
        transport = Transport.of(settings.tls, claimed)
        breakers = Breakers(settings.breaker)
        traffic = load_traffic(settings.traffic_file)
        nats = NatsAuth(settings.nats.identity or settings.tls.identity_of(claimed),
                        settings.tls)
        link: RegistryLink | None = None
        discovery: Discovery | None = None
        if settings.discovery.enabled:
            link = RegistryLink(settings.nats_url, name=settings.instance_id, auth=nats,
                                ttl_s=settings.discovery.ttl_s,
                                replicas=settings.nats.replicas)
            discovery = Discovery(link, transport=transport, breakers=breakers,
                                  traffic=traffic, config=settings.discovery)
        return cls(transport, breakers, traffic, nats, dict(settings.pinned), link,
                   discovery, settings.discovery.wait_s)

    def downstream(
        self,
        service: str,
        stub_factory: Callable[[aio.Channel], StubT],
        *,
        cap_s: float = 5.0,
        address: str | None = None,
        breaker: pybreaker.CircuitBreaker | None = None,
        speaks_for_users: bool = False,
    ) -> Downstream[StubT]:
        """A Downstream of `service` on this process's transport, breakers and traffic
        rules, picking its instances through discovery unless pinned."""
        return Downstream(service, stub_factory, cap_s=cap_s,
                          address=address or self.pinned.get(service), breaker=breaker,
                          speaks_for_users=speaks_for_users, picker=self.discovery,
                          transport=self.transport, breakers=self.breakers,
                          traffic=self.traffic)

    async def start(self, life: Lifecycle, *, wait_s: float | None = None) -> None:
        """Start the registry link and discovery (waiting up to `wait_s`, default
        SHOP_DISCOVERY_WAIT_S, for the registry's first read), their stops in `life`. An
        unreachable NATS only means calls fall back (`<SERVICE>_ADDR`, the default port)
        until it is reachable."""
        life.push("breaker watches", self._stop_watches)
        if self.link is None or self.discovery is None:
            return
        self.link.start()
        life.push("registry link", self.link.close)
        life.push("discovery", self.discovery.stop)
        try:
            await self.discovery.start(self.discovery_wait_s if wait_s is None else wait_s)
        except Exception:
            log.exception("discovery failed to start; using fixed/default addresses")

    async def _stop_watches(self) -> None:
        self.breakers.stop_watches()
