"""Every process serves Prometheus text at /metrics, and one order moves the series a user
watches: RPC latency by method and code on both sides, the outbox, the consumers, the
saga, database commits; breaker state and process CPU/RSS are there."""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from ops.process import ServiceProcess, System

WITHIN_S = 30.0
SERVICES = ("user", "product", "cart", "order", "payment", "inventory", "notification",
            "shipping")
Samples = list[tuple[str, dict[str, str], float]]


@pytest.fixture(scope="module")
def api(gateway: ServiceProcess) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=gateway.base_url, timeout=15.0) as client:
        yield client


def scrape(proc: ServiceProcess) -> Samples:
    url = proc.metrics_url
    assert url, f"{proc.instance} names no metrics port in its ready file"
    r = httpx.get(url, timeout=5.0)
    assert r.status_code == 200, r.text
    assert r.headers["content-type"].startswith("text/plain")
    return [(s.name, dict(s.labels), s.value)
            for family in text_string_to_metric_families(r.text) for s in family.samples]


def value(samples: Samples, name: str, **labels: str) -> float:
    """The sum of the samples called `name` whose labels include `labels`."""
    return sum(v for n, ls, v in samples
               if n == name and all(ls.get(k) == want for k, want in labels.items()))


def has(samples: Samples, name: str) -> bool:
    return any(n == name for n, _, _ in samples)


COUNT = "_count"
SERVER = "shop_rpc_server_duration_seconds" + COUNT
CLIENT = "shop_rpc_client_duration_seconds" + COUNT
COMMITS = "shop_db_commit_duration_seconds" + COUNT
PUBLISHED = "shop_outbox_published_events_total"
DELIVERED = "shop_consumer_deliveries_total"
HANDLED = "shop_consumer_handled_events_total"

# Per service: the series (name, labels) that one confirmed-and-shipped order must raise.
MOVES: dict[str, list[tuple[str, dict[str, str]]]] = {
    "order": [
        (SERVER, {"method": "/shop.order.v1.OrderService/CreateOrder", "code": "OK"}),
        (CLIENT, {"method": "inventory.ReserveStock", "code": "OK"}),
        (CLIENT, {"method": "payment.Charge", "code": "OK"}),
        ("shop_saga_steps_total", {"step": "charge", "outcome": "succeeded"}),
        ("shop_saga_duration_seconds" + COUNT, {"result": "CONFIRMED"}),
        (PUBLISHED, {}),
        (COMMITS, {}),
        (DELIVERED, {"consumer": "order-shipments"}),
        (HANDLED, {"consumer": "order-shipments"}),
    ],
    "inventory": [
        (SERVER, {"method": "/shop.inventory.v1.InventoryService/ReserveStock", "code": "OK"}),
        (PUBLISHED, {}), (COMMITS, {}),
    ],
    "payment": [
        (SERVER, {"method": "/shop.payment.v1.PaymentService/Charge", "code": "OK"}),
        (PUBLISHED, {}), (COMMITS, {}),
    ],
    "shipping": [(DELIVERED, {"consumer": "shipping-orders"}),
                 (HANDLED, {"consumer": "shipping-orders"}), (PUBLISHED, {}), (COMMITS, {})],
    "cart": [(DELIVERED, {"consumer": "cart-orders"}), (HANDLED, {"consumer": "cart-orders"})],
    "notification": [(DELIVERED, {"consumer": "notification-events"}),
                     (HANDLED, {"consumer": "notification-events"})],
}


def _place_order(api: httpx.Client) -> str:
    email = f"metrics-{uuid.uuid4().hex[:8]}@example.com"
    assert api.post("/api/users", json={"email": email, "name": "Max",
                                        "password": "s3cret-pass"}).status_code == 201
    login = api.post("/api/auth/login", json={"email": email, "password": "s3cret-pass"})
    headers = {"Authorization": f"Bearer {login.json()['accessToken']}"}
    product = api.get("/api/products").json()["products"][0]
    body = {"items": [{"productId": product["id"], "quantity": 1}], "cardToken": "tok_visa"}
    r = api.post("/api/orders", json=body, headers=headers)
    assert r.status_code in (201, 202), r.text
    return str(r.json()["id"])


def test_every_process_serves_metrics_and_an_order_moves_them(api: httpx.Client,
                                                              system: System,
                                                              gateway: ServiceProcess) -> None:
    before = {name: scrape(system[name]) for name in SERVICES}
    for name, samples in before.items():
        assert value(samples, "process_resident_memory_bytes") > 0, name
        assert has(samples, "process_cpu_seconds_total"), name
    for name in ("order", "inventory", "payment", "shipping", "user"):
        assert has(before[name], "shop_outbox_backlog_events"), name
        assert has(before[name], "shop_outbox_oldest_unsent_age_seconds"), name
    assert has(before["cart"], "shop_consumer_lag_events"), "cart"

    _place_order(api)

    deadline = time.monotonic() + WITHIN_S
    still: list[str] = []
    while True:
        after = {name: scrape(system[name]) for name in MOVES}
        still = [f"{svc}: {series}{labels}" for svc, wanted in MOVES.items()
                 for series, labels in wanted
                 if value(after[svc], series, **labels) <= value(before[svc], series,
                                                                   **labels)]
        if not still or time.monotonic() > deadline:
            break
        time.sleep(0.3)
    assert not still, f"series that did not move after an order: {still}"

    order = after["order"]
    # Breakers of the downstreams the saga called, closed (0) after a good order.
    for downstream in ("inventory", "payment"):
        assert ("shop_breaker_state", {"downstream": downstream}, 0.0) in order, order
    # Bounded labels: every code is a gRPC status name.
    codes = {ls["code"] for n, ls, _ in order if n == SERVER}
    assert codes <= {"OK", "NOT_FOUND", "INVALID_ARGUMENT", "FAILED_PRECONDITION",
                     "ALREADY_EXISTS", "UNAVAILABLE", "DEADLINE_EXCEEDED", "CANCELLED",
                     "PERMISSION_DENIED", "UNAUTHENTICATED", "RESOURCE_EXHAUSTED",
                     "ABORTED", "INTERNAL", "UNIMPLEMENTED"}, codes
    # Shipping handled order.confirmed, so order's outbox has published all it had.
    assert value(order, "shop_outbox_backlog_events") == 0
    assert value(order, "shop_outbox_oldest_unsent_age_seconds") == 0
    # The gateway serves its own series on its HTTP port.
    r = httpx.get(gateway.metrics_url, timeout=5.0)
    assert r.status_code == 200 and "shop_gateway_requests_total" in r.text
