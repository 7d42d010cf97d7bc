"""The inventory service as a real process over real gRPC: stock, reservations, events."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import grpc
import pytest
import pytest_asyncio
from google.protobuf.timestamp_pb2 import Timestamp
from grpc import aio
from nats.js.api import ConsumerConfig, DeliverPolicy
from shop.events.v1 import envelope_pb2
from shop.inventory.v1 import inventory_pb2 as pb
from shop.inventory.v1 import inventory_pb2_grpc

from ops.natsd import NatsServer
from ops.process import free_port
from services.common.bus import Bus
from services.common.demo import BY_ID
from services.common.events import (
    INVENTORY_RELEASED,
    INVENTORY_RESERVED,
    INVENTORY_RESTOCKED,
    STREAM,
)
from tests.fixtures_services import ServiceFactory
from tests.support import mesh
from tests.support.mesh import nats_auth
from tests.support.rpc_errors import expect_error

if TYPE_CHECKING:  # on an aio channel the stub is the .pyi's async one
    Stub = inventory_pb2_grpc.InventoryServiceAsyncStub
else:
    Stub = inventory_pb2_grpc.InventoryServiceStub
FP = grpc.StatusCode.FAILED_PRECONDITION


@pytest.fixture(scope="module")
def inventory(nats_server: NatsServer, tmp_path_factory: pytest.TempPathFactory,
              module_db_env: dict[str, str]) -> Iterator[ServiceFactory]:
    """One inventory process for the module, on each backend in turn; tests use their own
    product and order ids."""
    factory = ServiceFactory(tmp_path_factory.mktemp("inventory"), nats_server.url,
                             module_db_env)
    try:
        factory.start("inventory")
        yield factory
    finally:
        factory.stop_all()


@pytest_asyncio.fixture
async def stub(inventory: ServiceFactory) -> AsyncIterator[Stub]:
    async with mesh.channel(inventory["inventory"].addr) as channel:
        yield inventory_pb2_grpc.InventoryServiceStub(channel)


def new_id(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


async def product(stub: Stub, available: int) -> str:
    pid = new_id("p")
    await stub.SetStock(pb.SetStockRequest(product_id=pid, available=available))
    return pid


async def stock(stub: Stub, pid: str) -> tuple[int, int, int]:
    s = (await stub.GetStock(pb.GetStockRequest(product_id=pid))).stock
    return s.available, s.reserved, s.sold


def reserve_req(order_id: str, *items: tuple[str, int]) -> pb.ReserveStockRequest:
    return pb.ReserveStockRequest(
        order_id=order_id, items=[pb.StockItem(product_id=p, quantity=q) for p, q in items])


async def test_demo_catalogue_is_seeded(stub: Stub) -> None:
    assert await stock(stub, "headphones") == (BY_ID["headphones"].stock, 0, 0)


async def test_unknown_product_is_not_found(stub: Stub) -> None:
    msg = await expect_error(stub.GetStock(pb.GetStockRequest(product_id="nope")),
                             grpc.StatusCode.NOT_FOUND)
    assert msg == "product nope not found"


async def test_set_stock_creates_then_sets_available(stub: Stub) -> None:
    pid = await product(stub, 5)
    assert await stock(stub, pid) == (5, 0, 0)
    await stub.ReserveStock(reserve_req(new_id("o"), (pid, 2)))
    reply = await stub.SetStock(pb.SetStockRequest(product_id=pid, available=7))
    assert (reply.stock.available, reply.stock.reserved) == (7, 2)


async def test_reserve_twice_moves_stock_once(stub: Stub) -> None:
    pid = await product(stub, 10)
    order = new_id("o")
    first = await stub.ReserveStock(reserve_req(order, (pid, 3)))
    again = await stub.ReserveStock(reserve_req(order, (pid, 3)))
    assert first.reservation.status == pb.RESERVATION_STATUS_RESERVED
    assert again.reservation == first.reservation
    assert await stock(stub, pid) == (7, 3, 0)


async def test_release_twice_returns_stock_once_and_blocks_late_reserve(stub: Stub) -> None:
    pid = await product(stub, 10)
    order = new_id("o")
    await stub.ReserveStock(reserve_req(order, (pid, 4)))
    for _ in range(2):
        reply = await stub.ReleaseStock(pb.ReleaseStockRequest(order_id=order))
        assert reply.reservation.status == pb.RESERVATION_STATUS_RELEASED
    assert await stock(stub, pid) == (10, 0, 0)
    msg = await expect_error(stub.ReserveStock(reserve_req(order, (pid, 4))), FP)
    assert msg == "reservation already released"
    assert await stock(stub, pid) == (10, 0, 0)


async def test_release_before_reserve_leaves_tombstone(stub: Stub) -> None:
    pid = await product(stub, 10)
    order = new_id("o")
    reply = await stub.ReleaseStock(pb.ReleaseStockRequest(order_id=order))
    assert reply.reservation.status == pb.RESERVATION_STATUS_RELEASED
    msg = await expect_error(stub.ReserveStock(reserve_req(order, (pid, 1))), FP)
    assert msg == "reservation already released"
    assert await stock(stub, pid) == (10, 0, 0)


async def test_commit_twice_sells_once_and_cannot_be_released(stub: Stub) -> None:
    pid = await product(stub, 10)
    order = new_id("o")
    await stub.ReserveStock(reserve_req(order, (pid, 3)))
    for _ in range(2):
        reply = await stub.CommitStock(pb.CommitStockRequest(order_id=order))
        assert reply.reservation.status == pb.RESERVATION_STATUS_COMMITTED
    assert await stock(stub, pid) == (7, 0, 3)
    msg = await expect_error(stub.ReleaseStock(pb.ReleaseStockRequest(order_id=order)), FP)
    assert "sold stock cannot be released" in msg
    assert await stock(stub, pid) == (7, 0, 3)


@pytest.mark.parametrize("setup", ["unknown", "rejected", "released"])
async def test_commit_refused_without_a_live_reservation(stub: Stub, setup: str) -> None:
    pid = await product(stub, 1)
    order = new_id("o")
    if setup == "rejected":
        await expect_error(stub.ReserveStock(reserve_req(order, (pid, 2))), FP)
    elif setup == "released":
        await stub.ReleaseStock(pb.ReleaseStockRequest(order_id=order))
    await expect_error(stub.CommitStock(pb.CommitStockRequest(order_id=order)), FP)
    assert await stock(stub, pid) == (1, 0, 0)


async def test_one_short_line_reserves_nothing_and_refusal_is_replayed(stub: Stub) -> None:
    a, b = await product(stub, 50), await product(stub, 1)
    order = new_id("o")
    msg = await expect_error(stub.ReserveStock(reserve_req(order, (a, 5), (b, 2))), FP)
    assert msg == f"insufficient stock for {b}: requested 2, available 1"
    assert await stock(stub, a) == (50, 0, 0)
    assert await stock(stub, b) == (1, 0, 0)
    # Stock arrives; the same order is still refused with the first reason.
    await stub.SetStock(pb.SetStockRequest(product_id=b, available=100))
    assert await expect_error(stub.ReserveStock(reserve_req(order, (a, 5), (b, 2))), FP) == msg
    assert await stock(stub, b) == (100, 0, 0)
    # A release of a rejected order is a harmless no-op.
    await stub.ReleaseStock(pb.ReleaseStockRequest(order_id=order))
    assert await stock(stub, a) == (50, 0, 0)


async def test_duplicate_lines_are_merged(stub: Stub) -> None:
    pid = await product(stub, 10)
    reply = await stub.ReserveStock(reserve_req(new_id("o"), (pid, 2), (pid, 3)))
    assert [(i.product_id, i.quantity) for i in reply.reservation.items] == [(pid, 5)]
    assert await stock(stub, pid) == (5, 5, 0)


async def test_bad_input_is_refused_and_nothing_written(stub: Stub) -> None:
    pid = await product(stub, 10)
    order = new_id("o")
    cases: list[tuple[pb.ReserveStockRequest, grpc.StatusCode, str]] = [
        (reserve_req("", (pid, 1)), grpc.StatusCode.INVALID_ARGUMENT, "order_id is required"),
        (reserve_req(order), grpc.StatusCode.INVALID_ARGUMENT, "items must not be empty"),
        (reserve_req(order, (pid, 0)), grpc.StatusCode.INVALID_ARGUMENT, "between 1 and 10000"),
        (reserve_req(order, (pid, 10_001)), grpc.StatusCode.INVALID_ARGUMENT, "between 1"),
        (reserve_req(order, ("", 1)), grpc.StatusCode.INVALID_ARGUMENT, "product_id is required"),
        (reserve_req(order, *[(f"x{i}", 1) for i in range(101)]),
         grpc.StatusCode.INVALID_ARGUMENT, "at most 100 items"),
        (reserve_req(order, (pid, 1), ("ghost", 1)), grpc.StatusCode.NOT_FOUND,
         "product ghost not found"),
    ]
    for req, code, text in cases:
        assert text in await expect_error(stub.ReserveStock(req), code)
    await expect_error(stub.SetStock(pb.SetStockRequest(product_id=pid, available=-1)),
                       grpc.StatusCode.INVALID_ARGUMENT)
    await expect_error(stub.SetStock(pb.SetStockRequest(product_id="", available=1)),
                       grpc.StatusCode.INVALID_ARGUMENT)
    await expect_error(stub.ReleaseStock(pb.ReleaseStockRequest(order_id="")),
                       grpc.StatusCode.INVALID_ARGUMENT)
    await expect_error(stub.GetStock(pb.GetStockRequest(product_id="ghost")),
                       grpc.StatusCode.NOT_FOUND)
    assert await stock(stub, pid) == (10, 0, 0)
    # No reservation was recorded for the order: it can still reserve.
    reply = await stub.ReserveStock(reserve_req(order, (pid, 1)))
    assert reply.reservation.status == pb.RESERVATION_STATUS_RESERVED


async def test_concurrent_orders_never_oversell_across_two_instances(
        inventory: ServiceFactory, stub: Stub) -> None:
    pid = await product(stub, 10)
    # A second process on the same SQLite file: BEGIN IMMEDIATE must serialize them too.
    if sum(p.name == "inventory" for p in inventory.processes) < 2:
        inventory.start("inventory")
    addrs = [p.addr for p in inventory.processes if p.name == "inventory"]
    channels = [mesh.channel(a) for a in addrs]
    try:
        stubs = [inventory_pb2_grpc.InventoryServiceStub(ch) for ch in channels]

        async def one(i: int) -> grpc.StatusCode:
            try:
                await stubs[i % len(stubs)].ReserveStock(reserve_req(f"race-{pid}-{i}", (pid, 1)))
            except aio.AioRpcError as err:
                return err.code()
            return grpc.StatusCode.OK

        codes = await asyncio.gather(*(one(i) for i in range(50)))
    finally:
        for ch in channels:
            await ch.close()
    assert codes.count(grpc.StatusCode.OK) == 10
    assert codes.count(FP) == 40
    available, reserved, sold = await stock(stub, pid)
    assert (available, reserved, sold) == (0, 10, 0)
    assert available + reserved + sold == 10


async def test_events_are_published_once_per_effect(inventory: ServiceFactory,
                                                    stub: Stub) -> None:
    pid = await product(stub, 10)
    order = new_id("o")
    for _ in range(2):
        await stub.ReserveStock(reserve_req(order, (pid, 2)))
    for _ in range(2):
        await stub.ReleaseStock(pb.ReleaseStockRequest(order_id=order))
    bus = await Bus.connect(inventory.nats_url, name="test-inventory-events", auth=nats_auth())
    try:
        sub = await bus.js.pull_subscribe(
            "inventory.>", stream=STREAM,
            config=ConsumerConfig(deliver_policy=DeliverPolicy.ALL))
        seen: list[tuple[str, int]] = []
        deadline = asyncio.get_running_loop().time() + 10
        while len(seen) < 2 and asyncio.get_running_loop().time() < deadline:
            try:
                msgs = await sub.fetch(100, timeout=1)
            except TimeoutError:
                continue
            for msg in msgs:
                env = envelope_pb2.Envelope.FromString(msg.data)
                if env.aggregate_id != order:
                    continue
                payload = pb.StockReserved() if msg.subject == INVENTORY_RESERVED \
                    else pb.StockReleased()
                assert env.payload.Unpack(payload)
                seen.append((msg.subject, payload.reservation.items[0].quantity))
        # Give a stray duplicate a moment to show up.
        try:
            for msg in await sub.fetch(100, timeout=0.5):
                if envelope_pb2.Envelope.FromString(msg.data).aggregate_id == order:
                    seen.append((msg.subject, -1))
        except TimeoutError:
            pass
        await sub.unsubscribe()
    finally:
        await bus.close()
    assert seen == [(INVENTORY_RESERVED, 2), (INVENTORY_RELEASED, 2)]


async def test_restock_returns_sold_units_once_with_its_event(inventory: ServiceFactory,
                                                              stub: Stub) -> None:
    """A confirmed order cancelled before dispatch: its committed units go from sold back
    to available (or from reserved, when the commit had not landed yet), once however
    often RestockStock is called, with one inventory.restocked."""
    pid = await product(stub, 10)
    order = new_id("o")
    await stub.ReserveStock(reserve_req(order, (pid, 3)))
    await stub.CommitStock(pb.CommitStockRequest(order_id=order))
    assert await stock(stub, pid) == (7, 0, 3)
    for _ in range(2):
        got = await stub.RestockStock(pb.RestockStockRequest(order_id=order))
        assert got.reservation.status == pb.RESERVATION_STATUS_RESTOCKED
        assert await stock(stub, pid) == (10, 0, 0)
    msg = await expect_error(stub.ReleaseStock(pb.ReleaseStockRequest(order_id=order)), FP)
    assert "committed" in msg
    # Confirmed but not committed yet (the cancel came before order.confirmed was
    # consumed): the reserved units go back, and the late commit then does nothing.
    early = new_id("o")
    await stub.ReserveStock(reserve_req(early, (pid, 2)))
    assert await stock(stub, pid) == (8, 2, 0)
    got = await stub.RestockStock(pb.RestockStockRequest(order_id=early))
    assert got.reservation.status == pb.RESERVATION_STATUS_RESTOCKED
    assert await stock(stub, pid) == (10, 0, 0)
    # Never held (released): refused, nothing moves.
    other = new_id("o")
    await stub.ReserveStock(reserve_req(other, (pid, 1)))
    await stub.ReleaseStock(pb.ReleaseStockRequest(order_id=other))
    msg = await expect_error(stub.RestockStock(pb.RestockStockRequest(order_id=other)), FP)
    assert "no committed stock" in msg
    assert await stock(stub, pid) == (10, 0, 0)
    await expect_error(stub.RestockStock(pb.RestockStockRequest(order_id="")),
                       grpc.StatusCode.INVALID_ARGUMENT)
    bus = await Bus.connect(inventory.nats_url, name="test-inventory-restock", auth=nats_auth())
    try:
        sub = await bus.js.pull_subscribe(
            INVENTORY_RESTOCKED, stream=STREAM,
            config=ConsumerConfig(deliver_policy=DeliverPolicy.ALL))
        seen: list[int] = []
        deadline = asyncio.get_running_loop().time() + 10
        while asyncio.get_running_loop().time() < deadline:
            try:
                msgs = await sub.fetch(100, timeout=1)
            except TimeoutError:
                if seen:
                    break  # quiet after the first: no duplicate
                continue
            for m in msgs:
                env = envelope_pb2.Envelope.FromString(m.data)
                if env.aggregate_id == order:
                    payload = pb.StockRestocked()
                    assert env.payload.Unpack(payload)
                    seen.append(payload.reservation.items[0].quantity)
        await sub.unsubscribe()
    finally:
        await bus.close()
    assert seen == [3]


async def test_serves_while_nats_is_down(tmp_path: Path) -> None:
    # Reservations must not wait for NATS: their events stay in the outbox meanwhile.
    factory = ServiceFactory(tmp_path, f"nats://127.0.0.1:{free_port()}")
    try:
        proc = factory.start("inventory")
        async with mesh.channel(proc.addr) as channel:
            stub = inventory_pb2_grpc.InventoryServiceStub(channel)
            reply = await stub.ReserveStock(reserve_req(new_id("o"), ("yoga-mat", 2)))
            assert reply.reservation.status == pb.RESERVATION_STATUS_RESERVED
            assert await stock(stub, "yoga-mat") == (BY_ID["yoga-mat"].stock - 2, 2, 0)
    finally:
        factory.stop_all()


def at(seconds: float) -> Timestamp:
    ts = Timestamp()
    ts.FromNanoseconds(int(seconds * 1e9))
    return ts


async def test_stock_as_of_a_past_time(stub: Stub) -> None:
    pid = await product(stub, 10)
    before_reserve = time.time()
    await asyncio.sleep(0.02)
    await stub.ReserveStock(reserve_req(new_id("o"), (pid, 4)))
    now = (await stub.GetStock(pb.GetStockRequest(product_id=pid, as_of=at(time.time())))).stock
    then = (await stub.GetStock(pb.GetStockRequest(product_id=pid,
                                                   as_of=at(before_reserve)))).stock
    assert (now.available, now.reserved) == (6, 4)
    assert (then.available, then.reserved) == (10, 0)
    msg = await expect_error(stub.GetStock(pb.GetStockRequest(
        product_id=pid, as_of=at(before_reserve - 3600))), grpc.StatusCode.NOT_FOUND)
    assert msg == f"product {pid} had no stock yet at that time"


async def test_history_pages_through_a_products_events_newest_first(stub: Stub) -> None:
    pid = await product(stub, 10)
    orders = [new_id("o") for _ in range(4)]
    for o in orders:
        await stub.ReserveStock(reserve_req(o, (pid, 1)))
    await stub.CommitStock(pb.CommitStockRequest(order_id=orders[0]))
    got: list[pb.StockEvent] = []
    token = ""
    pages = 0
    while True:
        reply = await stub.GetStockHistory(pb.GetStockHistoryRequest(
            product_id=pid, page_size=2, page_token=token))
        got.extend(reply.events)
        pages += 1
        token = reply.next_page_token
        if not token:
            break
    assert pages == 3
    assert [e.version for e in got] == [6, 5, 4, 3, 2, 1]
    assert [e.type for e in got] == [pb.STOCK_EVENT_TYPE_COMMITTED,
                                     *[pb.STOCK_EVENT_TYPE_RESERVED] * 4,
                                     pb.STOCK_EVENT_TYPE_STOCK_SET]
    assert [e.order_id for e in got[1:5]] == orders[::-1]
    assert (got[0].stock.available, got[0].stock.reserved, got[0].stock.sold) == (6, 3, 1)
    assert (got[-1].quantity, got[-1].stock.available) == (10, 10)
    assert got[-1].create_time.ToNanoseconds() <= got[0].create_time.ToNanoseconds()


async def test_bad_time_travel_and_paging_input_is_invalid_argument(stub: Stub) -> None:
    pid = await product(stub, 3)
    other = await product(stub, 3)
    bad_time = Timestamp(seconds=1, nanos=1_000_000_000)
    future = at(time.time() + 3600)
    cases: list[tuple[Awaitable[object], str]] = [
        (stub.GetStock(pb.GetStockRequest(product_id=pid, as_of=bad_time)), "as_of.nanos"),
        (stub.GetStockHistory(pb.GetStockHistoryRequest(product_id=pid, page_size=-1)),
         "page_size must not be negative"),
        (stub.GetStockHistory(pb.GetStockHistoryRequest(product_id=pid, page_token="junk")),
         "page_token is not valid"),
        (stub.GetStockHistory(pb.GetStockHistoryRequest(product_id="")),
         "product_id is required"),
    ]
    for call, text in cases:
        assert text in await expect_error(call, grpc.StatusCode.INVALID_ARGUMENT)
    # A time still to come is answered with the stock now.
    now = await stub.GetStock(pb.GetStockRequest(product_id=pid))
    assert await stub.GetStock(pb.GetStockRequest(product_id=pid, as_of=future)) == now
    await stub.ReserveStock(reserve_req(new_id("o"), (other, 1)))
    page = await stub.GetStockHistory(pb.GetStockHistoryRequest(product_id=other, page_size=1))
    assert page.next_page_token
    msg = await expect_error(stub.GetStockHistory(pb.GetStockHistoryRequest(
        product_id=pid, page_token=page.next_page_token)), grpc.StatusCode.INVALID_ARGUMENT)
    assert msg == "page_token was made for a different product_id"
    await expect_error(stub.GetStockHistory(pb.GetStockHistoryRequest(product_id="ghost")),
                       grpc.StatusCode.NOT_FOUND)


async def test_rebuild_verify_is_the_operators_and_finds_nothing_on_a_sound_ledger(
        inventory: ServiceFactory, stub: Stub) -> None:
    pid = await product(stub, 4)
    await stub.ReserveStock(reserve_req(new_id("o"), (pid, 2)))
    reply = await stub.RebuildStock(pb.RebuildStockRequest(verify_only=True, from_scratch=True))
    assert reply.differences == [] and reply.rewritten == 0
    assert reply.products >= len(BY_ID) + 1 and reply.events >= reply.products + 1
    for identity in ("gateway", "backoffice", "order"):
        async with mesh.as_identity(identity, inventory["inventory"].addr, "inventory") as ch:
            await expect_error(inventory_pb2_grpc.InventoryServiceStub(ch).RebuildStock(
                pb.RebuildStockRequest(verify_only=True)), grpc.StatusCode.PERMISSION_DENIED)
