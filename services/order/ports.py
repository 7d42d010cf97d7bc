"""The saga's downstream steps over gRPC, with every answer sorted into the three outcomes
the state machine knows: succeeded (returns), refused (StepRefused), unknown (StepUnknown)."""

from __future__ import annotations

from typing import Any, Protocol

import grpc
from grpc import aio
from shop.inventory.v1 import inventory_pb2, inventory_pb2_grpc
from shop.payment.v1 import payment_pb2, payment_pb2_grpc

from services.common.clients import Downstream
from services.common.errors import DomainError
from services.order.domain import REASON_INVALID_CARD, Order

# Codes that leave the step's outcome unknown: retried, since every step is idempotent.
_UNKNOWN = frozenset({grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED,
                      grpc.StatusCode.CANCELLED, grpc.StatusCode.UNKNOWN,
                      grpc.StatusCode.INTERNAL, grpc.StatusCode.RESOURCE_EXHAUSTED,
                      grpc.StatusCode.ABORTED})


_RELEASE_REFUSALS = frozenset({grpc.StatusCode.FAILED_PRECONDITION})


class StepRefused(Exception):
    """The downstream said no; the message says why."""


class StepUnknown(Exception):
    """No usable answer: the step may or may not have taken effect."""


class StepDeferred(StepUnknown):
    """Not attempted: the downstream's circuit breaker is open."""


class SagaPorts(Protocol):
    async def reserve(self, order: Order) -> None: ...
    async def charge(self, order: Order, card_token: str) -> None: ...
    async def commit(self, order_id: str) -> None: ...
    async def refund(self, order_id: str, reason: str) -> None: ...
    async def release(self, order_id: str) -> None: ...


class GrpcPorts:
    def __init__(self, inventory: Downstream[inventory_pb2_grpc.InventoryServiceStub],
                 payment: Downstream[payment_pb2_grpc.PaymentServiceStub], *,
                 step_timeout_s: float = 3.0) -> None:
        self.inventory = inventory
        self.payment = payment
        self.timeout = step_timeout_s

    async def _call(self, ds: Downstream[Any], method: str, request: Any,
                    refusals: frozenset[grpc.StatusCode] | None = None) -> Any:
        """`refusals`: the codes that count as a refusal (default: every code not in
        _UNKNOWN); any other answer leaves the outcome unknown, so the step is retried."""
        try:
            return await ds.call(method, request, idempotent=True, timeout=self.timeout)
        except aio.AioRpcError as err:
            detail = err.details() or err.code().name
            if err.code() in _UNKNOWN or (refusals is not None and err.code() not in refusals):
                raise StepUnknown(f"{ds.service}.{method}: {err.code().name}: {detail}") from None
            if err.code() is grpc.StatusCode.INVALID_ARGUMENT and method == "Charge":
                raise StepRefused(f"{REASON_INVALID_CARD}: {detail}") from None
            raise StepRefused(detail) from None
        except DomainError as err:  # breaker open, no time left
            if ds.breaker_state == "open":
                raise StepDeferred(f"{ds.service}.{method}: {err}") from None
            raise StepUnknown(f"{ds.service}.{method}: {err}") from None

    async def reserve(self, order: Order) -> None:
        await self._call(self.inventory, "ReserveStock", inventory_pb2.ReserveStockRequest(
            order_id=order.id,
            items=[inventory_pb2.StockItem(product_id=ln.product_id, quantity=ln.quantity)
                   for ln in order.items]))

    async def charge(self, order: Order, card_token: str) -> None:
        await self._call(self.payment, "Charge", payment_pb2.ChargeRequest(
            order_id=order.id, user_id=order.user_id, amount_cents=order.total_cents,
            currency=order.currency, card_token=card_token))

    async def commit(self, order_id: str) -> None:
        await self._call(self.inventory, "CommitStock",
                         inventory_pb2.CommitStockRequest(order_id=order_id))

    async def refund(self, order_id: str, reason: str) -> None:
        await self._call(self.payment, "Refund",
                         payment_pb2.RefundRequest(order_id=order_id, reason=reason))

    async def release(self, order_id: str) -> None:
        # The saga reads a refused release as "already committed" and skips it, so only
        # inventory's FAILED_PRECONDITION may say that; a misrouted or half-deployed
        # inventory (UNIMPLEMENTED, PERMISSION_DENIED, ...) is retried instead.
        await self._call(self.inventory, "ReleaseStock",
                         inventory_pb2.ReleaseStockRequest(order_id=order_id),
                         refusals=_RELEASE_REFUSALS)
