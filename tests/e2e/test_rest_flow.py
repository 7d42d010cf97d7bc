"""REST sessions against the real gateway in front of all eight services."""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx
import pytest

from gateway.testing import TokenMinter
from ops.process import ServiceProcess, System


@pytest.fixture(scope="module")
def api(gateway: ServiceProcess) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=gateway.base_url, timeout=15.0) as client:
        yield client


def _register(api: httpx.Client, name: str = "Ann") -> dict[str, Any]:
    email = f"{name.lower()}-{uuid.uuid4().hex[:8]}@example.com"
    r = api.post("/api/users", json={"email": email, "name": name, "password": "s3cret-pass"})
    assert r.status_code == 201, r.text
    user = r.json()
    login = api.post("/api/auth/login", json={"email": email, "password": "s3cret-pass"})
    assert login.status_code == 200, login.text
    token = login.json()["accessToken"]
    return {**user, "headers": {"Authorization": f"Bearer {token}"}, "login": login.json()}


def _order(api: httpx.Client, headers: dict[str, str], card: str = "tok_visa") -> httpx.Response:
    products = api.get("/api/products").json()["products"]
    body = {"items": [{"productId": products[0]["id"], "quantity": 1}], "cardToken": card}
    return api.post("/api/orders", json=body, headers=headers)


def _wait_for(fn: Any, timeout: float = 10.0) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = fn()
        if value or time.monotonic() > deadline:
            return value
        time.sleep(0.1)


def test_seed_flow(api: httpx.Client) -> None:
    ann = _register(api)
    assert set(ann) >= {"id", "email", "name", "createTime"}
    assert ann["login"]["tokenType"] == "Bearer"
    assert int(ann["login"]["expiresIn"]) > 0
    h = ann["headers"]
    dup = api.post("/api/users", json={"email": ann["email"], "name": "x", "password": "12345678x"})
    assert dup.status_code == 409
    assert (
        api.post(
            "/api/auth/login", json={"email": ann["email"], "password": "nope-nope"}
        ).status_code
        == 401
    )

    me = api.get("/api/users/me", headers=h)
    assert me.status_code == 200
    assert me.json()["email"] == ann["email"]

    listing = api.get("/api/products", params={"pageSize": 5})
    assert listing.status_code == 200
    products = listing.json()["products"]
    assert 1 <= len(products) <= 5
    product = products[0]
    assert set(product) >= {"id", "name", "description", "category", "priceCents", "currency"}
    one = api.get(f"/api/products/{product['id']}")
    assert one.json()["id"] == product["id"]
    stock = api.get(f"/api/inventory/{product['id']}")
    assert stock.status_code == 200
    assert set(stock.json()) >= {"productId", "available", "reserved", "sold"}

    cart = api.post("/api/cart/items", json={"productId": product["id"], "quantity": 2}, headers=h)
    assert cart.status_code == 200, cart.text
    assert cart.json()["items"][0]["quantity"] == 2
    assert int(cart.json()["totalCents"]) == 2 * int(product["priceCents"])

    order = api.post("/api/orders", json={"cardToken": "tok_visa"}, headers=h)
    assert order.status_code in (201, 202), order.text
    if order.status_code == 201:
        assert order.json()["status"] == "ORDER_STATUS_CONFIRMED"
    else:
        assert order.json()["status"] == "ORDER_STATUS_PENDING"
    order_id = order.json()["id"]

    def confirmed() -> bool:
        got = api.get(f"/api/orders/{order_id}", headers=h).json()
        return bool(got["status"] in ("ORDER_STATUS_CONFIRMED", "ORDER_STATUS_SHIPPED"))

    assert _wait_for(confirmed)
    orders = api.get("/api/orders", headers=h).json()["orders"]
    assert [o["id"] for o in orders][:1] == [order_id]

    dash = api.get("/api/dashboard", headers=h)
    assert dash.status_code == 200
    body = dash.json()
    assert body["user"]["email"] == ann["email"]
    assert body["recentOrders"][0]["id"] == order_id
    assert body["degraded"] == []
    assert isinstance(body["unreadNotifications"], int)


def test_refused_order_is_400_naming_the_reason(api: httpx.Client) -> None:
    bob = _register(api, "Bob")
    r = _order(api, bob["headers"], card="tok_chargeDeclined")
    assert r.status_code == 400, r.text
    err = r.json()["error"]
    assert err["status"] == "FAILED_PRECONDITION"
    assert "declin" in err["message"].lower()


