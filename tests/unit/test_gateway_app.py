"""The whole gateway app in-process, with fake downstreams: auth, limits, 4xx, dashboard."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass

import grpc
import httpx
import pytest
from google.protobuf.message import Message
from grpc import aio
from grpc_health.v1 import health_pb2
from openapi_spec_validator import validate
from shop.notification.v1 import notification_pb2
from shop.order.v1 import order_pb2
from shop.product.v1 import product_pb2
from shop.user.v1 import user_pb2

from gateway.app import create_app
from gateway.config import GatewaySettings
from gateway.testing import FakeCaller, TokenMinter, running
from services.common.settings import SERVICES


@dataclass
class Harness:
    client: httpx.AsyncClient
    fakes: dict[str, FakeCaller]
    minter: TokenMinter

    def auth(self, user: str) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.minter.token(user)}"}


def _fakes(minter: TokenMinter) -> dict[str, FakeCaller]:
    fakes = {name: FakeCaller(name) for name in SERVICES}
    fakes["user"].handlers["GetJwks"] = lambda _: user_pb2.GetJwksResponse(
        keys=[user_pb2.Jwk(**minter.jwk)]
    )
    fakes["user"].handlers["GetUser"] = lambda r: user_pb2.GetUserResponse(
        user=user_pb2.User(id="u-1", email="a@example.com", name="A")
    )
    fakes["product"].handlers["ListProducts"] = lambda r: product_pb2.ListProductsResponse(
        products=[product_pb2.Product(id="p1", price_cents=500)]
    )
    fakes["order"].handlers["ListOrders"] = lambda r: order_pb2.ListOrdersResponse(
        orders=[order_pb2.Order(id=f"o{i}") for i in range(5)]
    )
    fakes["order"].handlers["CreateOrder"] = lambda r: order_pb2.CreateOrderResponse(
        order=order_pb2.Order(id="o9", status=order_pb2.ORDER_STATUS_CONFIRMED)
    )
    fakes["notification"].handlers["CountUnread"] = lambda r: notification_pb2.CountUnreadResponse(
        count=3
    )
    return fakes


async def _harness(**overrides: object) -> AsyncIterator[Harness]:
    minter = TokenMinter()
    fakes = _fakes(minter)
    settings = GatewaySettings(**overrides)  # type: ignore[arg-type]
    app = create_app(settings, upstreams=dict(fakes), health=dict(fakes))
    async with running(app):
        transport = httpx.ASGITransport(app=app, client=("10.0.0.1", 1234))
        async with httpx.AsyncClient(transport=transport, base_url="http://gw") as client:
            yield Harness(client, fakes, minter)


@pytest.fixture
async def gw() -> AsyncIterator[Harness]:
    async for h in _harness(dashboard_part_timeout_s=0.2):
        yield h


async def test_request_id_is_echoed_or_made_and_passed_downstream(gw: Harness) -> None:
    r = await gw.client.get("/api/products", headers={"X-Request-Id": "req-123"})
    assert r.status_code == 200
    assert r.headers["x-request-id"] == "req-123"
    assert gw.fakes["product"].calls[-1].request_id == "req-123"
    r2 = await gw.client.get("/healthz")
    assert len(r2.headers["x-request-id"]) == 32
    bad = await gw.client.get("/api/products", headers={"X-Request-Id": "a b\tc"})
    assert bad.headers["x-request-id"] != "a b\tc"


async def test_verified_user_goes_downstream_as_x_user_id(gw: Harness) -> None:
    r = await gw.client.get("/api/users/me", headers=gw.auth("u-77"))
    assert r.status_code == 200
    assert r.json()["email"] == "a@example.com"
    call = gw.fakes["user"].calls[-1]
    assert (call.method, call.user_id, call.request.id) == ("GetUser", "u-77", "me")  # type: ignore[attr-defined]


async def test_protected_routes_need_a_token_open_ones_do_not(gw: Harness) -> None:
    for method, path in [
        ("GET", "/api/orders"),
        ("GET", "/api/cart"),
        ("GET", "/api/dashboard"),
        ("POST", "/api/orders"),
        ("GET", "/api/users/me"),
    ]:
        r = await gw.client.request(method, path)
        assert r.status_code == 401, (method, path)
        assert r.json()["error"]["status"] == "UNAUTHENTICATED"
    assert (await gw.client.get("/api/products")).status_code == 200
    bad = await gw.client.get("/api/orders", headers={"Authorization": "Bearer x.y.z"})
    assert bad.status_code == 401
    assert not gw.fakes["order"].calls


async def test_create_order_is_201_and_bad_input_never_reaches_the_service(gw: Harness) -> None:
    h = {**gw.auth("u-1"), "content-type": "application/json"}
    ok = await gw.client.post("/api/orders", content=b'{"cardToken":"tok_visa"}', headers=h)
    assert ok.status_code == 201
    assert ok.json()["status"] == "ORDER_STATUS_CONFIRMED"
    calls_before = len(gw.fakes["order"].calls)
    cases = [
        (b"{bad json", h, 400),
        (b'{"items": "x"}', h, 400),
        (b'{"surprise": 1}', h, 400),
        (b'{"cardToken": "t"}', {**gw.auth("u-1"), "content-type": "text/plain"}, 415),
        (b"x" * (70 * 1024), h, 413),
    ]
    for body, headers, status in cases:
        r = await gw.client.post("/api/orders", content=body, headers=headers)
        assert r.status_code == status, body[:20]
        assert r.json()["error"]["code"] == status
    assert len(gw.fakes["order"].calls) == calls_before


async def test_unknown_query_parameter_and_unknown_route(gw: Harness) -> None:
    r = await gw.client.get("/api/products?colour=red")
    assert r.status_code == 400
    assert "colour" in r.json()["error"]["message"]
    assert (await gw.client.get("/api/nowhere")).status_code == 404



async def test_405_says_which_methods_are_allowed(gw: Harness) -> None:
    for method, path, allowed in [
        ("PUT", "/api/products", {"GET"}),
        ("PATCH", "/api/cart", {"DELETE", "GET"}),
        ("GET", "/api/cart/items", {"POST"}),
        ("POST", "/healthz", {"GET", "HEAD"}),
        ("DELETE", "/openapi.json", {"GET", "HEAD"}),
    ]:
        r = await gw.client.request(method, path)
        assert r.status_code == 405, (method, path)
        assert set(r.headers["allow"].split(", ")) == allowed, (method, path)
        assert r.json()["error"]["code"] == 405


async def test_downstream_errors_map_to_http(gw: Harness) -> None:
    def refuse(_: Message) -> Message:
        raise aio.AioRpcError(
            grpc.StatusCode.FAILED_PRECONDITION, aio.Metadata(), aio.Metadata(), "out of stock: p1"
        )

    gw.fakes["order"].handlers["CreateOrder"] = refuse
    r = await gw.client.post("/api/orders", json={"cardToken": "tok_visa"}, headers=gw.auth("u"))
    assert r.status_code == 400
    assert r.json()["error"] == {
        "code": 400,
        "status": "FAILED_PRECONDITION",
        "message": "out of stock: p1",
        "details": [],
    }


async def test_rate_limit_is_per_identity() -> None:
    async for gw in _harness(rate_limit="3/minute"):
        alice, bob = gw.auth("alice"), gw.auth("bob")
        for _ in range(3):
            assert (await gw.client.get("/api/orders", headers=alice)).status_code == 200
        limited = await gw.client.get("/api/orders", headers=alice)
        assert limited.status_code == 429
        assert int(limited.headers["retry-after"]) >= 1
        assert limited.headers["ratelimit-limit"] == "3"
        assert limited.headers["ratelimit-remaining"] == "0"
        assert int(limited.headers["ratelimit-reset"]) >= 1
        assert limited.json()["error"]["status"] == "RESOURCE_EXHAUSTED"
        # Another user is untouched by alice's excess.
        assert (await gw.client.get("/api/orders", headers=bob)).status_code == 200


async def test_dashboard_in_parallel_with_a_hung_part_degrades_fast(gw: Harness) -> None:
    ok = await gw.client.get("/api/dashboard", headers=gw.auth("u-1"))
    assert ok.status_code == 200
    body = ok.json()
    assert body["degraded"] == []
    assert body["unreadNotifications"] == 3
    assert len(body["recentOrders"]) == 5
    assert gw.fakes["order"].calls[-1].request.page_size == 5  # type: ignore[attr-defined]

    async def hang(_: Message) -> Message:
        await asyncio.sleep(10)
        raise AssertionError("unreachable")

    gw.fakes["notification"].handlers["CountUnread"] = hang
    started = time.monotonic()
    slow = await gw.client.get("/api/dashboard", headers=gw.auth("u-1"))
    assert time.monotonic() - started < 1.0
    assert slow.status_code == 200
    assert slow.json()["degraded"] == ["notification"]
    # The last good value for this user is the fallback.
    assert slow.json()["unreadNotifications"] == 3
    other = await gw.client.get("/api/dashboard", headers=gw.auth("u-2"))
    assert other.json()["unreadNotifications"] == 0


async def test_readyz_reflects_downstream_health(gw: Harness) -> None:
    serving = lambda _: health_pb2.HealthCheckResponse(status=1)  # noqa: E731
    for fake in gw.fakes.values():
        fake.handlers["Check"] = serving
    assert (await gw.client.get("/readyz")).status_code == 200
    gw.fakes["payment"].handlers["Check"] = lambda _: health_pb2.HealthCheckResponse(status=2)
    r = await gw.client.get("/readyz")
    assert r.status_code == 503
    assert r.json()["services"]["payment"] == "NOT_SERVING"


async def test_openapi_is_valid_and_docs_and_metrics_are_served(gw: Harness) -> None:
    spec = (await gw.client.get("/openapi.json")).json()
    validate(spec)
    assert spec["openapi"].startswith("3.1")
    orders = spec["paths"]["/api/orders"]
    assert orders["post"]["security"] == [{"bearerAuth": []}]
    assert "security" not in spec["paths"]["/api/products"]["get"]
    assert set(orders["post"]["responses"]) >= {"201", "202", "401", "default"}
    order_schema = spec["components"]["schemas"]["shop.order.v1.Order"]["properties"]
    assert order_schema["totalCents"]["type"] == "string"
    assert "/api/dashboard" in spec["paths"]
    docs = await gw.client.get("/docs")
    assert docs.status_code == 200
    assert b"/openapi.json" in docs.content
    assert b"<script src=" not in docs.content  # nothing fetched from a CDN
    await gw.client.get("/api/products")
    metrics = (await gw.client.get("/metrics")).text
    assert 'shop_gateway_requests_total{method="GET",route="/api/products",status="200"}' in metrics
    assert "shop_gateway_request_duration_seconds_bucket" in metrics
    assert 'shop_gateway_breaker_state{service="order"} 0.0' in metrics
    json.dumps(spec)
