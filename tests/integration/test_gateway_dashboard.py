"""The dashboard's part deadlines trip breakers of their own, never the shared ones.

Real grpc.aio servers for user, order and notification in-process, the gateway in front of
them through real Downstreams (channels, shared per-service breakers). Driving the dashboard
into degradation (notification and order hung) must leave GET and POST /api/orders working.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest
from grpc import aio
from shop.notification.v1 import notification_pb2, notification_pb2_grpc
from shop.order.v1 import order_pb2, order_pb2_grpc
from shop.user.v1 import user_pb2, user_pb2_grpc

from gateway.app import GatewayState, create_app
from gateway.config import GatewaySettings
from gateway.testing import FakeCaller, TokenMinter, running
from gateway.upstreams import Caller
from services.common.breakers import Breakers
from services.common.clients import Downstream
from services.common.settings import SERVICES
from tests.support import mesh


@dataclass
class Switches:
    hang_orders: bool = False
    hang_notifications: bool = False
    hang_users: bool = False
    user_calls: int = 0


class _Users(user_pb2_grpc.UserServiceServicer):
    def __init__(self, minter: TokenMinter, switches: Switches) -> None:
        self.minter = minter
        self.switches = switches

    async def GetJwks(self, request: Any, context: Any) -> user_pb2.GetJwksResponse:
        return user_pb2.GetJwksResponse(keys=[user_pb2.Jwk(**self.minter.jwk)])

    async def GetUser(self, request: Any, context: Any) -> user_pb2.GetUserResponse:
        self.switches.user_calls += 1
        if self.switches.hang_users:
            await asyncio.sleep(5)
        return user_pb2.GetUserResponse(user=user_pb2.User(id="u-1", email="a@example.com"))


class _Orders(order_pb2_grpc.OrderServiceServicer):
    def __init__(self, switches: Switches) -> None:
        self.switches = switches

    async def ListOrders(self, request: Any, context: Any) -> order_pb2.ListOrdersResponse:
        if self.switches.hang_orders:
            await asyncio.sleep(5)
        return order_pb2.ListOrdersResponse(orders=[order_pb2.Order(id="o1")])

    async def CreateOrder(self, request: Any, context: Any) -> order_pb2.CreateOrderResponse:
        return order_pb2.CreateOrderResponse(
            order=order_pb2.Order(id="o2", status=order_pb2.ORDER_STATUS_CONFIRMED)
        )


class _Notifications(notification_pb2_grpc.NotificationServiceServicer):
    def __init__(self, switches: Switches) -> None:
        self.switches = switches

    async def CountUnread(self, request: Any, context: Any) -> notification_pb2.CountUnreadResponse:
        if self.switches.hang_notifications:
            await asyncio.sleep(5)  # as good as SIGSTOPped
        return notification_pb2.CountUnreadResponse(count=2)


@dataclass
class Rig:
    client: httpx.AsyncClient
    state: GatewayState
    switches: Switches
    auth: dict[str, str]
    breakers: Breakers


@pytest.fixture
async def rig() -> AsyncIterator[Rig]:
    shared = Breakers()  # the breakers every route shares
    minter = TokenMinter()
    switches = Switches()
    server = aio.server()
    # Stand-ins serving only the calls the dashboard makes.
    user_pb2_grpc.add_UserServiceServicer_to_server(_Users(minter, switches), server)  # type: ignore[abstract]
    order_pb2_grpc.add_OrderServiceServicer_to_server(_Orders(switches), server)  # type: ignore[abstract]
    notification_pb2_grpc.add_NotificationServiceServicer_to_server(
        _Notifications(switches), server  # type: ignore[abstract]
    )
    port = mesh.add_port(server, "127.0.0.1:0", "user", "order", "notification")
    await server.start()
    addr = f"127.0.0.1:{port}"
    upstreams: dict[str, Caller] = {name: FakeCaller(name) for name in SERVICES}
    via = mesh.transport()
    upstreams["user"] = Downstream(
        "user", user_pb2_grpc.UserServiceStub, address=addr, speaks_for_users=True,
        transport=via, breakers=shared)
    upstreams["order"] = Downstream(
        "order", order_pb2_grpc.OrderServiceStub, address=addr, speaks_for_users=True,
        transport=via, breakers=shared)
    upstreams["notification"] = Downstream(
        "notification",
        notification_pb2_grpc.NotificationServiceStub,
        address=addr,
        speaks_for_users=True, transport=via, breakers=shared)
    for name in ("user", "order", "notification"):
        # Connected before the first dashboard, whose parts have 0.2 s each.
        ds = upstreams[name]
        assert isinstance(ds, Downstream)
        await ds.connect()
    settings = GatewaySettings(dashboard_part_timeout_s=0.2, dashboard_breaker_fail_max=3)
    app = create_app(settings, upstreams=upstreams, health=dict(upstreams))
    try:
        async with running(app):
            transport = httpx.ASGITransport(app=app, client=("10.0.0.1", 1234))
            async with httpx.AsyncClient(transport=transport, base_url="http://gw") as client:
                yield Rig(
                    client,
                    app.state.gateway,
                    switches,
                    {"Authorization": f"Bearer {minter.token('u-1')}"},
                    shared,
                )
    finally:
        for caller in upstreams.values():
            await caller.close()
        await server.stop(None)
        shared.stop_watches()


async def test_degraded_dashboard_leaves_the_shared_breakers_and_other_routes_alone(
    rig: Rig,
) -> None:
    ok = await rig.client.get("/api/dashboard", headers=rig.auth)
    assert ok.status_code == 200
    assert ok.json()["degraded"] == []
    assert ok.json()["unreadNotifications"] == 2

    rig.switches.hang_orders = rig.switches.hang_notifications = True
    for _ in range(8):  # well past the breakers' fail_max (3 here, 5 shared)
        started = time.monotonic()
        r = await rig.client.get("/api/dashboard", headers=rig.auth)
        assert time.monotonic() - started < 1.0
        assert r.status_code == 200
        assert r.json()["degraded"] == ["order", "notification"]
        assert r.json()["unreadNotifications"] == 2  # the last good value
        assert r.json()["user"]["email"] == "a@example.com"

    states = rig.state.breaker_states()
    assert states["dashboard.order"] == "open"
    assert states["dashboard.notification"] == "open"
    assert states["dashboard.user"] == "closed"
    # The breakers every other route goes through never saw the part timeouts.
    assert rig.breakers.breaker_for("order").current_state == "closed"
    assert rig.breakers.breaker_for("notification").current_state == "closed"

    rig.switches.hang_orders = False  # notification stays "stopped"
    listed = await rig.client.get("/api/orders", headers=rig.auth)
    assert listed.status_code == 200, listed.text
    assert listed.json()["orders"][0]["id"] == "o1"
    created = await rig.client.post("/api/orders", json={"cardToken": "tok_visa"}, headers=rig.auth)
    assert created.status_code == 201, created.text
    assert created.json()["status"] == "ORDER_STATUS_CONFIRMED"

    metrics = (await rig.client.get("/metrics")).text
    assert 'shop_gateway_breaker_state{service="dashboard.order"} 2.0' in metrics
    assert 'shop_gateway_breaker_state{service="order"} 0.0' in metrics


async def test_a_user_seen_before_is_answered_from_memory(rig: Rig) -> None:
    """Users never change: the second dashboard of a user makes no GetUser call, so even
    a hung user service leaves it whole and fast."""
    first = await rig.client.get("/api/dashboard", headers=rig.auth)
    assert first.json()["degraded"] == [] and rig.switches.user_calls == 1
    rig.switches.hang_users = True
    for _ in range(3):
        started = time.monotonic()
        r = await rig.client.get("/api/dashboard", headers=rig.auth)
        assert time.monotonic() - started < 0.2
        assert r.json()["degraded"] == []
        assert r.json()["user"] == first.json()["user"]
    assert rig.switches.user_calls == 1
