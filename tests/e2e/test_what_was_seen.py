"""What a newcomer could once do to a running shop with grpcurl, now refused.

Each command is run as it was (`-plaintext`): the connection is refused. Then with a
certificate, as the operator and as the gateway (trusted, but not for these): the call
policy answers PERMISSION_DENIED naming caller and RPC, and nothing changed.
"""

from __future__ import annotations

import json
import subprocess
import uuid
from typing import Any

import pytest

from ops.process import System
from tests.support.grpcurl import GRPCURL, proto_source, tls_flags
from tests.support.mesh import mtls_enabled

pytestmark = pytest.mark.skipif(not mtls_enabled(), reason="needs SHOP_MTLS=on")

SEEN = [
    ("order", "shop.order.v1.OrderService/ListOrders", {"user_id": "someone"}),
    ("payment", "shop.payment.v1.PaymentService/Refund", {"order_id": "a-shipped-order"}),
    ("inventory", "shop.inventory.v1.InventoryService/SetStock",
     {"product_id": "espresso-machine", "available": 0}),
    ("product", "shop.product.v1.ProductService/CreateProduct",
     {"product": {"name": "Zzforgery", "price_cents": 1, "currency": "USD"}}),
    ("inventory", "shop.inventory.v1.InventoryService/ReserveStock",
     {"order_id": "made-up", "items": [{"product_id": "espresso-machine", "quantity": 50}]}),
]
# Who may not make each call, besides anyone without a certificate.
REFUSED_TO = {
    "shop.order.v1.OrderService/ListOrders": ("operator", "payment"),
    "shop.payment.v1.PaymentService/Refund": ("operator", "gateway"),
    "shop.inventory.v1.InventoryService/SetStock": ("operator", "gateway", "order"),
    "shop.product.v1.ProductService/CreateProduct": ("operator", "gateway", "order"),
    "shop.inventory.v1.InventoryService/ReserveStock": ("operator", "gateway", "payment"),
}


def _grpcurl(flags: list[str], addr: str, rpc: str, data: Any,
             extra: tuple[str, ...] = ()) -> subprocess.CompletedProcess[str]:
    argv = [str(GRPCURL), *flags, *extra, "-max-time", "10", "-d", json.dumps(data), addr, rpc]
    return subprocess.run(argv, capture_output=True, text=True, timeout=30, check=False)


@pytest.mark.parametrize(("service", "rpc", "data"), SEEN, ids=[s[1].split("/")[1] for s in SEEN])
def test_each_command_seen_is_refused(system: System, service: str, rpc: str,
                                      data: Any) -> None:
    addr = system.addr(service)
    plain = _grpcurl(["-plaintext"], addr, rpc, data)
    assert plain.returncode != 0, plain.stdout
    assert "Code: PermissionDenied" not in plain.stderr  # refused before any RPC
    for who in REFUSED_TO[rpc]:
        # The operator finds the method by reflection; others bring the contract.
        extra = () if who == "operator" else proto_source(service)
        res = _grpcurl(tls_flags(who), addr, rpc, data, extra)
        assert res.returncode != 0, (who, res.stdout)
        assert "Code: PermissionDenied" in res.stderr, (who, res.stderr)
        assert f"caller '{who}' may not call /{rpc}" in res.stderr, (who, res.stderr)


def test_nothing_changed(system: System) -> None:
    """After all the refused calls the stock is untouched and no product was added."""
    res = _grpcurl(tls_flags("gateway"), system.addr("inventory"),
                   "shop.inventory.v1.InventoryService/GetStock",
                   {"product_id": "espresso-machine"},
                   ("-emit-defaults", *proto_source("inventory")))
    assert res.returncode == 0, res.stderr
    stock = json.loads(res.stdout)["stock"]
    assert (stock["available"], stock["reserved"]) == (50, 0), stock
    res = _grpcurl(tls_flags("gateway"), system.addr("product"),
                   "shop.product.v1.ProductService/ListProducts",
                   {"query": "Zzforgery", "page_size": 50},
                   ("-emit-defaults", *proto_source("product")))
    assert res.returncode == 0, res.stderr
    assert json.loads(res.stdout)["products"] == [], res.stdout


def test_the_gateway_still_lists_a_users_orders(system: System) -> None:
    """The one allowed path: the gateway (which checked the user's token) may."""
    res = _grpcurl(tls_flags("gateway"), system.addr("order"),
                   "shop.order.v1.OrderService/ListOrders", {},
                   ("-H", f"x-user-id: u{uuid.uuid4().hex[:10]}", "-emit-defaults",
                    *proto_source("order")))
    assert res.returncode == 0, res.stderr
    assert json.loads(res.stdout)["orders"] == []
