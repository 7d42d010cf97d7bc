"""Domain product <-> proto."""

from __future__ import annotations

from shop.product.v1 import product_pb2

from services.product.domain import Product


def to_proto(p: Product) -> product_pb2.Product:
    return product_pb2.Product(id=p.id, name=p.name, description=p.description,
                               category=p.category, price_cents=p.price_cents,
                               currency=p.currency)
