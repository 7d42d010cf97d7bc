"""Domain cart -> proto."""

from __future__ import annotations

from shop.cart.v1 import cart_pb2

from services.cart.domain import Cart


def cart_pb(cart: Cart) -> cart_pb2.Cart:
    return cart_pb2.Cart(
        user_id=cart.user_id, total_cents=cart.total_cents, currency=cart.currency,
        items=[cart_pb2.CartItem(product_id=li.product_id, quantity=li.quantity,
                                 unit_price_cents=li.unit_price_cents, name=li.name)
               for li in cart.items])
