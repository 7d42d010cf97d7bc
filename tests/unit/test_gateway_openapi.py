"""/openapi.json describes what the gateway really answers, success and error alike.

`SpecChecker` validates one real response against the document: the status is listed
explicitly for the operation (not only through `default`), the content type is one the
response declares, required headers are there, and the body validates against the
response schema (JSON Schema 2020-12, $refs resolved against the document's components).
The e2e schema test uses the same checker against the running system; here, the
responses that are hard to provoke there (202 pending, 503, 504, 429, a degraded
dashboard, rich error details) come from the in-process app with fake downstreams.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
from typing import Any

import grpc
import httpx
import pytest
from google.protobuf import any_pb2
from google.protobuf.message import Message
from google.rpc import error_details_pb2, status_pb2
from grpc import aio
from jsonschema import Draft202012Validator
from openapi_spec_validator import validate
from shop.cart.v1 import cart_pb2
from shop.order.v1 import order_pb2
from shop.user.v1 import user_pb2

from gateway.app import create_app
from gateway.config import GatewaySettings
from gateway.testing import FakeCaller, Handler, TokenMinter, running
from services.common.settings import SERVICES

Json = dict[str, Any]


class SpecChecker:
    """Checks real responses against an OpenAPI 3.1 document."""

    def __init__(self, spec: Json) -> None:
        self.spec = spec
        self._validators: dict[str, Draft202012Validator] = {}

    def _resolve(self, node: Json) -> Json:
        while "$ref" in node:
            ref: str = node["$ref"]
            assert ref.startswith("#/"), ref
            target: Any = self.spec
            for part in ref[2:].split("/"):
                target = target[part]
            node = target
        return node

    def _validator(self, schema: Json) -> Draft202012Validator:
        key = json.dumps(schema, sort_keys=True)
        validator = self._validators.get(key)
        if validator is None:
            # Local $refs ("#/components/...") resolve against the root: put the
            # components there.
            root = {**schema, "components": self.spec["components"]}
            validator = Draft202012Validator(
                root, format_checker=Draft202012Validator.FORMAT_CHECKER
            )
            self._validators[key] = validator
        return validator

    def operation(self, method: str, template: str) -> Json:
        op: Json = self.spec["paths"][template][method.lower()]
        return op

    def problems(
        self,
        method: str,
        template: str,
        status: int,
        headers: Mapping[str, str],
        body: bytes,
    ) -> list[str]:
        """What is wrong with one response to `method template`; [] when it conforms."""
        where = f"{method} {template} -> {status}"
        responses = self.operation(method, template)["responses"]
        declared = responses.get(str(status))
        if declared is None:
            return [f"{where}: status not documented (only `default` would cover it)"]
        response = self._resolve(declared)
        out: list[str] = []
        lowered = {k.lower(): v for k, v in headers.items()}
        for name, header in response.get("headers", {}).items():
            header = self._resolve(header)
            sent = lowered.get(name.lower())
            if sent is None:
                if header.get("required"):
                    out.append(f"{where}: required header {name} missing")
                continue
            for bad in self._validator(header.get("schema", {})).iter_errors(sent):
                out.append(f"{where}: header {name}={sent!r}: {bad.message}")
        content: Json = response.get("content", {})
        if not content:
            return out
        ctype = lowered.get("content-type", "")
        media = ctype.split(";", 1)[0].strip().lower()
        if media not in content:
            out.append(f"{where}: content type {ctype!r} not in {sorted(content)}")
            return out
        schema: Json = content[media].get("schema", {})
        if media.endswith("json"):
            try:
                value: Any = json.loads(body)
            except ValueError as err:
                return [*out, f"{where}: body is not JSON: {err}"]
        else:
            value = body.decode()
        for bad in sorted(self._validator(schema).iter_errors(value), key=str):
            path = "/".join(str(p) for p in bad.absolute_path)
            out.append(f"{where}: body at /{path}: {bad.message[:300]}")
        return out

    def template_of(self, method: str, path: str) -> str:
        """The document's path template that `path` matches (literal segments first)."""
        parts = path.split("?", 1)[0].strip("/").split("/")
        best: tuple[int, str] | None = None
        for template, item in self.spec["paths"].items():
            if method.lower() not in item:
                continue
            tparts = template.strip("/").split("/")
            if len(tparts) != len(parts):
                continue
            literal = 0
            for t, p in zip(tparts, parts, strict=True):
                if t.startswith("{") and "}" in t:
                    suffix = t[t.index("}") + 1 :]  # e.g. "{id}:cancel"
                    if not p.endswith(suffix) or len(p) == len(suffix):
                        break
                elif t != p:
                    break
                else:
                    literal += 1
            else:
                if best is None or literal > best[0]:
                    best = (literal, template)
        assert best is not None, f"no operation for {method} {path}"
        return best[1]

    def check(self, response: httpx.Response) -> list[str]:
        method = response.request.method
        template = self.template_of(method, response.request.url.path)
        return self.problems(
            method, template, response.status_code, response.headers, response.content
        )


