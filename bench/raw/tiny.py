"""Tiny grpc.aio servers for the raw baselines, one per process.

Each servicer implements only the RPC its baseline calls (hence the abstract-class
ignores: the generated stubs declare every RPC of the service).

`python -m bench.raw.tiny KIND --port P [--db FILE] [--reserve ADDR --charge ADDR]`
  fixed    ProductService.GetProduct answering one fixed product (raw hop, raw fan-out)
  reserve  InventoryService.ReserveStock: one UPDATE in its own transaction
  charge   PaymentService.Charge: one INSERT
  order    OrderService.CreateOrder: INSERT pending, reserve, charge, UPDATE confirmed
SQLite files use WAL with synchronous=FULL, as shop's money and stock stores do.
SIGTERM ends the process (nothing to drain in a baseline).
"""

from __future__ import annotations

import argparse
import sys
import uuid
from typing import Any

import aiosqlite
import grpc
import uvloop
from shop.inventory.v1 import inventory_pb2, inventory_pb2_grpc
from shop.order.v1 import order_pb2, order_pb2_grpc
from shop.payment.v1 import payment_pb2, payment_pb2_grpc
from shop.product.v1 import product_pb2, product_pb2_grpc

__all__ = ["SAGA_COMMITS_PER_ORDER", "main"]

FIXED_PRODUCT = product_pb2.Product(
    id="espresso-machine", name="Espresso Machine", description="15-bar pump espresso maker",
    category="kitchen", price_cents=24900, currency="USD")
PRICE_CENTS = 24900
# The raw saga's durable writes per order: its four statements (INSERT pending, the
# reserve's UPDATE, the charge's INSERT, UPDATE confirmed), each committed on its own.
SAGA_COMMITS_PER_ORDER = 4
_CALL_TIMEOUT_S = 5.0


async def _open(path: str, schema: str) -> aiosqlite.Connection:
    # isolation_level=None: every statement is its own (committed) transaction.
    conn = await aiosqlite.connect(path, isolation_level=None)
    await conn.execute("PRAGMA journal_mode=WAL")
    await conn.execute("PRAGMA synchronous=FULL")
    await conn.executescript(schema)
    return conn


class Fixed(product_pb2_grpc.ProductServiceServicer):
    def __init__(self) -> None:
        self.reply = product_pb2.GetProductResponse(product=FIXED_PRODUCT)

    async def GetProduct(self, request: Any, context: Any) -> Any:
        return self.reply


class Reserve(inventory_pb2_grpc.InventoryServiceServicer):
    def __init__(self, conn: aiosqlite.Connection) -> None:
        self.conn = conn

    async def ReserveStock(self, request: Any, context: Any) -> Any:
        item = request.items[0]
        await self.conn.execute(
            "UPDATE stock SET available = available - ? WHERE product_id = ? AND available >= ?",
            (item.quantity, item.product_id, item.quantity))
        return inventory_pb2.ReserveStockResponse(reservation=inventory_pb2.Reservation(
            order_id=request.order_id, status=inventory_pb2.RESERVATION_STATUS_RESERVED,
            items=request.items))


class Charge(payment_pb2_grpc.PaymentServiceServicer):
    def __init__(self, conn: aiosqlite.Connection) -> None:
        self.conn = conn

    async def Charge(self, request: Any, context: Any) -> Any:
        await self.conn.execute("INSERT INTO payments (order_id, amount_cents) VALUES (?, ?)",
                                (request.order_id, request.amount_cents))
        return payment_pb2.ChargeResponse(payment=payment_pb2.Payment(
            order_id=request.order_id, status=payment_pb2.PAYMENT_STATUS_CHARGED,
            amount_cents=request.amount_cents, currency=request.currency))


class Order(order_pb2_grpc.OrderServiceServicer):
    def __init__(self, conn: aiosqlite.Connection, reserve: str, charge: str) -> None:
        self.conn = conn
        self.reserve_addr = reserve
        self.charge_addr = charge
        self.inventory: Any = None
        self.payment: Any = None

    async def CreateOrder(self, request: Any, context: Any) -> Any:
        if self.inventory is None:  # channels made inside the running loop, then reused
            self.inventory = inventory_pb2_grpc.InventoryServiceStub(
                grpc.aio.insecure_channel(self.reserve_addr))
            self.payment = payment_pb2_grpc.PaymentServiceStub(
                grpc.aio.insecure_channel(self.charge_addr))
        order_id = uuid.uuid4().hex
        total = sum(i.quantity for i in request.items) * PRICE_CENTS
        await self.conn.execute("INSERT INTO orders (id, status) VALUES (?, 'PENDING')",
                                (order_id,))
        items = [inventory_pb2.StockItem(product_id=i.product_id, quantity=i.quantity)
                 for i in request.items]
        await self.inventory.ReserveStock(
            inventory_pb2.ReserveStockRequest(order_id=order_id, items=items),
            timeout=_CALL_TIMEOUT_S)
        await self.payment.Charge(
            payment_pb2.ChargeRequest(order_id=order_id, user_id=request.user_id,
                                      amount_cents=total, currency="USD",
                                      card_token=request.card_token),
            timeout=_CALL_TIMEOUT_S)
        await self.conn.execute("UPDATE orders SET status = 'CONFIRMED' WHERE id = ?",
                                (order_id,))
        return order_pb2.CreateOrderResponse(order=order_pb2.Order(
            id=order_id, user_id=request.user_id, total_cents=total, currency="USD",
            status=order_pb2.ORDER_STATUS_CONFIRMED))


async def serve(args: argparse.Namespace) -> None:
    server = grpc.aio.server()
    if args.kind == "fixed":
        product_pb2_grpc.add_ProductServiceServicer_to_server(Fixed(), server)  # type: ignore[abstract]
    elif args.kind == "reserve":
        conn = await _open(args.db, "CREATE TABLE IF NOT EXISTS stock "
                           "(product_id TEXT PRIMARY KEY, available INTEGER NOT NULL);"
                           "INSERT OR REPLACE INTO stock VALUES ('espresso-machine', 2000000000);")
        inventory_pb2_grpc.add_InventoryServiceServicer_to_server(Reserve(conn), server)  # type: ignore[abstract]
    elif args.kind == "charge":
        conn = await _open(args.db, "CREATE TABLE IF NOT EXISTS payments "
                           "(order_id TEXT PRIMARY KEY, amount_cents INTEGER NOT NULL);")
        payment_pb2_grpc.add_PaymentServiceServicer_to_server(Charge(conn), server)  # type: ignore[abstract]
    else:
        conn = await _open(args.db, "CREATE TABLE IF NOT EXISTS orders "
                           "(id TEXT PRIMARY KEY, status TEXT NOT NULL);")
        order_pb2_grpc.add_OrderServiceServicer_to_server(
            Order(conn, args.reserve, args.charge), server)  # type: ignore[abstract]
    server.add_insecure_port(f"127.0.0.1:{args.port}")
    await server.start()
    await server.wait_for_termination()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.raw.tiny")
    parser.add_argument("kind", choices=["fixed", "reserve", "charge", "order"])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--db", default="")
    parser.add_argument("--reserve", default="")
    parser.add_argument("--charge", default="")
    uvloop.run(serve(parser.parse_args(argv)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
