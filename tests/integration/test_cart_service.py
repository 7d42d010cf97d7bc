"""The cart service as a real process, with a real product service and NATS."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import grpc
import pytest
import pytest_asyncio
from shop.cart.v1 import cart_pb2 as pb
from shop.cart.v1 import cart_pb2_grpc
from shop.order.v1 import order_pb2

from ops.natsd import NatsServer
from ops.process import free_port
from services.common.bus import Bus
from services.common.demo import BY_ID
from services.common.events import ORDER_CONFIRMED
from services.common.outbox import new_envelope
from tests.fixtures_services import ServiceFactory
from tests.support import mesh
from tests.support.mesh import nats_auth
from tests.support.rpc_errors import expect_error

if TYPE_CHECKING:  # on an aio channel the stub is the .pyi's async one
    Stub = cart_pb2_grpc.CartServiceAsyncStub
else:
    Stub = cart_pb2_grpc.CartServiceStub
INVALID = grpc.StatusCode.INVALID_ARGUMENT
ESPRESSO = BY_ID["espresso-machine"]
GRINDER = BY_ID["coffee-grinder"]
DUNE = BY_ID["novel-dune"]


@pytest.fixture(scope="module")
def shop(nats_server: NatsServer, tmp_path_factory: pytest.TempPathFactory,
         module_db_env: dict[str, str]) -> Iterator[ServiceFactory]:
    """product, then cart (which gets PRODUCT_ADDR), on each backend in turn; tests use
    their own user ids."""
    factory = ServiceFactory(tmp_path_factory.mktemp("cart"), nats_server.url, module_db_env)
    try:
        factory.start("product")
        factory.start("cart")
        yield factory
    finally:
        factory.stop_all()


@pytest_asyncio.fixture
async def stub(shop: ServiceFactory) -> AsyncIterator[Stub]:
    async with mesh.channel(shop["cart"].addr) as channel:
        yield cart_pb2_grpc.CartServiceStub(channel)


def as_user(user_id: str) -> tuple[tuple[str, str]]:
    return (("x-user-id", user_id),)


def new_user() -> str:
    return uuid.uuid4().hex


def lines(cart: pb.Cart) -> list[tuple[str, int]]:
    return [(i.product_id, i.quantity) for i in cart.items]


async def add(stub: Stub, user: str, product_id: str, quantity: int) -> pb.Cart:
    reply = await stub.AddItem(pb.AddItemRequest(product_id=product_id, quantity=quantity),
                               metadata=as_user(user))
    return reply.cart


async def get(stub: Stub, user: str) -> pb.Cart:
    return (await stub.GetCart(pb.GetCartRequest(), metadata=as_user(user))).cart


async def eventually(check: Callable[[], Awaitable[bool]], within_s: float = 15.0) -> None:
    deadline = asyncio.get_running_loop().time() + within_s
    while not await check():
        assert asyncio.get_running_loop().time() < deadline, "condition not met in time"
        await asyncio.sleep(0.1)


async def test_new_user_has_empty_usd_cart(stub: Stub) -> None:
    cart = await get(stub, new_user())
    assert (list(cart.items), cart.total_cents, cart.currency) == ([], 0, "USD")


async def test_add_remove_clear_with_real_products(stub: Stub) -> None:
    user = new_user()
    cart = await add(stub, user, ESPRESSO.id, 2)
    item = cart.items[0]
    assert (item.product_id, item.quantity, item.unit_price_cents, item.name) == (
        ESPRESSO.id, 2, ESPRESSO.price_cents, ESPRESSO.name)
    assert cart.user_id == user and cart.currency == "USD"
    await add(stub, user, GRINDER.id, 1)
    cart = await add(stub, user, ESPRESSO.id, 3)
    assert lines(cart) == [(ESPRESSO.id, 5), (GRINDER.id, 1)]
    assert cart.total_cents == 5 * ESPRESSO.price_cents + GRINDER.price_cents
    assert await get(stub, user) == cart

    cart = (await stub.RemoveItem(pb.RemoveItemRequest(product_id=ESPRESSO.id),
                                  metadata=as_user(user))).cart
    assert lines(cart) == [(GRINDER.id, 1)] and cart.total_cents == GRINDER.price_cents
    msg = await expect_error(
        stub.RemoveItem(pb.RemoveItemRequest(product_id=ESPRESSO.id), metadata=as_user(user)),
        grpc.StatusCode.NOT_FOUND)
    assert msg == f"product {ESPRESSO.id} is not in the cart"

    cart = (await stub.ClearCart(pb.ClearCartRequest(), metadata=as_user(user))).cart
    assert (list(cart.items), cart.total_cents) == ([], 0)
    assert lines(await get(stub, user)) == []


async def test_unknown_product_is_not_found_and_nothing_added(stub: Stub) -> None:
    user = new_user()
    await add(stub, user, DUNE.id, 1)
    msg = await expect_error(add(stub, user, "no-such-product", 1), grpc.StatusCode.NOT_FOUND)
    assert msg == "product no-such-product not found"
    assert lines(await get(stub, user)) == [(DUNE.id, 1)]


@pytest.mark.parametrize("quantity", [0, -1, 100])
async def test_quantity_out_of_bounds(stub: Stub, quantity: int) -> None:
    user = new_user()
    msg = await expect_error(add(stub, user, DUNE.id, quantity), INVALID)
    assert "quantity must be between 1 and 99" in msg
    assert lines(await get(stub, user)) == []


async def test_total_quantity_per_product_is_at_most_99(stub: Stub) -> None:
    user = new_user()
    await add(stub, user, DUNE.id, 60)
    assert "at most 99" in await expect_error(add(stub, user, DUNE.id, 40), INVALID)
    assert lines(await add(stub, user, DUNE.id, 39)) == [(DUNE.id, 99)]


async def test_bad_input_codes(stub: Stub) -> None:
    user = new_user()
    await expect_error(add(stub, user, "", 1), INVALID)
    # No x-user-id and no user_id: nobody to act for.
    await expect_error(stub.GetCart(pb.GetCartRequest()), INVALID)
    await expect_error(stub.RemoveItem(pb.RemoveItemRequest(product_id=""),
                                       metadata=as_user(user)), INVALID)
    assert lines(await get(stub, user)) == []


async def test_another_users_cart_is_untouched(stub: Stub) -> None:
    alice, bob = new_user(), new_user()
    await add(stub, alice, GRINDER.id, 2)
    await add(stub, bob, DUNE.id, 1)
    await stub.ClearCart(pb.ClearCartRequest(), metadata=as_user(bob))
    assert lines(await get(stub, alice)) == [(GRINDER.id, 2)]
    # Bob naming Alice's cart: not found for reads, refused for writes.
    await expect_error(stub.GetCart(pb.GetCartRequest(user_id=alice), metadata=as_user(bob)),
                       grpc.StatusCode.NOT_FOUND)
    await expect_error(stub.ClearCart(pb.ClearCartRequest(user_id=alice), metadata=as_user(bob)),
                       grpc.StatusCode.PERMISSION_DENIED)
    assert lines(await get(stub, alice)) == [(GRINDER.id, 2)]
    # An internal caller (no x-user-id) names the user explicitly.
    cart = (await stub.GetCart(pb.GetCartRequest(user_id=alice))).cart
    assert lines(cart) == [(GRINDER.id, 2)]


def confirmed(user: str, *product_ids: str, from_cart: bool = True) -> order_pb2.OrderConfirmed:
    return order_pb2.OrderConfirmed(order=order_pb2.Order(
        id=uuid.uuid4().hex, user_id=user, from_cart=from_cart,
        status=order_pb2.ORDER_STATUS_CONFIRMED,
        items=[order_pb2.OrderItem(product_id=p, quantity=1) for p in product_ids]))


async def test_order_confirmed_clears_ordered_lines_once(shop: ServiceFactory,
                                                         stub: Stub) -> None:
    user, other, sentinel = new_user(), new_user(), new_user()
    for pid in (ESPRESSO.id, GRINDER.id, DUNE.id):
        await add(stub, user, pid, 1)
    await add(stub, other, DUNE.id, 1)
    await add(stub, sentinel, DUNE.id, 1)

    bus = await Bus.connect(shop.nats_url, name="test-cart-orders", auth=nats_auth())
    try:
        await bus.ensure_streams()
        # Not from the cart: nothing to clear.
        await bus.publish(new_envelope(ORDER_CONFIRMED, confirmed(other, DUNE.id, from_cart=False),
                                       source="order", aggregate_id="x"))
        env = new_envelope(ORDER_CONFIRMED, confirmed(user, ESPRESSO.id, GRINDER.id),
                           source="order", aggregate_id="o1")
        await bus.publish(env)

        async def only_dune_left() -> bool:
            return lines(await get(stub, user)) == [(DUNE.id, 1)]

        await eventually(only_dune_left)
        # The customer adds the espresso machine again; then the same event comes back,
        # past JetStream's duplicate check (no Nats-Msg-Id): the inbox must drop it.
        await add(stub, user, ESPRESSO.id, 1)
        await bus.js.publish(ORDER_CONFIRMED, env.SerializeToString())
        # A later event on the same stream: once it took effect, the repeat was seen.
        await bus.publish(new_envelope(ORDER_CONFIRMED, confirmed(sentinel, DUNE.id),
                                       source="order", aggregate_id="o2"))

        async def sentinel_cleared() -> bool:
            return lines(await get(stub, sentinel)) == []

        await eventually(sentinel_cleared)
    finally:
        await bus.close()
    assert lines(await get(stub, user)) == [(DUNE.id, 1), (ESPRESSO.id, 1)]
    assert lines(await get(stub, other)) == [(DUNE.id, 1)]


async def test_serves_with_product_service_and_nats_down(tmp_path: Path) -> None:
    dead = f"127.0.0.1:{free_port()}"
    factory = ServiceFactory(tmp_path, f"nats://{dead}")
    try:
        proc = factory.start("cart", PRODUCT_ADDR=dead)
        async with mesh.channel(proc.addr) as channel:
            stub = cart_pb2_grpc.CartServiceStub(channel)
            user = new_user()
            assert lines(await get(stub, user)) == []
            msg = await expect_error(add(stub, user, DUNE.id, 1), grpc.StatusCode.UNAVAILABLE)
            assert "product" in msg
            assert lines(await get(stub, user)) == []
    finally:
        factory.stop_all()
