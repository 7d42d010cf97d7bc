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

from services.common import breakers, traffic
from services.common.clients import Downstream
from services.common.discovery import Discovery
from services.common.registry import Instance, RegistryLink
from services.common.traffic import TrafficError, WeightedRing, parse_traffic
from tests.support.inprocess import RunningEcho, running_echo

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
async def versions(tmp_path: Path, monkeypatch: pytest.MonkeyPatch
                   ) -> AsyncIterator[dict[str, list[RunningEcho]]]:
    conf = tmp_path / "traffic.toml"
    conf.write_text('[routes]\necho = { v1 = 90, v2 = 10 }\n')
    monkeypatch.setenv("SHOP_TRAFFIC", str(conf))
    monkeypatch.delenv("ECHO_ADDR", raising=False)
    monkeypatch.setenv("SHOP_BREAKER_FAIL_MAX", "50")
    breakers.reset_breakers()
    async with AsyncExitStack() as stack:
        yield {v: [await stack.enter_async_context(running_echo(tmp_path / f"{v}-{i}"))
                   for i in range(2)] for v in ("v1", "v2")}
    breakers.reset_breakers()


async def test_discovery_splits_payment_style_90_10_between_versions(
        versions: dict[str, list[RunningEcho]]) -> None:
    disc = Discovery(RegistryLink("nats://127.0.0.1:1", name="unit", ttl_s=5))
    for version, echoes in versions.items():
        for n, echo in enumerate(echoes):
            info = Instance("echo", f"echo-{version}-{n}", echo.addr, version, 1.0, 1, {})
            disc._upsert(info.key, info)
    ds = Downstream("echo", Stub, cap_s=2.0, picker=disc)
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


async def test_a_call_rule_sets_the_deadline_and_the_attempts(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    conf = tmp_path / "traffic.toml"
    conf.write_text('[calls]\n"product.GetProduct" = { timeout_s = 0.4, attempts = 1 }\n')
    monkeypatch.setenv("SHOP_BREAKER_FAIL_MAX", "50")
    breakers.reset_breakers()
    async with running_echo(tmp_path / "echo") as echo:
        ds = Downstream("product", Stub, cap_s=3.0, address=echo.addr)
        try:
            reply = await ds.call(lambda s: s.GetProduct,
                                  product_pb2.GetProductRequest(id="whoami"),
                                  idempotent=True)
            assert 2.0 < float(reply.product.category) <= 3.05  # no rule: the 3 s cap
            monkeypatch.setenv("SHOP_TRAFFIC", str(conf))
            reply = await ds.call(lambda s: s.GetProduct,
                                  product_pb2.GetProductRequest(id="whoami"),
                                  idempotent=True, timeout=3.0)
            assert float(reply.product.category) <= 0.45  # the rule's 0.4 s
            before = echo.servicer.calls
            with pytest.raises(aio.AioRpcError) as info:
                await ds.call(lambda s: s.GetProduct,
                              product_pb2.GetProductRequest(id="unavailable"),
                              idempotent=True)
            assert info.value.code() is grpc.StatusCode.UNAVAILABLE
            assert echo.servicer.calls == before + 1  # not retried
        finally:
            await ds.close()
            breakers.reset_breakers()
