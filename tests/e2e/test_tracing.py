"""One order is one trace: the gateway's HTTP span as its root, server and client spans on
every gRPC hop, a span per saga step, a PRODUCER span per event and a CONSUMER span per
delivery (child of and linked to it) in every service the order touches. A caller's own
trace context is followed, and an unsampled one stays unrecorded on every hop. Spans go
over real OTLP/HTTP to a receiver in the test."""

from __future__ import annotations

import json
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from ops.otlp import OtlpReceiver, Received, Span, attr
from ops.process import System, http_ok, start_system
from tests.fixtures_services import START_TIMEOUT_S, TEST_ENV

WITHIN_S = 30.0
SERVER, CLIENT, PRODUCER, CONSUMER = (Span.SPAN_KIND_SERVER, Span.SPAN_KIND_CLIENT,
                                      Span.SPAN_KIND_PRODUCER, Span.SPAN_KIND_CONSUMER)
ERROR = 2  # Status.STATUS_CODE_ERROR


@pytest.fixture
def receiver(tmp_path: Path) -> Iterator[OtlpReceiver]:
    rcv = OtlpReceiver(tmp_path / "traces" / "spans.jsonl").start()
    try:
        yield rcv
    finally:
        rcv.stop()


@pytest.fixture
def traced(fresh_nats: Any, data_dir: Path, receiver: OtlpReceiver) -> Iterator[System]:
    env = {**TEST_ENV, "OTEL_EXPORTER_OTLP_ENDPOINT": receiver.endpoint,
           "OTEL_EXPORTER_OTLP_PROTOCOL": "http/protobuf", "OTEL_BSP_SCHEDULE_DELAY": "100",
           "OTEL_TRACES_SAMPLER": "parentbased_always_on"}
    sysm = start_system(data_dir, fresh_nats.url, env=env, ready_timeout=START_TIMEOUT_S,
                        with_gateway=True)
    try:
        # Started together, the gateway may be up before a service it routes to: wait
        # until its /readyz reaches every one (polled slowly: a failed probe counts
        # against its breaker of that service).
        deadline = time.monotonic() + START_TIMEOUT_S
        assert sysm.gateway is not None
        while not http_ok(f"{sysm.gateway.base_url}/readyz"):
            if time.monotonic() > deadline:
                pytest.fail(f"gateway /readyz not ready within {START_TIMEOUT_S}s")
            time.sleep(0.5)
        yield sysm
    finally:
        sysm.stop()


def _user(api: httpx.Client) -> dict[str, str]:
    email = f"span-{uuid.uuid4().hex[:8]}@example.com"
    assert api.post("/api/users", json={"email": email, "name": "Sam",
                                        "password": "s3cret-pass"}).status_code == 201
    login = api.post("/api/auth/login", json={"email": email, "password": "s3cret-pass"})
    return {"Authorization": f"Bearer {login.json()['accessToken']}"}


def _order(api: httpx.Client, headers: dict[str, str], card: str, rid: str) -> httpx.Response:
    product = api.get("/api/products").json()["products"][0]
    body = {"items": [{"productId": product["id"], "quantity": 1}], "cardToken": card}
    return api.post("/api/orders", json=body, headers={**headers, "X-Request-Id": rid})


def _wait_trace(rcv: OtlpReceiver, rid_root: Callable[[Received], bool],
                done: Callable[[list[Received]], bool]) -> list[Received]:
    """The spans of the trace whose root `rid_root` matches, once `done(spans)` holds."""
    deadline = time.monotonic() + WITHIN_S
    spans: list[Received] = []
    while time.monotonic() < deadline:
        every = rcv.snapshot()
        root = next((r for r in every if rid_root(r)), None)
        if root is not None:
            spans = [r for r in every if r.span.trace_id == root.span.trace_id]
            if done(spans):
                return spans
        time.sleep(0.2)
    names = sorted({(r.service, r.span.name) for r in spans})
    pytest.fail(f"trace not complete within {WITHIN_S}s; has {names}")


def _one(spans: list[Received], service: str, name: str, kind: int) -> Received:
    found = [r for r in spans if r.service == service and r.span.name == name
             and r.span.kind == kind]
    assert found, f"no {kind} span {name!r} of {service}"
    return found[0]


def _ancestors(spans: list[Received], r: Received) -> list[Received]:
    by_id = {x.span.span_id: x for x in spans}
    out = []
    while r.span.parent_span_id:
        parent = by_id.get(r.span.parent_span_id)
        assert parent is not None, f"{r.service} {r.span.name}: parent not in the trace"
        out.append(parent)
        r = parent
    return out


