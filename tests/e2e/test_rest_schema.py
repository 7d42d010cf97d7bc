"""The running gateway against its own /openapi.json: every response conforms, bad input is 4xx.

Three parts, one system:
- generated cases: `schemathesis run` with every one of its checks (no 5xx, status codes,
  content types, headers and bodies as documented, schema-valid requests accepted and
  invalid ones refused, 405 with `Allow` for undocumented methods, missing headers,
  auth not ignored, created resources found, ...) over all its phases (examples,
  coverage, fuzzing, stateful), a bounded number of cases per operation, as a user of
  its own; the few things the document cannot say are configured below, each with why;
- known cases: requests with real ids (an order confirmed, one declined, the cart, ...)
  reach the success and error responses random ids never do;
- bad input: for every operation with a body, malformed JSON, wrong types, unknown fields,
  non-objects, deep nesting, a wrong content type and a huge body (declared and streamed)
  each give a documented 4xx with the error body, never a 5xx.

Every response of the last two is validated by `SpecChecker` (JSON Schema 2020-12, $refs
resolved against the document), which also insists that the status is listed for the
operation explicitly, not only through `default`.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from schemathesis.checks import CHECKS, load_all_checks
from schemathesis.config import SchemathesisConfig

from ops.process import GATEWAY, ServiceProcess, System
from tests.fixtures_services import START_TIMEOUT_S, TEST_ENV
from tests.unit.test_gateway_openapi import SpecChecker

MAX_CASES_PER_OPERATION = 10
MAX_BODY_BYTES = 64 * 1024  # the gateway's default GATEWAY_MAX_BODY_BYTES
PASSWORD = "pw-12345678"


@dataclass
class World:
    """One user with real resources, so path parameters can name things that exist."""

    api: httpx.Client
    spec: dict[str, Any]
    checker: SpecChecker
    email: str
    user_id: str
    bearer: dict[str, str]
    product_id: str
    order_id: str  # confirmed (then shipped)
    declined_order_id: str
    notification_id: str


def _login(api: httpx.Client, email: str) -> dict[str, str]:
    login = api.post("/api/auth/login", json={"email": email, "password": PASSWORD})
    assert login.status_code == 200, login.text
    return {"Authorization": f"Bearer {login.json()['accessToken']}"}


@pytest.fixture(scope="module")
def gateway(system: System) -> Iterator[ServiceProcess]:
    """The gateway in front of `system`, without the login limits: schemathesis signs in
    many times from one address, and the tests after it must still sign in (the limits
    have tests of their own)."""
    proc = ServiceProcess(
        GATEWAY,
        data_dir=system.data_dir,
        nats_url=system.nats_url,
        env={
            **TEST_ENV,
            **system.addr_env(),
            "GATEWAY_LOGIN_RATE_LIMIT": "off",
            "GATEWAY_LOGIN_EMAIL_RATE_LIMIT": "off",
        },
    )
    try:
        proc.start().wait_ready(START_TIMEOUT_S)
        yield proc
    finally:
        proc.terminate()


@pytest.fixture(scope="module")
def world(gateway: ServiceProcess) -> Iterator[World]:
    with httpx.Client(base_url=gateway.base_url, timeout=15.0) as api:
        spec = api.get("/openapi.json").json()
        email = f"schema-{uuid.uuid4().hex[:8]}@example.com"
        created = api.post("/api/users", json={"email": email, "name": "S", "password": PASSWORD})
        assert created.status_code == 201, created.text
        bearer = _login(api, email)
        product_id = api.get("/api/products", params={"pageSize": 1}).json()["products"][0]["id"]
        added = api.post(
            "/api/cart/items", json={"productId": product_id, "quantity": 1}, headers=bearer
        )
        assert added.status_code == 200, added.text
        order = api.post("/api/orders", json={"cardToken": "tok_visa"}, headers=bearer)
        assert order.status_code == 201, order.text
        declined = api.post(
            "/api/orders",
            json={
                "items": [{"productId": product_id, "quantity": 1}],
                "cardToken": "tok_chargeDeclined",
            },
            headers=bearer,
        )
        assert declined.status_code == 400, declined.text
        listed = api.get("/api/orders", headers=bearer).json()["orders"]
        declined_id = next(o["id"] for o in listed if o["status"] == "ORDER_STATUS_CANCELLED")
        # Notifications follow from events: the welcome one lands shortly after sign-up.
        deadline = time.monotonic() + 15.0
        notes = api.get("/api/notifications", headers=bearer).json()["notifications"]
        while not notes and time.monotonic() < deadline:
            time.sleep(0.1)
            notes = api.get("/api/notifications", headers=bearer).json()["notifications"]
        assert notes, "the welcome message arrived within 15 s"
        yield World(
            api=api,
            spec=spec,
            checker=SpecChecker(spec),
            email=email,
            user_id=created.json()["id"],
            bearer=bearer,
            product_id=product_id,
            order_id=order.json()["id"],
            declined_order_id=declined_id,
            notification_id=notes[0]["id"],
        )


def _operations(spec: dict[str, Any]) -> list[tuple[str, str, dict[str, Any]]]:
    return [
        (method.upper(), path, op)
        for path, item in spec["paths"].items()
        for method, op in item.items()
    ]


# What a schema cannot say, and so what schemathesis is told instead:
# - a page token is opaque: only one the API handed out is valid (a generated one is 400),
#   so generated requests send an empty one (the first page);
# - a schema-valid order can still be refused by the rules of the day (400, the contract
#   names FAILED_PRECONDITION for stock and a declined card; an unknown card, an empty cart
#   when no items are given, the same product twice or a total over the limit are 400
#   INVALID_ARGUMENT), as can adding to a cart past 99 of a product or 100 products;
# - users see only themselves: the user a sign-up makes is another user than the caller,
#   so GET /api/users/{id} of it is 404 by design (ensure_resource_availability off there).
SCHEMATHESIS_CONFIG = """
[parameters]
"query.pageToken" = ""

