"""Error mapping, proto3 JSON both ways, request building and response rendering."""

from __future__ import annotations

import json

import grpc
import pytest
from grpc import aio
from shop.cart.v1 import cart_pb2
from shop.notification.v1 import notification_pb2
from shop.order.v1 import order_pb2
from shop.product.v1 import product_pb2

from gateway.errors import HttpError, from_domain_error, from_rpc_error, http_status_of
from gateway.jsonmap import to_dict
from gateway.rules import load_rules
from gateway.transcoder import Binding, check_content_type
from services.common.errors import NotFound, Unavailable

BINDINGS = {r.key: Binding.of(r) for r in load_rules()}


@pytest.mark.parametrize(
    ("code", "http"),
    [
        ("INVALID_ARGUMENT", 400),
        ("UNAUTHENTICATED", 401),
        ("PERMISSION_DENIED", 403),
        ("NOT_FOUND", 404),
        ("ALREADY_EXISTS", 409),
        ("FAILED_PRECONDITION", 400),
        ("RESOURCE_EXHAUSTED", 429),
        ("UNIMPLEMENTED", 501),
        ("UNAVAILABLE", 503),
        ("DEADLINE_EXCEEDED", 504),
        ("INTERNAL", 500),
        ("UNKNOWN", 500),
        ("DATA_LOSS", 500),
    ],
)
def test_grpc_status_to_http(code: str, http: int) -> None:
    assert http_status_of(code) == http
    err = from_rpc_error(
        aio.AioRpcError(grpc.StatusCode[code], aio.Metadata(), aio.Metadata(), details="why")
    )
    assert err.http_status == http
    body = json.loads(err.body())["error"]
    assert body["code"] == http
    assert body["status"] == code
    assert isinstance(body["details"], list)


def test_business_errors_keep_their_message_transport_errors_hide_addresses() -> None:
    refused = aio.AioRpcError(
        grpc.StatusCode.FAILED_PRECONDITION, aio.Metadata(), aio.Metadata(), "card declined"
    )
    assert from_rpc_error(refused, "order").message == "card declined"
    down = aio.AioRpcError(
        grpc.StatusCode.UNAVAILABLE, aio.Metadata(), aio.Metadata(), "ipv4:127.0.0.1:50054 refused"
    )
    assert "127.0.0.1" not in from_rpc_error(down, "order").message


def test_domain_errors_map_by_their_status() -> None:
    assert from_domain_error(Unavailable("circuit open")).http_status == 503
    assert from_domain_error(NotFound("x")).http_status == 404


def test_json_out_is_camel_case_with_every_field_and_int64_as_string() -> None:
    order = order_pb2.Order(id="o1", total_cents=1234)
    out = to_dict(order)
    assert out["totalCents"] == "1234"
    assert out["status"] == "ORDER_STATUS_UNSPECIFIED"
    assert out["items"] == []
    assert out["fromCart"] is False
    assert out["cancelReason"] == ""
    assert "total_cents" not in out


def test_body_accepts_json_and_proto_names() -> None:
    b = BINDINGS["POST /api/orders"]
    for body in (
        {"items": [{"productId": "p1", "quantity": 2}], "cardToken": "tok_visa"},
        {"items": [{"product_id": "p1", "quantity": 2}], "card_token": "tok_visa"},
    ):
        req = b.build_request({}, [], json.dumps(body).encode())
        assert isinstance(req, order_pb2.CreateOrderRequest)
        assert req.card_token == "tok_visa"
        assert req.items[0].product_id == "p1"
        assert req.items[0].quantity == 2


@pytest.mark.parametrize(
    "raw",
    [
        b"{not json",
        b"[1, 2]",
        b'"a string"',
        b'{"items": "many"}',
        b'{"items": [{"quantity": "two"}]}',
        b'{"items": [{"quantity": 1.5}]}',
        b'{"items": [{"quantity": 99999999999}]}',
        b'{"cardToken": 5}',
        b'{"unknownField": 1}',
        b"\xff\xfe",
    ],
)
def test_bad_bodies_are_400(raw: bytes) -> None:
    with pytest.raises(HttpError) as info:
        BINDINGS["POST /api/orders"].build_request({}, [], raw)
    assert info.value.http_status == 400


def test_query_parameters_by_proto_and_json_name_repeated_and_typed() -> None:
    b = BINDINGS["GET /api/products"]
    req = b.build_request({}, [("pageSize", "5"), ("page_token", "t"), ("query", "mug")], b"")
    assert isinstance(req, product_pb2.ListProductsRequest)
    assert (req.page_size, req.page_token, req.query) == (5, "t", "mug")
    batch = BINDINGS["GET /api/products:batchGet"].build_request(
        {}, [("ids", "a"), ("ids", "b")], b""
    )
    assert isinstance(batch, product_pb2.BatchGetProductsRequest)
    assert list(batch.ids) == ["a", "b"]
    unread = BINDINGS["GET /api/notifications"].build_request({}, [("unread", "true")], b"")
    assert isinstance(unread, notification_pb2.ListNotificationsRequest)
    assert unread.unread_only is True


@pytest.mark.parametrize(
    "query",
    [[("nope", "1")], [("pageSize", "ten")], [("pageSize", "99999999999")], [("page_size", "")]],
)
def test_bad_query_parameters_are_400(query: list[tuple[str, str]]) -> None:
    with pytest.raises(HttpError) as info:
        BINDINGS["GET /api/products"].build_request({}, query, b"")
    assert info.value.http_status == 400


def test_path_variables_win_and_body_star_takes_no_query() -> None:
    b = BINDINGS["POST /api/orders/{id}/cancel"]
    req = b.build_request({"id": "o-path"}, [], b'{"id": "o-body", "reason": "changed mind"}')
    assert isinstance(req, order_pb2.CancelOrderRequest)
    assert (req.id, req.reason) == ("o-path", "changed mind")
    with pytest.raises(HttpError):
        b.build_request({"id": "o"}, [("reason", "x")], b"")


def test_render_uses_response_body_and_create_status_codes() -> None:
    create = BINDINGS["POST /api/orders"]
    confirmed = order_pb2.CreateOrderResponse(
        order=order_pb2.Order(id="o1", status=order_pb2.ORDER_STATUS_CONFIRMED)
    )
    status, body = create.render(confirmed)
    assert status == 201
    assert json.loads(body)["status"] == "ORDER_STATUS_CONFIRMED"
    pending = order_pb2.CreateOrderResponse(
        order=order_pb2.Order(id="o1", status=order_pb2.ORDER_STATUS_PENDING)
    )
    assert create.render(pending)[0] == 202
    assert BINDINGS["POST /api/users"].success_status == 201
    cart = BINDINGS["GET /api/cart"].render(
        cart_pb2.GetCartResponse(cart=cart_pb2.Cart(total_cents=5))
    )
    assert cart[0] == 200
    assert json.loads(cart[1]) == {"userId": "", "items": [], "totalCents": "5", "currency": ""}
    status, body = BINDINGS["GET /api/orders"].render(order_pb2.ListOrdersResponse())
    assert (status, json.loads(body)) == (200, {"orders": [], "nextPageToken": ""})


@pytest.mark.parametrize(
    "ctype", ["application/json", "application/json; charset=utf-8", "application/merge-patch+json"]
)
def test_json_content_types_pass(ctype: str) -> None:
    check_content_type(ctype)


@pytest.mark.parametrize("ctype", ["", "text/plain", "application/x-www-form-urlencoded"])
def test_other_content_types_are_415(ctype: str) -> None:
    with pytest.raises(HttpError) as info:
        check_content_type(ctype)
    assert info.value.http_status == 415
