"""Domain -> proto, shared by the servicer (responses) and the store (events)."""

from __future__ import annotations

from google.protobuf.timestamp_pb2 import Timestamp
from shop.inventory.v1 import inventory_pb2

from services.inventory.domain import HistoryEntry, Reservation, Status, Stock
from services.inventory.ledger import Kind, Level

_STATUS: dict[Status, inventory_pb2.ReservationStatus.ValueType] = {
    Status.RESERVED: inventory_pb2.RESERVATION_STATUS_RESERVED,
    Status.REJECTED: inventory_pb2.RESERVATION_STATUS_REJECTED,
    Status.RELEASED: inventory_pb2.RESERVATION_STATUS_RELEASED,
    Status.COMMITTED: inventory_pb2.RESERVATION_STATUS_COMMITTED,
    Status.RESTOCKED: inventory_pb2.RESERVATION_STATUS_RESTOCKED,
}


def reservation_pb(r: Reservation) -> inventory_pb2.Reservation:
    return inventory_pb2.Reservation(
        order_id=r.order_id, status=_STATUS[r.status], reason=r.reason,
        items=[inventory_pb2.StockItem(product_id=li.product_id, quantity=li.quantity)
               for li in r.items])


def stock_pb(s: Stock) -> inventory_pb2.Stock:
    return inventory_pb2.Stock(product_id=s.product_id, available=s.available,
                               reserved=s.reserved, sold=s.sold)


_KIND: dict[Kind, inventory_pb2.StockEventType.ValueType] = {
    Kind.STOCK_SET: inventory_pb2.STOCK_EVENT_TYPE_STOCK_SET,
    Kind.RESERVED: inventory_pb2.STOCK_EVENT_TYPE_RESERVED,
    Kind.RELEASED: inventory_pb2.STOCK_EVENT_TYPE_RELEASED,
    Kind.COMMITTED: inventory_pb2.STOCK_EVENT_TYPE_COMMITTED,
    Kind.RESTOCKED: inventory_pb2.STOCK_EVENT_TYPE_RESTOCKED,
}


def level_pb(product_id: str, level: Level | None) -> inventory_pb2.Stock | None:
    if level is None:
        return None
    return inventory_pb2.Stock(product_id=product_id, available=level.available,
                               reserved=level.reserved, sold=level.sold)


def history_pb(e: HistoryEntry) -> inventory_pb2.StockEvent:
    when = Timestamp()
    when.FromMicroseconds(round(e.at * 1e6))
    return inventory_pb2.StockEvent(
        product_id=e.product_id, version=e.version, type=_KIND[e.kind], quantity=e.quantity,
        order_id=e.order_id, create_time=when, stock=stock_pb(e.stock))