def _order_root(r: Received) -> bool:
    """The gateway's span of the POST that placed the order (one order per system)."""
    return (r.service == "shop-gateway" and r.span.kind == SERVER
            and not r.span.parent_span_id and r.span.name.startswith("POST")
            and "orders" in r.span.name)


CONSUMERS = ("shop-shipping", "shop-cart", "shop-notification")


def test_one_order_is_one_trace(traced: System, receiver: OtlpReceiver) -> None:
    assert traced.gateway is not None
    with httpx.Client(base_url=traced.gateway.base_url, timeout=15.0) as api:
        headers = _user(api)
        rid = f"trace-{uuid.uuid4().hex}"
        r = _order(api, headers, "tok_visa", rid)
        assert r.status_code in (201, 202), r.text
        order_id = r.json()["id"]

    def complete(spans: list[Received]) -> bool:
        services = {r.service for r in spans}
        consumed = {r.service for r in spans if r.span.kind == CONSUMER
                    and r.span.name == "process order.confirmed"}
        return (services >= {"shop-gateway", "shop-order", "shop-inventory", "shop-payment"}
                and consumed >= set(CONSUMERS))

    spans = _wait_trace(receiver, _order_root, complete)
    trace_id = spans[0].span.trace_id
    counts: dict[str, int] = {}
    for got in spans:
        counts[got.service] = counts.get(got.service, 0) + 1
    print(f"spans in one order's trace so far: {len(spans)} {sorted(counts.items())}")
    assert all(got.span.trace_id == trace_id for got in spans)
    root = next(r for r in spans if not r.span.parent_span_id)
    assert root.service == "shop-gateway" and root.span.kind == SERVER
    assert attr(root.span, "http.response.status_code") in (201, 202)
    # Every span hangs off the root (nothing dangling, one tree).
    for got in spans:
        if got is not root:
            assert _ancestors(spans, got)[-1] is root

    # gRPC hops: gateway client -> order server; saga step -> order client -> server.
    create = _one(spans, "shop-order", "shop.order.v1.OrderService/CreateOrder", SERVER)
    gw_client = _one(spans, "shop-gateway", "shop.order.v1.OrderService/CreateOrder", CLIENT)
    assert create.span.parent_span_id == gw_client.span.span_id
    assert attr(create.span, "rpc.system") == "grpc"
    assert attr(create.span, "rpc.grpc.status_code") == 0
    for service, method, step in (("inventory", "shop.inventory.v1.InventoryService/ReserveStock",
                                   "reserve_stock"),
                                  ("payment", "shop.payment.v1.PaymentService/Charge",
                                   "charge")):
        server = _one(spans, f"shop-{service}", method, SERVER)
        client = _one(spans, "shop-order", method, CLIENT)
        assert server.span.parent_span_id == client.span.span_id
        saga = next(a for a in _ancestors(spans, client) if a.span.name == f"saga {step}")
        assert attr(saga.span, "shop.order.id") == order_id
        assert attr(saga.span, "shop.saga.attempt") == 1
        assert attr(saga.span, "shop.saga.outcome") == "succeeded"

    # Each unit of work that writes is a CLIENT span under the call that made it.
    reserve = _one(spans, "shop-inventory", "shop.inventory.v1.InventoryService/ReserveStock",
                   SERVER)
    writes = [r for r in spans if r.service == "shop-inventory" and r.span.kind == CLIENT
              and attr(r.span, "db.system") == "sqlite"]
    assert any(reserve in _ancestors(spans, w) for w in writes), "no write under ReserveStock"
    assert all(w.span.name == "write inventory" for w in writes)

    # Events: a PRODUCER span per enqueued event, each delivery's CONSUMER span its child
    # and linked to it.
    producer = _one(spans, "shop-order", "create order.confirmed", PRODUCER)
    assert attr(producer.span, "messaging.system") == "nats"
    assert attr(producer.span, "messaging.destination.name") == "order.confirmed"
    for service in CONSUMERS:
        consumer = _one(spans, service, "process order.confirmed", CONSUMER)
        assert consumer.span.parent_span_id == producer.span.span_id
        assert [link.span_id for link in consumer.span.links] == [producer.span.span_id]
        assert attr(consumer.span, "messaging.message.id") == attr(
            producer.span, "messaging.message.id")

    # shopctl trace prints the order's tree from the spans the receiver kept.
    assert receiver.store is not None
    out = subprocess.run([sys.executable, "-m", "ops.shopctl", "trace", order_id, "--file",
                          str(receiver.store)], capture_output=True, text=True, timeout=30)
    assert out.returncode == 0, out.stderr
    printed = out.stdout.splitlines()
    assert printed[0] == f"trace {trace_id.hex()}"
    assert printed[1].startswith("  POST ") and "[shop-gateway server]" in printed[1]
    assert any(line.startswith("    shop.order.v1.OrderService/CreateOrder  [shop-gateway client]")
               for line in printed)
    assert any("saga charge  [shop-order internal]" in line for line in printed)
    assert all(line.rstrip().endswith((" ms", "ERROR")) for line in printed[1:])

    # The order's log lines carry the request id and the trace id together.
    hex_id = trace_id.hex()
    lines = [json.loads(raw) for raw in traced["order"].log_path.read_text().splitlines()
             if rid in raw]
    mine = [e for e in lines if e["request_id"] == rid]
    # order.shipped comes from shipping's dispatcher, outside any trace: its handler's
    # line keeps the request id but starts a trace of its own.
    wrong = [e for e in mine if e.get("trace_id") != hex_id
             and not (e["msg"] == "event handled" and e.get("subject") == "order.shipped")]
    assert mine and not wrong, wrong[:3]