[[operations]]
include-path = "/api/orders"
include-method = "POST"
[operations.checks.positive_data_acceptance]
expected-statuses = ["2xx", "400", "401", "403", "404", "409", "429"]

[[operations]]
include-path = "/api/cart/items"
include-method = "POST"
[operations.checks.positive_data_acceptance]
expected-statuses = ["2xx", "400", "401", "403", "404", "409", "429"]

[[operations]]
include-path-regex = "^/api/users"
checks.ensure_resource_availability.enabled = false
"""
SCHEMATHESIS_TIMEOUT_S = 600


def _disabled_checks(config: Path) -> list[str]:
    """The checks the run leaves out: every one is on by default (none are named with
    --checks, which would override the per-operation settings above). The response time
    limit is not among them: it is on only with a limit, and timing is no pass/fail matter."""
    load_all_checks()
    assert len(CHECKS.get_all_names()) >= 14
    checks = SchemathesisConfig.from_path(str(config)).projects.get_default().checks_config_for()
    return sorted(n for n in CHECKS.get_all_names() if not checks.get_by_name(name=n).enabled)


def test_schemathesis_with_all_its_checks(
    gateway: ServiceProcess, world: World, tmp_path: Path
) -> None:
    email = f"fuzz-{uuid.uuid4().hex[:8]}@example.com"
    made = world.api.post("/api/users", json={"email": email, "name": "F", "password": PASSWORD})
    assert made.status_code == 201, made.text
    bearer = _login(world.api, email)["Authorization"]
    config = tmp_path / "schemathesis.toml"
    config.write_text(SCHEMATHESIS_CONFIG)
    assert _disabled_checks(config) == []
    argv = [
        str(Path(sys.executable).with_name("schemathesis")),
        "--config-file", str(config),
        "--no-color",
        "run", f"{gateway.base_url}/openapi.json",
        "--phases", "examples,coverage,fuzzing,stateful",
        "--max-examples", str(MAX_CASES_PER_OPERATION),
        "--seed", "20261201",
        "--generation-database", "none",
        "--workers", "1",
        "--request-timeout", "15",
        "--header", f"Authorization: {bearer}",
    ]
    ran = subprocess.run(
        argv, capture_output=True, text=True, timeout=SCHEMATHESIS_TIMEOUT_S, cwd=tmp_path
    )
    out = ran.stdout + ran.stderr
    assert ran.returncode == 0, out[-20_000:]
    # It did test every operation, with every check (not a run that skipped them all).
    assert "Tested: " + str(len(_operations(world.spec))) in out, out[-3000:]


def _known_requests(w: World) -> list[tuple[str, str, dict[str, Any]]]:
    """(method, path, httpx kwargs) reaching real resources and the usual refusals."""
    b = {"headers": w.bearer}
    other = uuid.uuid4().hex
    pid, oid = w.product_id, w.order_id
    return [
        # successes, for every operation
        ("GET", "/api/auth/jwks", {}),
        (
            "POST",
            "/api/users",
            {"json": {"email": f"u-{other}@example.com", "name": "N", "password": PASSWORD}},
        ),
        ("POST", "/api/auth/login", {"json": {"email": w.email, "password": PASSWORD}}),
        ("GET", "/api/users/me", b),
        ("GET", f"/api/users/{w.user_id}", b),
        ("GET", "/api/products", {"params": {"pageSize": 3}}),
        ("GET", f"/api/products/{pid}", {}),
        ("GET", "/api/products:batchGet", {"params": {"ids": [pid]}}),
        ("GET", f"/api/inventory/{pid}", {}),
        ("GET", f"/api/inventory/{pid}", {"params": {"asOf": "2020-01-01T00:00:00Z"}}),
        ("GET", f"/api/inventory/{pid}/history", {**b, "params": {"pageSize": 2}}),
        ("POST", "/api/cart/items", {**b, "json": {"productId": pid, "quantity": 2}}),
        ("GET", "/api/cart", b),
        ("DELETE", f"/api/cart/items/{pid}", b),
        ("DELETE", "/api/cart", b),
        ("GET", "/api/orders", {**b, "params": {"pageSize": 2}}),
        ("GET", f"/api/orders/{oid}", b),
        ("GET", f"/api/orders/{w.declined_order_id}", b),
        ("GET", f"/api/orders/{oid}/saga", b),
        ("GET", f"/api/orders/{oid}/shipment", b),
        ("GET", f"/api/payments/{oid}", b),
        ("GET", f"/api/payments/{w.declined_order_id}", b),
        ("GET", "/api/notifications", {**b, "params": {"unread": "true"}}),
        ("GET", "/api/notifications:countUnread", b),
        ("POST", f"/api/notifications/{w.notification_id}/read", {**b, "json": {}}),
        ("GET", f"/api/notifications/{w.notification_id}", b),
        ("GET", "/api/dashboard", b),
        ("POST", f"/api/orders/{w.declined_order_id}/cancel", {**b, "json": {}}),
        ("GET", "/healthz", {}),
        ("GET", "/readyz", {}),
        ("GET", "/metrics", {}),
        (
            "POST",
            "/api/orders",
            {**b, "json": {"items": [{"productId": pid, "quantity": 1}], "cardToken": "tok_visa"}},
        ),
        # refusals
        ("POST", "/api/users", {"json": {"email": w.email, "name": "S", "password": PASSWORD}}),
        ("POST", "/api/auth/login", {"json": {"email": w.email, "password": "wrong-password"}}),
        ("GET", "/api/orders", {}),
        ("GET", "/api/dashboard", {"headers": {"Authorization": "Bearer not.a.token"}}),
        ("GET", f"/api/orders/{other}", b),
        ("GET", f"/api/users/{other}", b),
        ("GET", f"/api/products/{other}", {}),
        ("GET", f"/api/notifications/{other}", b),
        ("GET", f"/api/orders/{oid}/shipment", {"headers": _other_user(w)}),
        ("POST", f"/api/orders/{oid}/cancel", {**b, "json": {}}),
        ("POST", "/api/cart/items", {**b, "json": {"productId": other, "quantity": 1}}),
        (
            "POST",
            "/api/cart/items",
            {**b, "json": {"productId": pid, "quantity": 1, "userId": other}},
        ),
        ("DELETE", f"/api/cart/items/{other}", b),
        ("POST", "/api/orders", {**b, "json": {"cardToken": "tok_visa"}}),  # empty cart
        (
            "POST",
            "/api/orders",
            {
                **b,
                "json": {
                    "items": [{"productId": pid, "quantity": 1}],
                    "cardToken": "tok_chargeDeclined",
                },
            },
        ),
        ("GET", "/api/products", {"params": {"colour": "red"}}),
    ]


def _other_user(w: World) -> dict[str, str]:
    email = f"other-{uuid.uuid4().hex[:8]}@example.com"
    made = w.api.post("/api/users", json={"email": email, "name": "O", "password": PASSWORD})
    assert made.status_code == 201, made.text
    return _login(w.api, email)


def test_known_cases_conform(world: World) -> None:
    problems: list[str] = []
    seen: dict[tuple[str, str], set[int]] = {}
    for method, path, kwargs in _known_requests(world):
        response = world.api.request(method, path, **kwargs)
        assert response.status_code < 500, (method, path, response.text)
        problems.extend(world.checker.check(response))
        template = world.checker.template_of(method, path)
        seen.setdefault((method, template), set()).add(response.status_code)
    assert problems == []
    # Every operation was answered with success at least once.
    no_success = [
        f"{m} {p}"
        for m, p, _ in _operations(world.spec)
        if not any(s < 300 for s in seen.get((m, p), set()))
    ]
    assert no_success == []
    # The refusals meant to be provoked were.
    statuses = set().union(*seen.values())
    assert {200, 201, 400, 401, 403, 404, 409} <= statuses


def _wrong_value(schema: dict[str, Any], checker: SpecChecker) -> Any:
    """A JSON value of a type the field never accepts (the mapping takes "5" for 5)."""
    schema = checker._resolve(schema)
    if schema.get("type") == "object" or "properties" in schema:
        return 42
    if schema.get("type") == "array":
        return {"not": "a list"}
    return {"not": "a scalar"}


def _bad_bodies(op: dict[str, Any], checker: SpecChecker) -> list[tuple[str, bytes, str]]:
    """(what, body, content type) for one operation; every one must be refused with 4xx."""
    json_type = "application/json"
    schema = checker._resolve(op["requestBody"]["content"][json_type]["schema"])
    cases: list[tuple[str, bytes, str]] = [
        ("malformed", b'{"a": ', json_type),
        ("trailing garbage", b"{} x", json_type),
        ("not UTF-8", b'{"a": "\xff\xfe"}', json_type),
        ("array", b"[]", json_type),
        ("string", b'"text"', json_type),
        ("number", b"12", json_type),
        ("null", b"null", json_type),
        ("deep nesting", b"[" * 20_000 + b"]" * 20_000, json_type),
        ("unknown field", b'{"noSuchField": 1}', json_type),
        ("wrong content type", b"{}", "text/plain"),
        ("form content type", b"a=1", "application/x-www-form-urlencoded"),
        ("huge", b'{"a": "' + b"x" * MAX_BODY_BYTES + b'"}', json_type),
    ]
    for name, prop in schema.get("properties", {}).items():
        bad = json.dumps({name: _wrong_value(prop, checker)}).encode()
        cases.append((f"wrong type for {name}", bad, json_type))
        items = checker._resolve(prop.get("items", {}))
        if "properties" in items:  # a list of messages: wrong types one level down
            for sub, sub_prop in items["properties"].items():
                inner = json.dumps({name: [{sub: _wrong_value(sub_prop, checker)}]})
                cases.append((f"wrong type for {name}[].{sub}", inner.encode(), json_type))
            unknown = json.dumps({name: [{"zz": 1}]})
            cases.append((f"unknown field in {name}[]", unknown.encode(), json_type))
    return cases


def _fill(path: str, w: World) -> str:
    for var in ("{id}", "{order_id}", "{product_id}"):
        path = path.replace(var, w.order_id)
    return path


def _streamed(body: bytes) -> Iterator[bytes]:
    for i in range(0, len(body), 8192):
        yield body[i : i + 8192]


def test_bad_bodies_are_refused_with_4xx(world: World) -> None:
    problems: list[str] = []
    sent = 0
    ops = [(m, p, op) for m, p, op in _operations(world.spec) if "requestBody" in op]
    assert len(ops) >= 6
    for method, template, op in ops:
        url = _fill(template, world)
        for what, body, ctype in _bad_bodies(op, world.checker):
            headers = {**world.bearer, "content-type": ctype}
            attempts = [world.api.request(method, url, content=body, headers=headers)]
            if what == "huge":  # no Content-Length: the limit holds while reading too
                attempts.append(
                    world.api.request(method, url, content=_streamed(body), headers=headers)
                )
            sent += len(attempts)
            for response in attempts:
                where = f"{method} {template} [{what}] -> {response.status_code}"
                if not 400 <= response.status_code < 500:
                    problems.append(f"{where}: {response.text[:200]}")
                    continue
                problems.extend(
                    f"[{what}] {p}"
                    for p in world.checker.problems(
                        method, template, response.status_code, response.headers, response.content
                    )
                )
    assert sent >= 14 * len(ops)
    assert problems == []
