"""The gateway holds requests to the limits its OpenAPI document states, naming the field."""

from __future__ import annotations

import json

import pytest

from gateway.errors import HttpError
from gateway.rules import load_rules
from gateway.transcoder import Binding

BINDINGS = {r.key: Binding.of(r) for r in load_rules()}


def _build(key: str, body: object = None, query: list[tuple[str, str]] | None = None,
           **path: str) -> object:
    raw = b"" if body is None else json.dumps(body).encode()
    return BINDINGS[key].build_request(path, query or [], raw)


def _refused(key: str, body: object = None, query: list[tuple[str, str]] | None = None,
             **path: str) -> str:
    with pytest.raises(HttpError) as info:
        _build(key, body, query, **path)
    assert info.value.http_status == 400
    return info.value.message


ORDER = "POST /api/orders"
ITEM = {"productId": "espresso-machine", "quantity": 1}


def test_the_bounds_themselves_pass() -> None:
    _build(ORDER, {"items": [{**ITEM, "quantity": 99}] * 1, "cardToken": "tok_visa"})
    _build(ORDER, {"items": [ITEM] * 50, "cardToken": "tok_visa"})
    _build("POST /api/cart/items", {**ITEM, "quantity": 1})
    _build("GET /api/products", query=[("pageSize", "0")])
    _build("POST /api/users", {"email": "a@b.co", "name": " A ", "password": "x" * 8})
    _build("GET /api/products/{id}", id="a" * 128)


@pytest.mark.parametrize(
    ("key", "body", "query", "path", "says"),
    [
        (ORDER, {"items": [ITEM], "cardToken": "visa"}, None, {}, "cardToken must look like"),
        (ORDER, {"items": [ITEM]}, None, {}, "cardToken must look like"),  # required
        (ORDER, {"items": [ITEM, {**ITEM, "quantity": 100}], "cardToken": "tok_visa"}, None, {},
         "items[1].quantity must be at most 99"),
        (ORDER, {"items": [{"productId": "espresso-machine"}], "cardToken": "tok_visa"}, None,
         {}, "items[0].quantity must be at least 1"),
        (ORDER, {"items": [ITEM] * 51, "cardToken": "tok_visa"}, None, {},
         "items must have at most 50 items"),
        ("POST /api/cart/items", {"productId": "espresso-machine", "quantity": 0}, None, {},
         "quantity must be at least 1"),
        ("POST /api/cart/items", {"productId": "no such/id", "quantity": 1}, None, {},
         "productId must be 1-128 letters"),
        ("GET /api/products", None, [("pageSize", "-1")], {}, "pageSize must be at least 0"),
        ("GET /api/orders", None, [("page_size", "-5")], {}, "pageSize must be at least 0"),
        ("GET /api/products:batchGet", None, [("ids", "ok"), ("ids", "")], {},
         "ids[1] must be 1-128"),
        ("POST /api/users", {"email": "not-an-email", "name": "A", "password": "x" * 8}, None,
         {}, "email must be an email address"),
        ("POST /api/users", {"email": "a@b.co", "name": "\u3000\x1c", "password": "x" * 8},
         None, {}, "name must not be blank"),
        ("POST /api/users", {"email": "a@b.co", "name": "A", "password": "x" * 7}, None, {},
         "password must be at least 8 characters"),
        ("POST /api/auth/login", {"email": "a@b.co"}, None, {}, "password must be at least 1"),
        ("GET /api/orders/{id}", None, None, {"id": "o" * 129}, "id must be at most 128"),
        ("POST /api/notifications/{id}/read", {}, None, {"id": " "}, "id must not be blank"),
    ],
)
def test_over_a_limit_is_400_naming_the_field(key: str, body: object,
                                              query: list[tuple[str, str]] | None,
                                              path: dict[str, str], says: str) -> None:
    assert f"field {says}" in _refused(key, body, query, **path)
