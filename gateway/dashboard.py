"""GET /api/dashboard: user, recent orders and unread count, fetched in parallel.

Each part has its own short deadline and goes through a breaker of its own
("dashboard.<service>", see gateway.upstreams.dashboard_callers) — never the service
breaker the other routes share, so a dashboard part timing out under load cannot make
POST /api/orders or login fail. A part that fails answers with the last good value for
that user (or an empty one) and is named in `degraded`, so one slow or dead service never
turns the dashboard into a 5xx. A user never changes (the user service has no call that
changes one), so the user part, once fetched, is answered from memory: a dashboard of a
user seen before costs two calls, not three.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Any

from shop.notification.v1 import notification_pb2
from shop.order.v1 import order_pb2
from shop.user.v1 import user_pb2

from gateway.jsonmap import to_dict
from gateway.upstreams import Caller

log = logging.getLogger("shop.gateway.dashboard")

RECENT_ORDERS = 5
# Extra time past the part's gRPC deadline before the part is abandoned outright.
_GUARD_S = 0.15
_MAX_REMEMBERED = 10_000

ErrorHook = Callable[[str, BaseException], None]


class Dashboard:
    def __init__(
        self,
        users: Caller,
        orders: Caller,
        notifications: Caller,
        *,
        part_timeout_s: float = 0.6,
        on_error: ErrorHook | None = None,
    ) -> None:
        self._users = users
        self._orders = orders
        self._notifications = notifications
        self._timeout = part_timeout_s
        self._on_error = on_error
        # (part, user id) -> last good value; insertion-ordered for bounded eviction.
        self._last: dict[tuple[str, str], Any] = {}

    async def build(self, user_id: str) -> dict[str, Any]:
        known = self._last.get(("user", user_id))
        if known is not None:
            orders, unread = await asyncio.gather(
                self._part("order", user_id, self._fetch_orders, []),
                self._part("notification", user_id, self._fetch_unread, 0),
            )
            user: tuple[Any, bool] = (known, False)
        else:
            user, orders, unread = await asyncio.gather(
                self._part("user", user_id, self._fetch_user,
                           {"id": user_id, "email": "", "name": "", "roles": []}),
                self._part("order", user_id, self._fetch_orders, []),
                self._part("notification", user_id, self._fetch_unread, 0),
            )
        degraded = [
            name
            for name, (_, failed) in (("user", user), ("order", orders), ("notification", unread))
            if failed
        ]
        return {
            "user": user[0],
            "recentOrders": orders[0],
            "unreadNotifications": unread[0],
            "degraded": degraded,
        }

    async def _fetch_user(self) -> Any:
        reply = await self._users.call(
            lambda s: s.GetUser, user_pb2.GetUserRequest(id="me"), idempotent=True,
            timeout=self._timeout,
        )
        return to_dict(reply.user)

    async def _fetch_orders(self) -> Any:
        reply = await self._orders.call(
            lambda s: s.ListOrders,
            order_pb2.ListOrdersRequest(page_size=RECENT_ORDERS),
            idempotent=True,
            timeout=self._timeout,
        )
        return [to_dict(o) for o in reply.orders[:RECENT_ORDERS]]

    async def _fetch_unread(self) -> Any:
        reply = await self._notifications.call(
            lambda s: s.CountUnread,
            notification_pb2.CountUnreadRequest(),
            idempotent=True,
            timeout=self._timeout,
        )
        return int(reply.count)

    async def _part(
        self, name: str, user_id: str, fetch: Callable[[], Awaitable[Any]], empty: Any
    ) -> tuple[Any, bool]:
        try:
            # asyncio.timeout, not wait_for: no task of its own per part
            async with asyncio.timeout(self._timeout + _GUARD_S):
                value = await fetch()
        except Exception as err:  # any failure of a part degrades only that part
            if self._on_error is not None:
                self._on_error(name, err)
            log.info("dashboard part degraded", extra={"part": name, "error": str(err)})
            return self._last.get((name, user_id), empty), True
        key = (name, user_id)
        last = self._last
        if key not in last and len(last) >= _MAX_REMEMBERED:
            last.pop(next(iter(last)))
        last[key] = value
        return value, False
