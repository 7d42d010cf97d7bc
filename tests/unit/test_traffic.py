"""Traffic management: the one configuration, and a weighted split between versions
measured at the servers."""

from __future__ import annotations

import itertools
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack
from pathlib import Path
from typing import TYPE_CHECKING

import grpc
import pytest
from grpc import aio
from shop.product.v1 import product_pb2, product_pb2_grpc

from services.common import traffic
from services.common.breakers import Breakers
from services.common.clients import Downstream
from services.common.config import BreakerConfig
from services.common.discovery import Discovery
from services.common.registry import Instance, RegistryLink
from services.common.traffic import TrafficError, WeightedRing, load_traffic, parse_traffic
from tests.support.inprocess import RunningEcho, running_echo
from tests.support.mesh import nats_auth, transport

if TYPE_CHECKING:  # on an aio channel the stub is the .pyi's async one
    Stub = product_pb2_grpc.ProductServiceAsyncStub
else:
    Stub = product_pb2_grpc.ProductServiceStub


def test_the_shipped_configuration_parses_and_names_the_canary() -> None:
    t = parse_traffic(traffic.TRAFFIC_FILE.read_text())
    assert t.routes["payment"] == {"v1": 90, "v2": 10}
    assert t.rule("user", "GetJwks").timeout_s == 2.0
    assert t.rule("user", "Nothing") == traffic.CallRule()


def test_bad_files_are_refused_with_the_reason() -> None:
    with pytest.raises(TrafficError, match="positive"):
        parse_traffic('[calls]\n"a.B" = { timeout_s = -1 }\n')
    with pytest.raises(TrafficError, match="unknown"):
        parse_traffic('[calls]\n"a.B" = { retries = 2 }\n')
    with pytest.raises(TrafficError, match=r"<service>\.<Method>"):
        parse_traffic('[calls]\n"nomethod" = { attempts = 2 }\n')
    with pytest.raises(TrafficError, match="whole"):
        parse_traffic('[routes]\np = { v1 = 0.5 }\n')


def test_smooth_weights_split_exactly_and_unnamed_versions_get_nothing() -> None:
    ring = WeightedRing({"v1": 90, "v2": 10},
                        [("v1", "a"), ("v1", "b"), ("v2", "c"), ("v3", "d")])
    picks = [ring.pick() for _ in range(1000)]
    assert picks.count("c") == 100
    assert picks.count("a") == picks.count("b") == 450
    assert "d" not in picks
    # never two v2 calls in a row: the canary's share is spread out
    assert all(not (x == y == "c") for x, y in itertools.pairwise(picks))
    assert not WeightedRing({"v1": 1}, [("v9", "x")])


@pytest.fixture
async def versions(tmp_path: Path) -> AsyncIterator[dict[str, list[RunningEcho]]]:
    async with AsyncExitStack() as stack:
        yield {v: [await stack.enter_async_context(running_echo(tmp_path / f"{v}-{i}"))
                   for i in range(2)] for v in ("v1", "v2")}


async def test_discovery_splits_payment_style_90_10_between_versions(
        versions: dict[str, list[RunningEcho]], tmp_path: Path) -> None:
    conf = tmp_path / "traffic.toml"  # SHOP_TRAFFIC
    conf.write_text('[routes]\necho = { v1 = 90, v2 = 10 }\n')
    rules = load_traffic(conf)
    reg = Breakers(BreakerConfig(fail_max=50))
    link = RegistryLink("nats://127.0.0.1:1", name="unit", ttl_s=5, auth=nats_auth())
    disc = Discovery(link, transport=transport(), breakers=reg, traffic=rules)
    for version, echoes in versions.items():
        for n, echo in enumerate(echoes):
            info = Instance("echo", f"echo-{version}-{n}", echo.addr, version, 1.0, 1, {})
            disc._upsert(info.key, info)
    ds = Downstream("echo", Stub, cap_s=2.0, picker=disc, transport=transport(),
                    breakers=reg, traffic=rules)
    try:
        for _ in range(500):
            await ds.call(
                lambda s: s.GetProduct, product_pb2.GetProductRequest(id="x"),
                          idempotent=True)
    finally:
        await ds.close()
        await disc.stop()
    served = {v: sum(e.servicer.calls for e in echoes) for v, echoes in versions.items()}
    share = served["v2"] / sum(served.values())
    print(f"measured split: v1 {served['v1']} / v2 {served['v2']} ({share:.1%} to v2)")
    assert served == {"v1": 450, "v2": 50}
    # inside a version the calls still go round its instances
    assert [e.servicer.calls for e in versions["v1"]] == [225, 225]


async def test_a_call_rule_sets_the_deadline_and_the_attempts(tmp_path: Path) -> None:
    conf = tmp_path / "traffic.toml"  # SHOP_TRAFFIC
    conf.write_text('[calls]\n"product.GetProduct" = { timeout_s = 0.4, attempts = 1 }\n')
    reg = Breakers(BreakerConfig(fail_max=50))
    async with running_echo(tmp_path / "echo") as echo:
        ds = Downstream("product", Stub, cap_s=3.0, address=echo.addr, transport=transport(),
                        breakers=reg)
        ruled = Downstream("product", Stub, cap_s=3.0, address=echo.addr,
                           transport=transport(), breakers=reg, traffic=load_traffic(conf))
        try:
            reply = await ds.call(lambda s: s.GetProduct,
                                  product_pb2.GetProductRequest(id="whoami"),
                                  idempotent=True)
            assert 2.0 < float(reply.product.category) <= 3.05  # no rule: the 3 s cap
            reply = await ruled.call(lambda s: s.GetProduct,
                                  product_pb2.GetProductRequest(id="whoami"),
                                  idempotent=True, timeout=3.0)
            assert float(reply.product.category) <= 0.45  # the rule's 0.4 s
            before = echo.servicer.calls
            with pytest.raises(aio.AioRpcError) as info:
                await ruled.call(lambda s: s.GetProduct,
                                 product_pb2.GetProductRequest(id="unavailable"),
                                 idempotent=True)
            assert info.value.code() is grpc.StatusCode.UNAVAILABLE
            assert echo.servicer.calls == before + 1  # not retried
        finally:
            await ds.close()
            await ruled.close()
