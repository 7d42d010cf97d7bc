"""A process's wiring: made once from its settings, one of each shared part, nothing
ambient."""

from __future__ import annotations

from typing import TYPE_CHECKING

from shop.product.v1 import product_pb2_grpc

from services.common.config import BreakerConfig, DiscoveryConfig, NatsConfig, TlsConfig
from services.common.lifecycle import Lifecycle
from services.common.settings import Settings
from services.common.wiring import Wiring
from tests.support.mesh import mtls_enabled, settings_for

if TYPE_CHECKING:  # on an aio channel the stub is the .pyi's async one
    Stub = product_pb2_grpc.ProductServiceAsyncStub
else:
    Stub = product_pb2_grpc.ProductServiceStub

PLAIN = TlsConfig(enabled=False)


def test_discovery_and_every_downstream_share_the_process_breakers() -> None:
    settings = Settings(service="order", tls=PLAIN, breaker=BreakerConfig(fail_max=2))
    wiring = Wiring.of(settings)
    assert wiring.discovery is not None and wiring.link is not None
    assert wiring.discovery.breakers is wiring.breakers
    products = wiring.downstream("product", Stub)
    again = wiring.downstream("product", Stub, cap_s=1.0)
    assert products.picker is wiring.discovery
    assert products.breakers is wiring.breakers
    assert products.breaker is again.breaker  # one breaker per service per process
    assert products.breaker.fail_max == 2
    assert products.transport is wiring.transport is wiring.discovery.transport
    # A second process (another wiring) has breakers of its own.
    assert Wiring.of(settings).downstream("product", Stub).breaker is not products.breaker


def test_pinned_addresses_and_the_registry_switch() -> None:
    settings = Settings(service="cart", tls=PLAIN, pinned={"product": "product.svc:7000"},
                        discovery=DiscoveryConfig(enabled=False))
    wiring = Wiring.of(settings)
    assert wiring.discovery is None and wiring.link is None
    assert wiring.downstream("product", Stub).address == "product.svc:7000"
    assert wiring.downstream("user", Stub).address == "127.0.0.1:50051"  # default port


def test_identities_come_from_the_settings() -> None:
    assert Wiring.of(Settings(service="order", tls=PLAIN)).nats.identity == "order"
    named = Settings(service="order", tls=TlsConfig(enabled=False, identity="backoffice"))
    assert Wiring.of(named).nats.identity == "backoffice"
    own_nats = Settings(service="order", tls=PLAIN, nats=NatsConfig(identity="operator"))
    assert Wiring.of(own_nats).nats.identity == "operator"
    gateway = Settings(service="gateway", tls=PLAIN)
    assert Wiring.of(gateway, identity="gateway").nats.identity == "gateway"
    assert Wiring.of(Settings(service="order", tls=PLAIN)).transport.mesh is None


def test_with_mtls_the_transport_presents_the_process_identity() -> None:
    if not mtls_enabled():  # plaintext session: the transport has no mesh to look at
        assert Wiring.of(settings_for("order")).transport.mesh is None
        return
    wiring = Wiring.of(settings_for("order"))
    assert wiring.transport.identity == "order"
    assert wiring.transport.generation() >= 1  # the session's files were read


async def test_start_pushes_the_stops_of_what_it_started() -> None:
    settings = Settings(service="order", tls=PLAIN, nats_url="nats://127.0.0.1:1",
                        discovery=DiscoveryConfig(wait_s=0.0))
    wiring = Wiring.of(settings)
    life = Lifecycle()
    await wiring.start(life)
    assert life.started == ["breaker watches", "registry link", "discovery"]
    await life.stop()
    assert life.started == []
