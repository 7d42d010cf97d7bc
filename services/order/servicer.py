"""shop.order.v1.OrderService over gRPC: proto <-> domain; the saga runs in saga.py."""

from __future__ import annotations

import asyncio
import dataclasses
import time
from collections.abc import Awaitable
from typing import Any, TypeVar

import grpc
from grpc import aio
from shop.cart.v1 import cart_pb2, cart_pb2_grpc
from shop.order.v1 import order_pb2, order_pb2_grpc
from shop.product.v1 import product_pb2, product_pb2_grpc
from shop.user.v1 import user_pb2, user_pb2_grpc

from services.common import context
from services.common.clients import Downstream
from services.common.errors import InvalidArgument, NotFound, PermissionDenied, Unavailable
from services.common.identity import resolve_user
from services.common.ids import new_id
from services.common.timestamps import timestamp
from services.order import domain
from services.order.convert import order_pb, status_pb
from services.order.domain import Order, OrderStatus, SagaState, SagaStatus
from services.order.known import Known
from services.order.saga import SagaRunner
from services.order.store import HistoryEntry, OrderRepository

# Left for the answer to travel back before the caller's deadline.
_DEADLINE_MARGIN_S = 0.3
_MAX_KEY = 200
_MAX_REASON = 500
_KNOWN_USERS_MAX = 100_000
_KNOWN_PRODUCTS_MAX = 100_000

A = TypeVar("A")
B = TypeVar("B")


@dataclasses.dataclass(frozen=True)
class Peers:
    users: Downstream[user_pb2_grpc.UserServiceAsyncStub]
    products: Downstream[product_pb2_grpc.ProductServiceAsyncStub]
    carts: Downstream[cart_pb2_grpc.CartServiceAsyncStub]