def test_a_declined_card_marks_its_spans_as_errors(traced: System,
                                                    receiver: OtlpReceiver) -> None:
    assert traced.gateway is not None
    with httpx.Client(base_url=traced.gateway.base_url, timeout=15.0) as api:
        headers = _user(api)
        r = _order(api, headers, "tok_chargeDeclined", f"declined-{uuid.uuid4().hex}")
        # Declined within the wait budget (400), or still running (202).
        assert r.status_code in (400, 202), r.text

    charge = "shop.payment.v1.PaymentService/Charge"

    def complete(spans: list[Received]) -> bool:
        return any(r.span.name == "saga charge" for r in spans) and any(
            r.service == "shop-payment" and r.span.name == charge for r in spans)

    spans = _wait_trace(receiver, _order_root, complete)
    client = _one(spans, "shop-order", charge, CLIENT)
    assert client.span.status.code == ERROR
    assert attr(client.span, "rpc.grpc.status_code") != 0
    step = next(r for r in spans if r.span.name == "saga charge")
    assert attr(step.span, "shop.saga.outcome") == "refused"
    assert step.span.status.code == ERROR
    root = next(r for r in spans if _order_root(r))
    assert attr(root.span, "http.response.status_code") == r.status_code


def test_a_callers_trace_is_followed_whether_or_not_it_was_sampled(
        traced: System, receiver: OtlpReceiver) -> None:
    """A caller's `traceparent` decides: sampled, the gateway's span is its child and the
    product service's span is in the same trace; not sampled, no process records any span
    of that trace (every hop passes the decision on, none takes it back)."""
    assert traced.gateway is not None
    sampled_trace, unsampled_trace = uuid.uuid4().hex, uuid.uuid4().hex
    caller_span = uuid.uuid4().hex[:16]
    with httpx.Client(base_url=traced.gateway.base_url, timeout=15.0) as api:
        product = api.get("/api/products").json()["products"][0]["id"]
        for trace_id, flags in ((unsampled_trace, "00"), (sampled_trace, "01")):
            got = api.get(f"/api/products/{product}",
                          headers={"traceparent": f"00-{trace_id}-{caller_span}-{flags}"})
            assert got.status_code == 200, got.text

    def of(trace_hex: str) -> Callable[[Received], bool]:
        return lambda r: r.span.trace_id.hex() == trace_hex

    def both_sides(spans: list[Received]) -> bool:
        return {r.service for r in spans} >= {"shop-gateway", "shop-product"}

    spans = _wait_trace(receiver, of(sampled_trace), both_sides)
    root = _one(spans, "shop-gateway", "GET /api/products/{id}", SERVER)
    assert root.span.parent_span_id.hex() == caller_span
    served = _one(spans, "shop-product", "shop.product.v1.ProductService/GetProduct", SERVER)
    by_id = {r.span.span_id: r for r in spans}
    up = served
    while up is not root:  # the product's span descends from the gateway's
        parent = by_id.get(up.span.parent_span_id)
        assert parent is not None, f"{up.service} {up.span.name}: parent not in the trace"
        up = parent
    # The sampled trace's spans have all arrived, and the unsampled request came first.
    assert not [r for r in receiver.snapshot() if of(unsampled_trace)(r)]