# --- the document itself ----------------------------------------------------------------


@dataclass
class Harness:
    client: httpx.AsyncClient
    fakes: dict[str, FakeCaller]
    minter: TokenMinter
    checker: SpecChecker

    def auth(self, user: str = "u-1") -> dict[str, str]:
        return {"Authorization": f"Bearer {self.minter.token(user)}"}

    def conforms(self, response: httpx.Response) -> httpx.Response:
        assert self.checker.check(response) == []
        return response


def _order(
    status: order_pb2.OrderStatus.ValueType = order_pb2.ORDER_STATUS_CONFIRMED,
) -> order_pb2.Order:
    order = order_pb2.Order(
        id="o1",
        user_id="u-1",
        items=[order_pb2.OrderItem(product_id="p1", quantity=2, unit_price_cents=250)],
        total_cents=500,
        currency="USD",
        status=status,
    )
    order.create_time.FromSeconds(1_700_000_000)
    return order


def _fakes(minter: TokenMinter) -> dict[str, FakeCaller]:
    fakes = {name: FakeCaller(name) for name in SERVICES}
    fakes["user"].handlers["GetJwks"] = lambda _: user_pb2.GetJwksResponse(
        keys=[user_pb2.Jwk(**minter.jwk)]
    )
    fakes["order"].handlers["CreateOrder"] = lambda _: order_pb2.CreateOrderResponse(order=_order())
    fakes["cart"].handlers["GetCart"] = lambda _: cart_pb2.GetCartResponse(
        cart=cart_pb2.Cart(user_id="u-1", currency="USD")
    )
    return fakes


async def _harness(**overrides: Any) -> AsyncIterator[Harness]:
    minter = TokenMinter()
    fakes = _fakes(minter)
    app = create_app(GatewaySettings(**overrides), upstreams=dict(fakes), health=dict(fakes))
    async with running(app):
        transport = httpx.ASGITransport(app=app, client=("10.0.0.9", 1234))
        async with httpx.AsyncClient(transport=transport, base_url="http://gw") as client:
            spec = (await client.get("/openapi.json")).json()
            yield Harness(client, fakes, minter, SpecChecker(spec))


@pytest.fixture
async def gw() -> AsyncIterator[Harness]:
    async for h in _harness(dashboard_part_timeout_s=0.2, max_body_bytes=4096):
        yield h


def _walk(node: Any, path: str = "") -> list[tuple[str, Any]]:
    out = [(path, node)]
    if isinstance(node, dict):
        for k, v in node.items():
            out.extend(_walk(v, f"{path}/{k}"))
    elif isinstance(node, list):
        for i, v in enumerate(node):
            out.extend(_walk(v, f"{path}/{i}"))
    return out


