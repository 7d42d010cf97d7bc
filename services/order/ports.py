"""The saga's downstream steps over gRPC, with every answer sorted into the outcomes the
state machine knows: succeeded (returns), refused (StepRefused, with its kind), unknown
(StepUnknown), unwell (StepUnwell), not attempted (StepDeferred).

REFUSALS is the one place that says which codes really mean "refused", per step; every
other code leaves the outcome unknown (the call may have taken effect), so the step is
retried, and a step that was ever unknown is compensated even if it is refused later.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Protocol, TypeVar

import grpc
from google.protobuf.message import Message
from grpc import aio
from shop.inventory.v1 import inventory_pb2, inventory_pb2_grpc
from shop.payment.v1 import payment_pb2, payment_pb2_grpc
from shop.shipping.v1 import shipping_pb2, shipping_pb2_grpc

from services.common.breakers import FAILURE_CODES
from services.common.clients import Downstream, Rpc, rpc_name
from services.common.errors import DomainError
from services.order.domain import Order, Refusal, Step

StubT = TypeVar("StubT")
ReqT = TypeVar("ReqT", bound=Message)
RespT = TypeVar("RespT", bound=Message)

_FP = grpc.StatusCode.FAILED_PRECONDITION

# Per saga step with a downstream call (confirm has none: inventory commits the stock
# on order.confirmed): the codes that are a business "no", and what kind of no.
REFUSALS: Mapping[Step, Mapping[grpc.StatusCode, Refusal]] = {
    Step.RESERVE: {_FP: Refusal.OUT_OF_STOCK},  # ReserveStock: short, or released already
    Step.CHARGE: {_FP: Refusal.DECLINED, grpc.StatusCode.INVALID_ARGUMENT: Refusal.INVALID_CARD},
    Step.REFUND: {},  # payment always accepts a refund (a tombstone if nothing was charged)
    Step.RELEASE: {_FP: Refusal.COMMITTED},  # ReleaseStock: sold, restock it instead
    Step.CANCEL_SHIPMENT: {_FP: Refusal.ALREADY_SHIPPED},
    Step.RESTOCK: {_FP: Refusal.NOT_COMMITTED},  # RestockStock
}


class StepRefused(Exception):
    """The downstream said no; the message says why, `kind` what kind of no."""

    def __init__(self, message: str, kind: Refusal = Refusal.NONE) -> None:
        super().__init__(message)
        self.kind = kind


class StepUnknown(Exception):
    """No usable answer: the step may or may not have taken effect."""


class StepUnwell(StepUnknown):
    """The downstream is unwell (one of the breaker's failure codes): may have taken
    effect, and a retry later is likely to get through."""


class StepDeferred(StepUnknown):
    """Not attempted: the downstream's circuit breaker is open (or no time was left)."""


class SagaPorts(Protocol):
    async def reserve(self, order: Order) -> None: ...
    async def charge(self, order: Order, card_token: str) -> None: ...
    async def refund(self, order_id: str, reason: str) -> None: ...
    async def release(self, order_id: str) -> None: ...
    async def cancel_shipment(self, order_id: str) -> None: ...
    async def restock(self, order_id: str) -> None: ...


def classify(step: Step, err: aio.AioRpcError, where: str) -> Exception:
    """The step exception for an error answer of `step`'s call."""
    code = err.code()
    detail = err.details() or code.name
    kind = REFUSALS[step].get(code)
    if kind is not None:
        return StepRefused(detail, kind)
    text = f"{where}: {code.name}: {detail}"
    if code in FAILURE_CODES:
        return StepUnwell(text)
    return StepUnknown(text)


class GrpcPorts:
    def __init__(self, inventory: Downstream[inventory_pb2_grpc.InventoryServiceAsyncStub],
                 payment: Downstream[payment_pb2_grpc.PaymentServiceAsyncStub],
                 shipping: Downstream[shipping_pb2_grpc.ShippingServiceAsyncStub], *,
                 step_timeout_s: float = 3.0) -> None:
        self.inventory = inventory
        self.payment = payment
        self.shipping = shipping
        self.timeout = step_timeout_s

    async def _call(self, step: Step, ds: Downstream[StubT], rpc: Rpc[StubT, ReqT, RespT],
                    request: ReqT) -> RespT:
        try:
            return await ds.call(rpc, request, idempotent=True, timeout=self.timeout)
        except aio.AioRpcError as err:
            raise classify(step, err, f"{ds.service}.{rpc_name(rpc)}") from None
        except DomainError as err:  # breaker open, no time left: never sent
            raise StepDeferred(f"{ds.service}.{rpc_name(rpc)}: {err}") from None

    async def reserve(self, order: Order) -> None:
        items = [inventory_pb2.StockItem(product_id=ln.product_id, quantity=ln.quantity)
                 for ln in order.items]
        await self._call(Step.RESERVE, self.inventory, lambda s: s.ReserveStock,
                         inventory_pb2.ReserveStockRequest(order_id=order.id, items=items))

    async def charge(self, order: Order, card_token: str) -> None:
        await self._call(Step.CHARGE, self.payment, lambda s: s.Charge, payment_pb2.ChargeRequest(
            order_id=order.id, user_id=order.user_id, amount_cents=order.total_cents,
            currency=order.currency, card_token=card_token))

    async def refund(self, order_id: str, reason: str) -> None:
        await self._call(Step.REFUND, self.payment, lambda s: s.Refund,
                         payment_pb2.RefundRequest(order_id=order_id, reason=reason))

    async def release(self, order_id: str) -> None:
        await self._call(Step.RELEASE, self.inventory, lambda s: s.ReleaseStock,
                         inventory_pb2.ReleaseStockRequest(order_id=order_id))

    async def cancel_shipment(self, order_id: str) -> None:
        await self._call(Step.CANCEL_SHIPMENT, self.shipping, lambda s: s.CancelShipment,
                         shipping_pb2.CancelShipmentRequest(order_id=order_id))

    async def restock(self, order_id: str) -> None:
        await self._call(Step.RESTOCK, self.inventory, lambda s: s.RestockStock,
                         inventory_pb2.RestockStockRequest(order_id=order_id))
