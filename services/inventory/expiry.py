"""Reservations cannot hold stock for ever: one older than a bound is released.

A reservation is the first step of an order's saga, which commits or releases it within
seconds. One still RESERVED after `INVENTORY_RESERVATION_TTL_S` (default 900 s; 0 turns
this off) belongs to a saga that died or to a caller that reserved for an order that
does not exist, so it is released (stock back, `inventory.released` event) like any
release; a commit arriving later finds it released and is refused, and the saga
compensates.
"""

from __future__ import annotations

import asyncio
import logging
import time

from services.inventory.store import InventoryRepository

log = logging.getLogger("shop.inventory.expiry")

DEFAULT_TTL_S = 900.0


class ReservationExpiry:
    """The background task releasing stale reservations."""

    def __init__(self, store: InventoryRepository, ttl_s: float) -> None:
        self.store = store
        self.ttl_s = ttl_s
        # Looked at a few times per TTL, never more often than every second.
        self.every_s = min(max(ttl_s / 4, 1.0), 60.0)

    async def sweep(self) -> list[str]:
        """Release every stale reservation now; returns their order ids."""
        released: list[str] = []
        while True:
            stale = await self.store.stale_reservations(time.time() - self.ttl_s)
            for order_id in stale:
                await self.store.release(order_id)
                released.append(order_id)
            if len(stale) < 100:
                break
        if released:
            log.warning("released reservations older than the bound",
                        extra={"count": len(released), "ttl_s": self.ttl_s})
        return released

    async def run(self) -> None:
        while True:
            await asyncio.sleep(self.every_s)
            try:
                await self.sweep()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("reservation expiry sweep failed; trying again later")