async def test_document_is_valid_and_strict(gw: Harness) -> None:
    spec = gw.checker.spec
    validate(spec)
    # No response is described by an empty schema: every body has a real shape.
    loose = [
        p
        for p, node in _walk(spec["paths"])
        if "/responses/" in p and p.endswith("/schema") and node in ({}, {"type": "object"})
    ]
    assert loose == []
    schemas = spec["components"]["schemas"]
    order = schemas["shop.order.v1.Order"]
    # Every field without presence is required (printed at its default); the timestamps
    # (message fields, left out when unset) are not.
    assert {"id", "userId", "items", "totalCents", "currency", "status", "cancelReason"} <= set(
        order["required"]
    )
    assert "createTime" not in order["required"]
    assert order["properties"]["totalCents"] == {
        "type": "string",
        "format": "int64",
        "description": "64-bit integer as a string",
    }
    assert "ORDER_STATUS_CONFIRMED" in order["properties"]["status"]["enum"]
    # Request bodies require what the services need, and refuse unknown fields.
    create = schemas["shop.order.v1.CreateOrderRequest"]
    assert create["required"] == ["cardToken"]
    assert create["additionalProperties"] is False
    assert "required" not in schemas["shop.order.v1.CancelOrderRequest"]
    error = schemas["Error"]["properties"]["error"]
    assert error["required"] == ["code", "status", "message", "details"]


async def test_the_limits_the_services_hold_requests_to_are_in_the_document(
    gw: Harness,
) -> None:
    spec = gw.checker.spec
    schemas = spec["components"]["schemas"]

    def query(path: str, name: str) -> Json:
        params = spec["paths"][path]["get"]["parameters"]
        return next(p["schema"] for p in params if p["name"] == name)

    for path in ("/api/products", "/api/orders", "/api/notifications"):
        assert query(path, "pageSize")["minimum"] == 0, path
    item = schemas["shop.order.v1.CreateOrderItem"]
    assert item["required"] == ["productId", "quantity"]
    assert (
        item["properties"]["quantity"]["minimum"],
        item["properties"]["quantity"]["maximum"],
    ) == (
        1,
        99,
    )
    add = schemas["shop.cart.v1.AddItemRequest"]
    assert add["properties"]["quantity"]["minimum"] == 1
    user = schemas["shop.user.v1.CreateUserRequest"]
    assert user["required"] == ["email", "name", "password"]
    assert user["properties"]["password"]["minLength"] == 8
    assert spec["paths"]["/api/users"]["post"]["requestBody"]["required"] is True
    assert query("/api/products:batchGet", "ids")["items"]["pattern"].startswith("^[A-Za-z0-9]")
    # What may be left out may be null: the canonical mapping reads it as the default.
    assert add["properties"]["userId"]["type"] == ["string", "null"]
    assert "null" not in str(add["properties"]["quantity"])


async def test_documented_status_codes(gw: Harness) -> None:
    paths = gw.checker.spec["paths"]

    def codes(method: str, path: str) -> set[str]:
        return set(paths[path][method]["responses"])

    common = {"400", "429", "503", "504", "default"}
    assert codes("post", "/api/orders") >= common | {"201", "202", "401", "404", "413", "415"}
    assert codes("post", "/api/users") >= common | {"201", "409", "413", "415"}
    assert "401" not in codes("post", "/api/users")
    assert codes("post", "/api/auth/login") >= common | {"200", "401"}
    assert codes("get", "/api/orders/{id}") >= common | {"200", "401", "404"}
    assert codes("get", "/api/products") >= common | {"200"}
    assert "401" not in codes("get", "/api/products")
    assert codes("get", "/api/dashboard") >= {"200", "401", "429"}
    assert codes("get", "/readyz") == {"200", "503"}
    for path, item in paths.items():
        for method, op in item.items():
            if path.startswith("/api/") and path != "/api/dashboard":
                assert {"400", "429", "503"} <= set(op["responses"]), (method, path)
            if "requestBody" in op:
                assert {"413", "415"} <= set(op["responses"]), (method, path)
            if "security" in op:
                assert "401" in op["responses"], (method, path)