class OrderServicer(order_pb2_grpc.OrderServiceServicer):
    def __init__(self, store: OrderRepository, runner: SagaRunner, peers: Peers, *,
                 budget_s: float = 5.0) -> None:
        self.store = store
        self.runner = runner
        self.peers = peers
        self.budget_s = budget_s
        # What peers told us that cannot change (see known.py).
        self._known_users: Known[str, bool] = Known(_KNOWN_USERS_MAX)
        self._prices: Known[str, tuple[int, str]] = Known(_KNOWN_PRODUCTS_MAX)

    def _budget(self) -> float:
        left = context.remaining()
        if left is None:
            return self.budget_s
        return min(self.budget_s, left - _DEADLINE_MARGIN_S)

    async def _owned(self, order_id: str) -> Order:
        """The order, if the caller may see it (another user's is NotFound)."""
        if not order_id.strip():
            raise InvalidArgument("id is required")
        order = await self.store.get(order_id)
        caller = context.user_id()
        if order is None or (caller and caller != order.user_id):
            raise NotFound(f"order {order_id} not found")
        return order

    async def _settled(self, order: Order) -> Order:
        """Wait (within the budget) for the order's saga, then read the order again."""
        if order.status is not OrderStatus.PENDING and self.runner.task(order.id) is None:
            return order
        task = self.runner.task(order.id) or self.runner.ensure(order.id)
        await self.runner.wait(task, self._budget())
        return await self.store.get(order.id) or order

    async def _check_user(self, user_id: str) -> None:
        """The user must exist (an unknown one is NOT_FOUND, with or without `x-user-id`).
        Users are never deleted (the user service has no such call), so a user seen once
        stays valid: known ids skip the GetUser hop. Only positive answers are cached."""
        if self._known_users.get(user_id):
            return
        await self.peers.users.call(lambda s: s.GetUser, user_pb2.GetUserRequest(id=user_id),
                                    idempotent=True)
        self._known_users.put(user_id, True)

    async def _cart_lines(self, user_id: str) -> tuple[domain.Line, ...]:
        reply = await self.peers.carts.call(
            lambda s: s.GetCart, cart_pb2.GetCartRequest(user_id=user_id), idempotent=True)
        items = reply.cart.items
        if not items:
            raise InvalidArgument("no items given and the cart is empty")
        return domain.validate_lines([(i.product_id, i.quantity) for i in items])

    async def _catalogue(self, lines: tuple[domain.Line, ...]) -> dict[str, tuple[int, str]]:
        """Price and currency per product of `lines`. A product's price never changes (the
        product service creates products and never updates them), so prices seen once are
        kept and only products not seen yet cost a BatchGetProducts hop."""
        prices: dict[str, tuple[int, str]] = {}
        missing: list[str] = []
        for ln in lines:
            known = self._prices.get(ln.product_id)
            if known is None:
                missing.append(ln.product_id)
            else:
                prices[ln.product_id] = known
        if not missing:
            return prices
        try:
            reply = await self.peers.products.call(
                lambda s: s.BatchGetProducts,
                product_pb2.BatchGetProductsRequest(ids=missing), idempotent=True)
        except aio.AioRpcError as err:
            if err.code() is grpc.StatusCode.NOT_FOUND:
                raise NotFound(err.details() or "product not found") from None
            raise
        for p in reply.products:
            prices[p.id] = (p.price_cents, p.currency)
            self._prices.put(p.id, prices[p.id])
        return prices

    async def CreateOrder(self, request: order_pb2.CreateOrderRequest,
                          context_: aio.ServicerContext[Any, Any]) -> order_pb2.CreateOrderResponse:
        user_id = resolve_user(request.user_id, for_read=False)
        token = domain.validate_card_token(request.card_token)
        key = request.idempotency_key.strip()
        if len(key) > _MAX_KEY:
            raise InvalidArgument(f"idempotency_key is at most {_MAX_KEY} characters")
        if key and (existing := await self.store.by_key(user_id, key)) is not None:
            return await self._respond(await self._settled(existing), context_)
        from_cart = not request.items
        if from_cart:
            _, lines = await _gather(self._check_user(user_id), self._cart_lines(user_id))
            catalogue = await self._catalogue(lines)
        else:
            # Validated before any call (bad input costs nothing downstream); the user check
            # and the pricing then go out at once.
            lines = domain.validate_lines([(i.product_id, i.quantity) for i in request.items])
            if self._known_users.get(user_id):  # the usual case: no GetUser, no tasks
                catalogue = await self._catalogue(lines)
            else:
                _, catalogue = await _gather(self._check_user(user_id), self._catalogue(lines))
        priced, total, currency = domain.price_lines(lines, catalogue)
        now = time.time()
        order = Order(id=new_id(), user_id=user_id, items=priced, total_cents=total,
                      currency=currency, create_time=now, update_time=now,
                      from_cart=from_cart, idempotency_key=key)
        state = SagaState(order.id, card_token=token)
        cfg = self.runner.config
        order, created = await self.store.create(order, state, owner=cfg.owner,
                                                 lease_s=cfg.lease_s)
        if not created:  # the same key raced us
            return await self._respond(await self._settled(order), context_)
        task = self.runner.start(order, state)
        await self.runner.wait(task, self._budget())
        if task.done() and not task.cancelled() and task.exception() is None:
            result = task.result() or await self.store.get(order.id) or order
        else:
            result = await self.store.get(order.id) or order
        return await self._respond(result, context_)

    async def _respond(self, order: Order,
                       ctx: aio.ServicerContext[Any, Any]) -> order_pb2.CreateOrderResponse:
        """CONFIRMED or still PENDING: the order. Refused: an error naming the reason, with
        the (CANCELLED, readable) order's id in the message and in `x-order-id`."""
        if order.status in (OrderStatus.CANCELLED, OrderStatus.REQUIRES_ATTENTION):
            got = await self.store.saga(order.id)
            invalid_card = got is not None and domain.is_invalid_card(got[0])
            code = (grpc.StatusCode.INVALID_ARGUMENT if invalid_card
                    else grpc.StatusCode.FAILED_PRECONDITION)
            what = "cancelled" if order.status is OrderStatus.CANCELLED else \
                "requires attention"
            await ctx.abort(code, f"order {order.id} {what}: {order.cancel_reason}",
                            trailing_metadata=(("x-order-id", order.id),))
        return order_pb2.CreateOrderResponse(order=order_pb(order))

    async def GetOrder(self, request: order_pb2.GetOrderRequest,
                       context_: aio.ServicerContext[Any, Any]) -> order_pb2.GetOrderResponse:
        return order_pb2.GetOrderResponse(order=order_pb(await self._owned(request.id)))

    async def ListOrders(self, request: order_pb2.ListOrdersRequest,
                         context_: aio.ServicerContext[Any, Any]) -> order_pb2.ListOrdersResponse:
        user_id = resolve_user(request.user_id)
        size = domain.page_size(request.page_size)
        after = domain.decode_page_token(request.page_token)
        orders, more = await self.store.page_for_user(user_id, after, size)
        token = "" if more is None else domain.encode_page_token(*more)
        return order_pb2.ListOrdersResponse(orders=orders, next_page_token=token)

    async def CancelOrder(self, request: order_pb2.CancelOrderRequest,
                          context_: aio.ServicerContext[Any, Any]) -> order_pb2.CancelOrderResponse:
        order = await self._owned(request.id)
        reason = request.reason.strip()[:_MAX_REASON] or domain.REASON_CUSTOMER
        for _ in range(5):  # retried only when the saga moved between read and write
            domain.check_cancellable(order)
            if order.status is OrderStatus.CANCELLED:
                return order_pb2.CancelOrderResponse(order=order_pb(order))
            got = await self.store.saga(order.id)
            if got is None:
                raise NotFound(f"order {order.id} not found")
            state, _ = got
            entry = HistoryEntry("cancel", "requested", 1, time.time(), reason)
            if order.status is OrderStatus.CONFIRMED and state.status is SagaStatus.DONE:
                new = domain.cancel_confirmed(state, reason)
                cfg = self.runner.config
                ok = await self.store.replace_saga(state, new, entry, owner=cfg.owner,
                                                   lease_s=cfg.lease_s)
            elif state.status is SagaStatus.RUNNING and not state.cancel_requested:
                new = dataclasses.replace(state, cancel_requested=True, reason=reason)
                ok = await self.store.replace_saga(state, new, entry)
            else:
                ok = True  # already compensating or already asked: just wait for it
            if ok:
                self.runner.poke(order.id)
                task = self.runner.task(order.id)
                await self.runner.wait(task, self._budget())
                final = await self.store.get(order.id) or order
                # Dispatched before the cancel could stop it: the order ships, unrefunded.
                domain.check_cancellable(final)
                return order_pb2.CancelOrderResponse(order=order_pb(final))
            order = await self._owned(order.id)
        raise Unavailable(f"order {order.id} is changing too fast to cancel; try again")

    async def RetrySaga(self, request: order_pb2.RetrySagaRequest,
                        context_: aio.ServicerContext[Any, Any]) -> order_pb2.RetrySagaResponse:
        if context.user_id():
            raise PermissionDenied("RetrySaga is an operator's call, not a user's")
        order_id = request.order_id.strip()
        if not order_id:
            raise InvalidArgument("order_id is required")
        cfg = self.runner.config
        await self.store.retry(order_id, owner=cfg.owner, lease_s=cfg.lease_s)
        self.runner.poke(order_id)
        await self.runner.wait(self.runner.task(order_id), self._budget())
        final = await self.store.get(order_id)
        if final is None:
            raise NotFound(f"order {order_id} not found")
        return order_pb2.RetrySagaResponse(order=order_pb(final))

    async def GetSagaHistory(self, request: order_pb2.GetSagaHistoryRequest,
                             context_: aio.ServicerContext[Any, Any],
                             ) -> order_pb2.GetSagaHistoryResponse:
        order = await self._owned(request.order_id)
        steps = [order_pb2.SagaStep(step=h.step, outcome=h.outcome, attempt=h.attempt,
                                    time=timestamp(h.time), error=h.error)
                 for h in await self.store.history(order.id)]
        return order_pb2.GetSagaHistoryResponse(order_id=order.id,
                                                status=status_pb(order.status), steps=steps)


async def _gather(a: Awaitable[A], b: Awaitable[B]) -> tuple[A, B]:
    """Both at once; the first failure cancels the other (no orphan calls)."""
    ta, tb = asyncio.ensure_future(a), asyncio.ensure_future(b)
    try:
        return await ta, await tb
    except BaseException:
        ta.cancel()
        tb.cancel()
        raise
