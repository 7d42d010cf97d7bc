"""Domain -> proto, shared by the servicer (responses) and the store (events)."""

from __future__ import annotations

from shop.inventory.v1 import inventory_pb2

from services.inventory.domain import Reservation, Status, Stock

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