# --- real responses conform -------------------------------------------------------------


def _rpc_error(
    code: grpc.StatusCode, message: str, details: list[Any] | None = None
) -> aio.AioRpcError:
    trailing = aio.Metadata()
    if details:
        status = status_pb2.Status(code=code.value[0], message=message)
        for d in details:
            packed = any_pb2.Any()
            packed.Pack(d)
            status.details.append(packed)
        trailing = aio.Metadata(("grpc-status-details-bin", status.SerializeToString()))
    return aio.AioRpcError(code, aio.Metadata(), trailing, message)


def _raiser(err: Exception) -> Handler:
    def handler(_: Message) -> Message:
        raise err

    return handler


async def test_created_and_pending_orders_conform(gw: Harness) -> None:
    created = gw.conforms(
        await gw.client.post("/api/orders", json={"cardToken": "tok_visa"}, headers=gw.auth())
    )
    assert created.status_code == 201
    gw.fakes["order"].handlers["CreateOrder"] = lambda _: order_pb2.CreateOrderResponse(
        order=_order(order_pb2.ORDER_STATUS_PENDING)
    )
    pending = gw.conforms(
        await gw.client.post("/api/orders", json={"cardToken": "tok_visa"}, headers=gw.auth())
    )
    assert pending.status_code == 202
    assert pending.json()["status"] == "ORDER_STATUS_PENDING"


@pytest.mark.parametrize(
    ("code", "http_status"),
    [
        (grpc.StatusCode.INVALID_ARGUMENT, 400),
        (grpc.StatusCode.FAILED_PRECONDITION, 400),
        (grpc.StatusCode.PERMISSION_DENIED, 403),
        (grpc.StatusCode.NOT_FOUND, 404),
        (grpc.StatusCode.ALREADY_EXISTS, 409),
        (grpc.StatusCode.RESOURCE_EXHAUSTED, 429),
        (grpc.StatusCode.UNAVAILABLE, 503),
        (grpc.StatusCode.DEADLINE_EXCEEDED, 504),
        (grpc.StatusCode.UNAUTHENTICATED, 401),
    ],
)
async def test_downstream_errors_conform(
    gw: Harness, code: grpc.StatusCode, http_status: int
) -> None:
    gw.fakes["order"].handlers["CreateOrder"] = _raiser(_rpc_error(code, "refused"))
    r = gw.conforms(
        await gw.client.post("/api/orders", json={"cardToken": "tok_visa"}, headers=gw.auth())
    )
    assert r.status_code == http_status
    assert r.json()["error"]["status"] == code.name


async def test_rich_error_details_conform(gw: Harness) -> None:
    violation = error_details_pb2.BadRequest(
        field_violations=[
            error_details_pb2.BadRequest.FieldViolation(field="cardToken", description="bad")
        ]
    )
    gw.fakes["order"].handlers["CreateOrder"] = _raiser(
        _rpc_error(grpc.StatusCode.INVALID_ARGUMENT, "bad card", [violation])
    )
    r = gw.conforms(
        await gw.client.post("/api/orders", json={"cardToken": "tok_bad"}, headers=gw.auth())
    )
    details = r.json()["error"]["details"]
    assert details[0]["@type"].endswith("google.rpc.BadRequest")


async def test_gateway_refusals_conform(gw: Harness) -> None:
    h = gw.auth()
    hj = {**h, "content-type": "application/json"}
    responses = [
        await gw.client.get("/api/cart"),  # no token
        await gw.client.get("/api/cart", headers={"Authorization": "Bearer a.b.c"}),
        await gw.client.get(
            "/api/cart", headers={"Authorization": f"Bearer {gw.minter.token(ttl_s=-60)}"}
        ),
        await gw.client.get("/api/cart?colour=red", headers=h),
        await gw.client.get("/api/orders/x?pageSize=1", headers=h),
        await gw.client.get("/api/products?pageSize=abc"),
        await gw.client.post("/api/orders", content=b"{", headers=hj),
        await gw.client.post(
            "/api/orders", content=b"{}", headers={**h, "content-type": "text/plain"}
        ),
        await gw.client.post(
            "/api/orders",
            content=b"[" + b" " * 5000 + b"]",
            headers=hj,
        ),
    ]
    statuses = [r.status_code for r in responses]
    assert statuses == [401, 401, 401, 400, 400, 400, 400, 415, 413]
    for r in responses:
        gw.conforms(r)
        assert r.json()["error"]["code"] == r.status_code
    assert "www-authenticate" in responses[0].headers