def test_another_users_resources_are_404(api: httpx.Client) -> None:
    a = _register(api, "Ada")
    b = _register(api, "Ben")
    r = _order(api, a["headers"])
    assert r.status_code in (201, 202), r.text
    order_id = r.json()["id"]
    note = _wait_for(
        lambda: api.get("/api/notifications", headers=a["headers"]).json()["notifications"]
    )
    assert note, "ada has a welcome notification"
    # Every resource exists for its owner first, so the other user's 404s below mean
    # "not yours", not "not there yet".
    assert _wait_for(
        lambda: api.get(f"/api/orders/{order_id}/shipment", headers=a["headers"]).status_code == 200
    ), "ada's order never got its shipment"

    hb = b["headers"]
    assert api.get(f"/api/users/{a['id']}", headers=hb).status_code == 404
    assert api.get(f"/api/orders/{order_id}", headers=hb).status_code == 404
    assert api.get(f"/api/payments/{order_id}", headers=hb).status_code == 404
    assert api.get(f"/api/orders/{order_id}/shipment", headers=hb).status_code == 404
    assert api.post(f"/api/orders/{order_id}/cancel", headers=hb).status_code == 404
    assert api.post(f"/api/notifications/{note[0]['id']}/read", headers=hb).status_code == 404
    # ...while the owner sees them.
    assert api.get(f"/api/payments/{order_id}", headers=a["headers"]).status_code == 200
    unread = api.get("/api/notifications", params={"unread": "true"}, headers=a["headers"])
    assert unread.status_code == 200


def test_bad_input_is_4xx_and_writes_nothing(api: httpx.Client) -> None:
    email = f"ghost-{uuid.uuid4().hex[:8]}@example.com"
    good = {"email": email, "name": "Ghost", "password": "s3cret-pass"}
    json_h = {"content-type": "application/json"}
    attempts = [
        (b'{"email": "' + email.encode() + b'", "name": ', json_h),  # malformed
        (b'{"email": 42, "name": "G", "password": "s3cret-pass"}', json_h),  # wrong type
        (
            b'{"email": "' + email.encode() + b'", "name": "G", "password": "s3cret-pass",'
            b' "isAdmin": true}',
            json_h,
        ),  # unknown field
        (b'{"email": "' + email.encode() + b'", "name": "' + b"x" * 200_000 + b'"}', json_h),
        (
            str(httpx.QueryParams(good)).encode(),
            {"content-type": "application/x-www-form-urlencoded"},
        ),
    ]
    for body, headers in attempts:
        r = api.post("/api/users", content=body, headers=headers)
        assert 400 <= r.status_code < 500, (r.status_code, r.text[:200])
        assert r.json()["error"]["code"] == r.status_code
    # None of them created the account.
    login = api.post("/api/auth/login", json={"email": email, "password": "s3cret-pass"})
    assert login.status_code == 401

    user = _register(api, "Orderless")
    for body in (b"{", b'{"items": [{"productId": 7, "quantity": "x"}]}', b'{"bogus": 1}'):
        r = api.post("/api/orders", content=body, headers={**user["headers"], **json_h})
        assert r.status_code == 400
    assert api.get("/api/orders", headers=user["headers"]).json()["orders"] == []


def test_bad_tokens_are_401(api: httpx.Client) -> None:
    stranger = TokenMinter()
    for token in ("garbage", stranger.token("u-1"), "a.b.c"):
        r = api.get("/api/orders", headers={"Authorization": f"Bearer {token}"})
        assert r.status_code == 401
        assert r.json()["error"]["status"] == "UNAUTHENTICATED"
    assert api.get("/api/orders").status_code == 401


def test_request_id_travels_back(api: httpx.Client) -> None:
    r = api.get("/api/products", headers={"X-Request-Id": "e2e-req-1"})
    assert r.headers["x-request-id"] == "e2e-req-1"
    assert api.get("/readyz").status_code == 200


def test_dashboard_with_notification_stopped_degrades_fast_then_recovers(
    api: httpx.Client, system: System
) -> None:
    user = _register(api, "Dee")
    h = user["headers"]
    assert api.get("/api/dashboard", headers=h).json()["degraded"] == []
    notification = system["notification"]
    notification.sigstop()
    try:
        started = time.monotonic()
        r = api.get("/api/dashboard", headers=h)
        elapsed = time.monotonic() - started
        assert r.status_code == 200
        assert r.json()["degraded"] == ["notification"]
        assert r.json()["user"]["email"] == user["email"]
        assert elapsed < 1.0
    finally:
        notification.sigcont()

    def healthy() -> bool:
        return bool(api.get("/api/dashboard", headers=h).json()["degraded"] == [])

    assert _wait_for(healthy, timeout=10.0)


def test_degraded_dashboard_does_not_fail_the_order_routes(
    api: httpx.Client, system: System
) -> None:
    """The dashboard's part timeouts trip its own breakers, never the shared ones: with the
    order service frozen, more dashboard calls time out on their order part than the shared
    breaker's fail_max; once it thaws, the order routes (same service, shared breaker)
    answer at once instead of "circuit open" for the reset timeout."""
    user = _register(api, "Eve")
    h = user["headers"]
    assert _order(api, h).status_code == 201
    order_service = system["order"]
    order_service.sigstop()
    try:
        with ThreadPoolExecutor(7) as pool:  # past the breakers' fail_max (5), at once
            answers = list(pool.map(lambda _: api.get("/api/dashboard", headers=h), range(7)))
        for r in answers:
            assert r.status_code == 200, r.text
            assert r.json()["degraded"] == ["order"], r.json()
    finally:
        order_service.sigcont()
    listed = api.get("/api/orders", headers=h)
    assert listed.status_code == 200, listed.text
    created = _order(api, h)
    assert created.status_code == 201, created.text
    assert created.json()["id"] in [
        o["id"] for o in api.get("/api/orders", headers=h).json()["orders"]
    ]
