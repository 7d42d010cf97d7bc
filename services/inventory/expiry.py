"""Reservations cannot hold stock for ever: one older than a bound is settled by its order.

A reservation is the first step of an order's saga, which releases it (a refusal, a
cancel) or confirms the order, after which inventory's consumer of `order.confirmed`
commits it; both within seconds. One still RESERVED after `INVENTORY_RESERVATION_TTL_S`
(default 900 s; 0 turns this off) belongs to a saga that died, to a late event, or to a
caller that reserved for an order that does not exist. Inventory then asks the order
service what became of the order, and acts only on an answer that settles it:

- confirmed (or shipped): the units are sold: committed now (the event's commit, when
  it comes, finds nothing to do);
- cancelled, or no such order: released (stock back, `inventory.released`), as any
  release; a commit arriving later finds it released and is refused;
- still pending (a saga retrying), or no answer: kept, and asked again next time.

Releasing without asking would hand out units a confirmed order has sold.
"""

from __future__ import annotations

import asyncio
import enum
import logging
import time
from typing import Protocol

import grpc
from grpc import aio
from shop.order.v1 import order_pb2, order_pb2_grpc

from services.common.clients import Downstream
from services.common.errors import DomainError
from services.inventory.store import InventoryRepository

log = logging.getLogger("shop.inventory.expiry")

DEFAULT_TTL_S = 900.0
_PAGE = 100


class Fate(enum.Enum):
    """What became of a reservation's order, as the order service tells it."""

    CONFIRMED = "confirmed"  # confirmed or shipped: commit
    GONE = "gone"  # cancelled, or never existed: release
    OPEN = "open"  # still in its saga: keep
    UNKNOWN = "unknown"  # no answer: keep, ask again


class OrderFates(Protocol):
    async def fate(self, order_id: str) -> Fate: ...


_FATES = {
    order_pb2.ORDER_STATUS_CONFIRMED: Fate.CONFIRMED,
    order_pb2.ORDER_STATUS_SHIPPED: Fate.CONFIRMED,
    order_pb2.ORDER_STATUS_CANCELLED: Fate.GONE,
}


class GrpcOrderFates:
    """The order service's GetOrder (as the inventory service: no user)."""

    def __init__(self, orders: Downstream[order_pb2_grpc.OrderServiceAsyncStub]) -> None:
        self.orders = orders

    async def fate(self, order_id: str) -> Fate:
        try:
            reply = await self.orders.call(lambda s: s.GetOrder,
                                           order_pb2.GetOrderRequest(id=order_id),
                                           idempotent=True)
        except (aio.AioRpcError, DomainError) as err:  # DomainError: breaker open, no time
            if isinstance(err, aio.AioRpcError) and err.code() is grpc.StatusCode.NOT_FOUND:
                return Fate.GONE
            log.info("order service not asked about a stale reservation",
                     extra={"order_id": order_id, "error": str(err)})
            return Fate.UNKNOWN
        return _FATES.get(reply.order.status, Fate.OPEN)


class ReservationExpiry:
    """The background task settling stale reservations."""

    def __init__(self, store: InventoryRepository, fates: OrderFates, ttl_s: float) -> None:
        self.store = store
        self.fates = fates
        self.ttl_s = ttl_s
        # Looked at a few times per TTL, never more often than every second.
        self.every_s = min(max(ttl_s / 4, 1.0), 60.0)

    async def sweep(self) -> dict[Fate, list[str]]:
        """Settle every stale reservation whose order's fate is known now; returns the
        order ids by fate (the kept ones under OPEN and UNKNOWN)."""
        done: dict[Fate, list[str]] = {f: [] for f in Fate}
        kept: set[str] = set()
        older_than = time.time() - self.ttl_s
        while True:
            # The kept ones are still stale: each page asks for that many more.
            limit = _PAGE + len(kept)
            page = await self.store.stale_reservations(older_than, limit)
            for order_id in (o for o in page if o not in kept):
                fate = await self.fates.fate(order_id)
                if fate is Fate.CONFIRMED:
                    await self.store.commit_confirmed(order_id)
                elif fate is Fate.GONE:
                    await self.store.release(order_id)
                else:
                    kept.add(order_id)
                done[fate].append(order_id)
            if len(page) < limit:
                break
        if done[Fate.CONFIRMED] or done[Fate.GONE]:
            log.warning("settled reservations older than the bound",
                        extra={"committed": len(done[Fate.CONFIRMED]),
                               "released": len(done[Fate.GONE]),
                               "kept": len(kept), "ttl_s": self.ttl_s})
        return done

    async def run(self) -> None:
        while True:
            await asyncio.sleep(self.every_s)
            try:
                await self.sweep()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("reservation expiry sweep failed; trying again later")
