"""What the services refuse, written as JSON Schema for the OpenAPI document.

proto3 has no way to say "required" or "1..99", so the request schemas made from the
descriptors alone would call requests valid that a service answers 400. This table says,
per request field, what the service that owns it checks, so that every request the
document calls valid is one the services accept (short of the state of things: an
unknown card, an empty cart, a page token that was not handed out). The limits come from
the services' own rules wherever they are named constants; where a service normalizes
first (strips, folds case), the limit here is the one that holds for any raw value.
The gateway holds requests to these limits itself (gateway.checks), so what the document
calls invalid is refused too.

Keys are the proto field's full name (`package.Message.field`); `REQUIRED` lists, per
request message, the proto names of the fields a request must send.
"""

from __future__ import annotations

from typing import Any

from services.cart import domain as cart
from services.order import domain as order
from services.product import domain as product
from services.user import domain as user

Schema = dict[str, Any]

# At least one character that is not white space, by Python's str.strip() (which also
# strips \x1c-\x1f and \x85, unlike the \s of some regex engines): services strip first.
NONBLANK = "[^\\s\\x1c-\\x1f\\x85]"
# An id the services only require and bound in length.
_ID: Schema = {"minLength": 1, "maxLength": 128, "pattern": NONBLANK}
# Product ids have a grammar of their own (the product service checks it).
PRODUCT_ID_PATTERN = "^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$"
_PRODUCT_ID: Schema = {"pattern": PRODUCT_ID_PATTERN}
# Zero asks for the default page size, more than the maximum is served the maximum.
_PAGE_SIZE: Schema = {"minimum": 0}
_PAGE_TOKEN: Schema = {
    "maxLength": product.MAX_TOKEN_LEN,
    "description": "Opaque: the nextPageToken of the previous page, for the same filters",
}
# The same check as the user service's, anchored for JSON Schema.
EMAIL_PATTERN = (
    "^[A-Za-z0-9.!#$%&'*+/=?^_`{|}~-]+@[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
    "(?:\\.[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?)+$"
)


# How a refusal names each pattern (the pattern itself says little to a client).
PATTERN_MEANS: dict[str, str] = {
    NONBLANK: "must not be blank",
    EMAIL_PATTERN: "must be an email address",
    PRODUCT_ID_PATTERN: (
        "must be 1-128 letters, digits, '.', '_' or '-', starting with a letter or digit"
    ),
    f"^{order.CARD_TOKEN_PREFIX}": f"must look like '{order.CARD_TOKEN_PREFIX}...'",
}


def _quantity(maximum: int) -> Schema:
    return {"minimum": 1, "maximum": maximum}


FIELDS: dict[str, Schema] = {
    # user
    "shop.user.v1.CreateUserRequest.email": {
        "maxLength": user.MAX_EMAIL_LEN,
        "pattern": EMAIL_PATTERN,
    },
    "shop.user.v1.CreateUserRequest.name": {"maxLength": user.MAX_NAME_LEN, "pattern": NONBLANK},
    "shop.user.v1.CreateUserRequest.password": {
        "minLength": user.MIN_PASSWORD_LEN,
        "maxLength": user.MAX_PASSWORD_LEN,
    },
    "shop.user.v1.LoginRequest.email": {"pattern": NONBLANK},
    "shop.user.v1.LoginRequest.password": {"minLength": 1},
    "shop.user.v1.GetUserRequest.id": {"minLength": 1, "maxLength": user.MAX_ID_LEN},
    # product: the service folds case before its own limits (200 and 50), which may make
    # a text up to three (a category up to two) times longer
    "shop.product.v1.GetProductRequest.id": _PRODUCT_ID,
    "shop.product.v1.ListProductsRequest.page_size": _PAGE_SIZE,
    "shop.product.v1.ListProductsRequest.page_token": _PAGE_TOKEN,
    "shop.product.v1.ListProductsRequest.query": {"maxLength": product.MAX_QUERY_LEN // 3},
    "shop.product.v1.ListProductsRequest.category": {"maxLength": product.MAX_CATEGORY_LEN // 2},
    "shop.product.v1.BatchGetProductsRequest.ids": {"maxItems": product.MAX_BATCH},
    "shop.product.v1.BatchGetProductsRequest.ids[]": _PRODUCT_ID,
    # cart
    "shop.cart.v1.AddItemRequest.product_id": _PRODUCT_ID,
    "shop.cart.v1.AddItemRequest.quantity": _quantity(cart.MAX_QUANTITY),
    "shop.cart.v1.RemoveItemRequest.product_id": {"maxLength": cart.MAX_ID_LEN},
    # order
    "shop.order.v1.CreateOrderRequest.items": {"maxItems": order.MAX_LINES},
    "shop.order.v1.CreateOrderItem.product_id": _PRODUCT_ID,
    "shop.order.v1.CreateOrderItem.quantity": _quantity(order.MAX_QUANTITY),
    "shop.order.v1.CreateOrderRequest.card_token": {
        "pattern": f"^{order.CARD_TOKEN_PREFIX}",
        "maxLength": 200,
        "description": "A card token: tok_visa is charged, tok_chargeDeclined is declined",
    },
    "shop.order.v1.CreateOrderRequest.idempotency_key": {"maxLength": 200},
    "shop.order.v1.GetOrderRequest.id": _ID,
    "shop.order.v1.ListOrdersRequest.page_size": _PAGE_SIZE,
    "shop.order.v1.ListOrdersRequest.page_token": _PAGE_TOKEN,
    "shop.order.v1.CancelOrderRequest.id": _ID,
    "shop.order.v1.GetSagaHistoryRequest.order_id": _ID,
    # payment, inventory, shipping
    "shop.payment.v1.GetPaymentRequest.order_id": _ID,
    "shop.inventory.v1.GetStockRequest.product_id": _ID,
    "shop.inventory.v1.GetStockHistoryRequest.product_id": _ID,
    "shop.inventory.v1.GetStockHistoryRequest.page_size": _PAGE_SIZE,
    "shop.inventory.v1.GetStockHistoryRequest.page_token": _PAGE_TOKEN,
    "shop.shipping.v1.GetShipmentRequest.order_id": _ID,
    # notification
    "shop.notification.v1.ListNotificationsRequest.page_size": _PAGE_SIZE,
    "shop.notification.v1.ListNotificationsRequest.page_token": _PAGE_TOKEN,
    "shop.notification.v1.MarkReadRequest.id": _ID,
}

REQUIRED: dict[str, tuple[str, ...]] = {
    "shop.user.v1.CreateUserRequest": ("email", "name", "password"),
    "shop.user.v1.LoginRequest": ("email", "password"),
    "shop.cart.v1.AddItemRequest": ("product_id", "quantity"),
    "shop.order.v1.CreateOrderRequest": ("card_token",),
    "shop.order.v1.CreateOrderItem": ("product_id", "quantity"),
}


def for_field(full_name: str) -> Schema:
    """The keywords a field's (single) value must meet; {} when the service checks none."""
    return dict(FIELDS.get(full_name, {}))


def for_items(full_name: str) -> Schema:
    """The keywords each element of a repeated field must meet."""
    return dict(FIELDS.get(f"{full_name}[]", {}))


def required(message_full_name: str) -> tuple[str, ...]:
    return REQUIRED.get(message_full_name, ())
