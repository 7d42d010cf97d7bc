"""The inventory routes: a time as a query parameter (RFC 3339), history paging."""

from __future__ import annotations

import pytest
from shop.inventory.v1 import inventory_pb2

from gateway.access import is_public
from gateway.errors import HttpError
from gateway.rules import load_rules
from gateway.transcoder import Binding

BINDINGS = {r.key: Binding.of(r) for r in load_rules()}
STOCK = BINDINGS["GET /api/inventory/{product_id}"]
HISTORY = BINDINGS["GET /api/inventory/{product_id}/history"]


@pytest.mark.parametrize("name", ["asOf", "as_of"])
def test_as_of_is_an_rfc3339_time(name: str) -> None:
    req = STOCK.build_request({"product_id": "p1"}, [(name, "2026-01-31T12:00:01.5+01:00")], b"")
    assert isinstance(req, inventory_pb2.GetStockRequest)
    assert req.product_id == "p1"
    assert req.HasField("as_of")
    assert (req.as_of.seconds, req.as_of.nanos) == (1769857201, 500_000_000)


def test_without_as_of_the_field_is_unset() -> None:
    req = STOCK.build_request({"product_id": "p1"}, [], b"")
    assert isinstance(req, inventory_pb2.GetStockRequest)
    assert not req.HasField("as_of")


@pytest.mark.parametrize("raw", ["yesterday", "2026-13-01T00:00:00Z", "1769857201", "",
                                 "2026-01-31 12:00:00"])
def test_a_bad_as_of_is_400_naming_the_parameter(raw: str) -> None:
    with pytest.raises(HttpError) as info:
        STOCK.build_request({"product_id": "p1"}, [("asOf", raw)], b"")
    assert info.value.http_status == 400
    assert "asOf" in info.value.message and "RFC 3339" in info.value.message


def test_history_pages_by_page_size_and_token() -> None:
    req = HISTORY.build_request({"product_id": "p1"},
                                [("pageSize", "5"), ("pageToken", "abc")], b"")
    assert isinstance(req, inventory_pb2.GetStockHistoryRequest)
    assert (req.product_id, req.page_size, req.page_token) == ("p1", 5, "abc")
    with pytest.raises(HttpError) as info:
        HISTORY.build_request({"product_id": "p1"}, [("pageSize", "many")], b"")
    assert info.value.http_status == 400


def test_stock_is_a_public_read_its_history_needs_a_signed_in_caller() -> None:
    assert is_public("GET", "/api/inventory/{product_id}")
    assert not is_public("GET", "/api/inventory/{product_id}/history")
    assert is_public("GET", "/api/products/{id}")