async def test_rate_limited_responses_conform() -> None:
    async for gw in _harness(rate_limit="1/minute"):
        gw.conforms(await gw.client.get("/api/cart", headers=gw.auth()))
        limited = gw.conforms(await gw.client.get("/api/cart", headers=gw.auth()))
        assert limited.status_code == 429


async def test_dashboard_conforms_when_every_part_fails(gw: Harness) -> None:
    down = _raiser(_rpc_error(grpc.StatusCode.UNAVAILABLE, "down"))
    gw.fakes["user"].handlers["GetUser"] = down
    gw.fakes["order"].handlers["ListOrders"] = down
    gw.fakes["notification"].handlers["CountUnread"] = down
    r = gw.conforms(await gw.client.get("/api/dashboard", headers=gw.auth()))
    assert r.json()["degraded"] == ["user", "order", "notification"]
    gw.fakes["user"].handlers["GetUser"] = lambda _: user_pb2.GetUserResponse(
        user=user_pb2.User(id="u-1", email="a@example.com", name="A")
    )
    gw.fakes["order"].handlers["ListOrders"] = lambda _: order_pb2.ListOrdersResponse(
        orders=[_order()]
    )
    r = gw.conforms(await gw.client.get("/api/dashboard", headers=gw.auth()))
    assert r.json()["degraded"] == ["notification"]


async def test_operations_endpoints_conform(gw: Harness) -> None:
    from grpc_health.v1 import health_pb2

    for fake in gw.fakes.values():
        fake.handlers["Check"] = lambda _: health_pb2.HealthCheckResponse(status=1)
    # /openapi.json and /docs serve the document itself; like FastAPI's, they are not in it.
    for path in ("/healthz", "/readyz", "/metrics"):
        gw.conforms(await gw.client.get(path))
    gw.fakes["payment"].handlers["Check"] = _raiser(_rpc_error(grpc.StatusCode.UNAVAILABLE, "x"))
    not_ready = gw.conforms(await gw.client.get("/readyz"))
    assert not_ready.status_code == 503


def test_checker_catches_a_mismatch() -> None:
    spec: Json = {
        "paths": {
            "/x/{id}": {
                "get": {
                    "responses": {
                        "200": {
                            "description": "OK",
                            "content": {
                                "application/json": {"schema": {"$ref": "#/components/schemas/T"}}
                            },
                        }
                    }
                }
            }
        },
        "components": {
            "schemas": {
                "T": {
                    "type": "object",
                    "required": ["n"],
                    "properties": {"n": {"type": "string"}},
                    "additionalProperties": False,
                }
            }
        },
    }
    checker = SpecChecker(spec)
    assert checker.template_of("GET", "/x/42") == "/x/{id}"
    ctype = {"content-type": "application/json"}
    assert checker.problems("GET", "/x/{id}", 200, ctype, b'{"n": "1"}') == []
    assert checker.problems("GET", "/x/{id}", 200, ctype, b'{"n": 1}')
    assert checker.problems("GET", "/x/{id}", 200, ctype, b'{"n": "1", "m": 2}')
    assert checker.problems("GET", "/x/{id}", 200, ctype, b"{}")
    assert checker.problems("GET", "/x/{id}", 200, {"content-type": "text/html"}, b"")
    assert checker.problems("GET", "/x/{id}", 404, ctype, b"{}")
