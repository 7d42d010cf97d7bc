"""What the order service keeps from its peers: bounded, and prices asked for once."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, cast

import pytest
from shop.product.v1 import product_pb2

from services.common.errors import NotFound
from services.order import domain
from services.order.known import Known
from services.order.servicer import OrderServicer, Peers


def test_known_keeps_the_most_recently_used() -> None:
    known: Known[str, int] = Known(2)
    known.put("a", 1)
    known.put("b", 2)
    assert known.get("a") == 1  # a is now the most recent
    known.put("c", 3)
    assert "b" not in known and known.get("a") == 1 and known.get("c") == 3
    assert len(known) == 2 and known.get("zzz") is None


class FakeProducts:
    """BatchGetProducts of a fixed catalogue; records the ids of every call."""

    def __init__(self, catalogue: dict[str, int]) -> None:
        self.catalogue = catalogue
        self.asked: list[list[str]] = []

    async def call(self, pick: Callable[[Any], Any], request: Any, **_: Any) -> Any:
        ids = list(request.ids)
        self.asked.append(ids)
        if any(i not in self.catalogue for i in ids):
            raise NotFound("product not found")
        return product_pb2.BatchGetProductsResponse(products=[
            product_pb2.Product(id=i, price_cents=self.catalogue[i], currency="USD")
            for i in ids])


def _servicer(products: FakeProducts) -> OrderServicer:
    peers = Peers(users=cast(Any, None), products=cast(Any, products), carts=cast(Any, None))
    return OrderServicer(cast(Any, None), cast(Any, None), peers)


async def test_prices_are_asked_for_once_per_product() -> None:
    products = FakeProducts({"mat": 500, "pot": 1200})
    servicer = _servicer(products)
    lines = domain.validate_lines([("mat", 1)])
    assert await servicer._catalogue(lines) == {"mat": (500, "USD")}
    both = domain.validate_lines([("mat", 2), ("pot", 1)])
    assert await servicer._catalogue(both) == {"mat": (500, "USD"), "pot": (1200, "USD")}
    assert await servicer._catalogue(both) == {"mat": (500, "USD"), "pot": (1200, "USD")}
    assert products.asked == [["mat"], ["pot"]]  # only what was not known yet


async def test_an_unknown_product_is_asked_for_every_time() -> None:
    products = FakeProducts({"mat": 500})
    servicer = _servicer(products)
    lines = domain.validate_lines([("nope", 1)])
    for _ in range(2):
        with pytest.raises(NotFound):
            await servicer._catalogue(lines)
    assert products.asked == [["nope"], ["nope"]]
