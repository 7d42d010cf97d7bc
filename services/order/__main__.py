"""The order service: composition root. `python -m services.order`.

Settings beyond the shared ones (all optional):
  SHOP_ORDER_SAGA_BUDGET_S          how long CreateOrder waits for the saga (5 s)
  SHOP_SAGA_COMPENSATION_ATTEMPTS   attempts of a compensation (release, refund, cancel_shipment,
                                    restock) with an unknown answer before REQUIRES_ATTENTION
                                    (8; waits for an unwell downstream do not count)
  SHOP_SAGA_RESERVE_ATTEMPTS        reserve attempts without an answer before cancelling (8)
  SHOP_SAGA_CHARGE_ATTEMPTS         charge attempts without an answer before refund+cancel (8)
  SHOP_SAGA_STEP_TIMEOUT_S          deadline of each saga step call (3 s)
  SHOP_SAGA_LEASE_S                 saga lease; another instance takes over after it (10 s)
"""

from __future__ import annotations

from shop.cart.v1 import cart_pb2_grpc
from shop.inventory.v1 import inventory_pb2_grpc
from shop.order.v1 import order_pb2, order_pb2_grpc
from shop.payment.v1 import payment_pb2_grpc
from shop.product.v1 import product_pb2_grpc
from shop.shipping.v1 import shipping_pb2_grpc
from shop.user.v1 import user_pb2_grpc

from services.common.eventing import ConsumerSpec, EventWorkers
from services.common.schema import service_migrations
from services.common.server import App, run_service
from services.common.settings import Settings
from services.common.storage import open_storage
from services.common.wiring import Wiring
from services.order import handlers
from services.order.domain import Limits
from services.order.ports import GrpcPorts
from services.order.saga import SagaConfig, SagaRunner
from services.order.servicer import OrderServicer, Peers
from services.order.store import OrderStore

SERVICE = order_pb2.DESCRIPTOR.services_by_name["OrderService"]


async def build(settings: Settings, wiring: Wiring) -> App:
    db = await open_storage(settings, service_migrations("order"), durable=True)
    store = OrderStore(db)
    own = settings.order
    step_timeout = own.step_timeout_s
    inventory = wiring.downstream("inventory", inventory_pb2_grpc.InventoryServiceStub,
                                  cap_s=step_timeout)
    payment = wiring.downstream("payment", payment_pb2_grpc.PaymentServiceStub,
                                cap_s=step_timeout)
    shipping = wiring.downstream("shipping", shipping_pb2_grpc.ShippingServiceStub,
                                 cap_s=step_timeout)
    peers = Peers(
        users=wiring.downstream("user", user_pb2_grpc.UserServiceStub, cap_s=2.0),
        products=wiring.downstream("product", product_pb2_grpc.ProductServiceStub, cap_s=2.0),
        carts=wiring.downstream("cart", cart_pb2_grpc.CartServiceStub, cap_s=2.0),
    )
    limits = Limits(
        reserve=own.reserve_attempts,
        charge=own.charge_attempts,
        compensation=own.compensation_attempts,
    )
    # The instance id is the lease owner: a restarted instance resumes its own sagas at once.
    config = SagaConfig(owner=settings.instance_id, limits=limits, lease_s=own.saga_lease_s)
    ports = GrpcPorts(inventory, payment, shipping, step_timeout_s=step_timeout)
    runner = SagaRunner(store, ports, config)
    servicer = OrderServicer(store, runner, peers, budget_s=own.saga_budget_s)
    payment_routes, shipment_routes = handlers.routes(runner.poke, runner.driving)
    events = EventWorkers(
        settings,
        db,
        relay=True,
        consumers=[
            ConsumerSpec(handlers.PAYMENTS_DURABLE, payment_routes),
            ConsumerSpec(handlers.SHIPMENTS_DURABLE, shipment_routes),
        ],
    )

    async def stop() -> None:
        await runner.close()
        for ds in (inventory, payment, shipping, peers.users, peers.products, peers.carts):
            await ds.close()
        await events.close()
        await db.close()

    return App.serving(
        SERVICE,
        order_pb2_grpc.add_OrderServiceServicer_to_server,
        servicer,
        tasks=[*events.tasks, runner.resume_loop, runner.heartbeat_loop],
        closers=[stop],
    )


def main() -> None:
    run_service("order", build)


if __name__ == "__main__":
    main()
