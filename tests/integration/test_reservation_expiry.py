"""Stock cannot be locked for ever: a reservation past its bound is settled by what the
order service says of its order (here: no such order, so it is released). The decision
for every answer is in tests/unit/test_reservation_expiry.py."""

from __future__ import annotations

import asyncio
import time
import uuid

import grpc
import pytest
from grpc import aio
from shop.inventory.v1 import inventory_pb2 as pb
from shop.inventory.v1 import inventory_pb2_grpc

from tests.fixtures_services import ServiceFactory
from tests.support import mesh


async def _stock(stub: inventory_pb2_grpc.InventoryServiceAsyncStub, pid: str) -> tuple[int, int]:
    s = (await stub.GetStock(pb.GetStockRequest(product_id=pid), timeout=5)).stock
    return s.available, s.reserved


async def test_a_reservation_for_a_made_up_order_expires(services: ServiceFactory) -> None:
    proc, _ = services.start_many("inventory", "order", INVENTORY_RESERVATION_TTL_S="1")
    pid = f"p-{uuid.uuid4().hex[:8]}"
    async with mesh.channel(proc.addr) as chan:
        stub = inventory_pb2_grpc.InventoryServiceStub(chan)
        await stub.SetStock(pb.SetStockRequest(product_id=pid, available=5), timeout=5)
        made_up = uuid.uuid4().hex  # no order has this id
        reply = await stub.ReserveStock(pb.ReserveStockRequest(
            order_id=made_up, items=[pb.StockItem(product_id=pid, quantity=5)]), timeout=5)
        assert reply.reservation.status == pb.RESERVATION_STATUS_RESERVED
        assert await _stock(stub, pid) == (0, 5)  # all of it locked
        deadline = time.monotonic() + 20
        while await _stock(stub, pid) != (5, 0):
            assert time.monotonic() < deadline, "the reservation never expired"
            await asyncio.sleep(0.1)
        # A commit for it now is refused: the stock went back.
        with pytest.raises(aio.AioRpcError) as info:
            await stub.CommitStock(pb.CommitStockRequest(order_id=made_up), timeout=5)
        assert info.value.code() is grpc.StatusCode.FAILED_PRECONDITION
