"""The dispatcher: hands every PENDING shipment to the carrier once it is due.

The due time is in the shipments row, so a restarted (or another) instance dispatches
what a stopped one had scheduled. It sleeps until the next due time or until a new
shipment is created (`wake`), never longer than `idle_s` (another instance's shipments).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time

from services.common.cancellation import within
from services.shipping.store import ShippingRepository

log = logging.getLogger("shop.shipping.dispatcher")


class Dispatcher:
    def __init__(self, store: ShippingRepository, *, idle_s: float = 1.0) -> None:
        self.store = store
        self.idle_s = idle_s
        self._wake = asyncio.Event()

    def wake(self) -> None:
        """A shipment was created: look at the due times again."""
        self._wake.set()

    async def run_once(self) -> float:
        """Dispatch what is due; returns how long to sleep before the next look."""
        due = await self.store.dispatch_due(time.time())
        if due.dispatched:
            log.info("dispatched shipments", extra={"count": due.dispatched})
        if due.next_at is None:
            return self.idle_s
        return max(0.0, min(self.idle_s, due.next_at - time.time()))

    async def run(self) -> None:
        while True:
            try:
                pause = await self.run_once()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("dispatch failed; trying again")
                pause = self.idle_s
            self._wake.clear()
            with contextlib.suppress(TimeoutError):
                await within(self._wake.wait(), pause)
