"""Zero trust on real service processes: who may connect, who may call what.

Refused at the TLS handshake: no client certificate, plaintext, a certificate from
another CA, an expired one, a server that is not the service the client meant.
Refused by the call policy (PERMISSION_DENIED naming caller and RPC): a valid identity
outside the policy, `x-user-id` from anyone but the gateway, reflection for anyone but
the operator. The plaintext probe port answers health checks and nothing else.
"""

from __future__ import annotations

import datetime as dt
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from grpc import aio
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
from shop.inventory.v1 import inventory_pb2, inventory_pb2_grpc
from shop.order.v1 import order_pb2, order_pb2_grpc
from shop.payment.v1 import payment_pb2, payment_pb2_grpc
from shop.product.v1 import product_pb2, product_pb2_grpc

from ops.natsd import NatsServer
from ops.process import ServiceProcess, free_port
from services.common import tls
from services.common.pki import issue, load_authority, new_authority
from tests.fixtures_services import ServiceFactory
from tests.support import mesh
from tests.support.mesh import mtls_enabled, pki

pytestmark = pytest.mark.skipif(not mtls_enabled(), reason="needs SHOP_MTLS=on")

DENIED = grpc.StatusCode.PERMISSION_DENIED


@pytest.fixture(scope="module")
def shop(nats_server: NatsServer,
         tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServiceFactory]:
    factory = ServiceFactory(tmp_path_factory.mktemp("zero-trust"), nats_server.url)
    try:
        factory.start_many("user", "product", "inventory", "payment")
        factory.start("order")
        yield factory
    finally:
        factory.stop_all()


def _creds(ca: bytes, cert: bytes | None = None, key: bytes | None = None
           ) -> grpc.ChannelCredentials:
    return grpc.ssl_channel_credentials(root_certificates=ca, private_key=key,
                                        certificate_chain=cert)


def _ca() -> bytes:
    return (pki() / "ca.pem").read_bytes()


async def _stock(chan: aio.Channel) -> grpc.StatusCode:
    stub = inventory_pb2_grpc.InventoryServiceStub(chan)
    try:
        await stub.GetStock(inventory_pb2.GetStockRequest(product_id="chef-knife"), timeout=5)
    except aio.AioRpcError as err:
        return err.code()
    return grpc.StatusCode.OK


def _secure(addr: str, creds: grpc.ChannelCredentials, server: str) -> aio.Channel:
    return aio.secure_channel(addr, creds, options=tls.target_options(server))


async def test_the_gateway_with_its_certificate_gets_in(shop: ServiceFactory) -> None:
    async with mesh.as_identity("gateway", shop["inventory"].addr, "inventory") as chan:
        assert await _stock(chan) == grpc.StatusCode.OK


async def test_plaintext_and_no_client_certificate_are_refused(shop: ServiceFactory) -> None:
    addr = shop["inventory"].addr
    async with aio.insecure_channel(addr) as chan:
        assert await _stock(chan) == grpc.StatusCode.UNAVAILABLE
    async with _secure(addr, _creds(_ca()), "inventory") as chan:
        assert await _stock(chan) == grpc.StatusCode.UNAVAILABLE


async def test_a_certificate_from_another_ca_is_refused(shop: ServiceFactory) -> None:
    rogue = new_authority("someone else's CA")
    cert, key = issue(rogue, "gateway")  # the right name, the wrong signer
    async with _secure(shop["inventory"].addr, _creds(_ca(), cert, key), "inventory") as chan:
        assert await _stock(chan) == grpc.StatusCode.UNAVAILABLE


async def test_an_expired_certificate_is_refused(shop: ServiceFactory) -> None:
    ca = load_authority(pki())
    assert ca is not None
    start = dt.datetime.now(dt.UTC) - dt.timedelta(hours=3)
    cert, key = issue(ca, "gateway", not_before=start, lifetime_s=3600)
    async with _secure(shop["inventory"].addr, _creds(_ca(), cert, key), "inventory") as chan:
        assert await _stock(chan) == grpc.StatusCode.UNAVAILABLE


async def test_the_client_checks_the_server_is_the_service_it_meant(
        shop: ServiceFactory) -> None:
    """Dialling payment's port while meaning inventory: payment's certificate does not
    name inventory, so the client refuses it, whatever CA signed it."""
    async with mesh.as_identity("gateway", shop["payment"].addr, "inventory") as chan:
        assert await _stock(chan) == grpc.StatusCode.UNAVAILABLE


async def test_a_valid_identity_outside_the_policy_is_denied(shop: ServiceFactory) -> None:
    async with mesh.as_identity("cart", shop["payment"].addr, "payment") as chan:
        stub = payment_pb2_grpc.PaymentServiceStub(chan)
        with pytest.raises(aio.AioRpcError) as info:
            await stub.Refund(payment_pb2.RefundRequest(order_id="o-1"), timeout=5)
    assert info.value.code() is DENIED
    details = info.value.details() or ""
    assert "'cart'" in details and "shop.payment.v1.PaymentService/Refund" in details


async def test_the_policy_allows_what_it_names(shop: ServiceFactory) -> None:
    """order may reserve stock; the gateway, though trusted for other calls, may not."""
    order_id = uuid.uuid4().hex
    req = inventory_pb2.ReserveStockRequest(
        order_id=order_id, items=[inventory_pb2.StockItem(product_id="chef-knife", quantity=1)])
    addr = shop["inventory"].addr
    async with mesh.as_identity("gateway", addr, "inventory") as chan:
        with pytest.raises(aio.AioRpcError) as info:
            await inventory_pb2_grpc.InventoryServiceStub(chan).ReserveStock(req, timeout=5)
        assert info.value.code() is DENIED
    async with mesh.as_identity("order", addr, "inventory") as chan:
        stub = inventory_pb2_grpc.InventoryServiceStub(chan)
        await stub.ReserveStock(req, timeout=5)
        await stub.ReleaseStock(inventory_pb2.ReleaseStockRequest(order_id=order_id),
                                timeout=5)


async def test_x_user_id_is_honoured_only_from_the_gateway(shop: ServiceFactory) -> None:
    addr = shop["order"].addr
    req = order_pb2.GetSagaHistoryRequest(order_id="no-such-order")
    md = (("x-user-id", "someone"),)
    # The operator may read saga histories, but may not speak for a user.
    async with mesh.as_identity("operator", addr, "order") as chan:
        stub = order_pb2_grpc.OrderServiceStub(chan)
        with pytest.raises(aio.AioRpcError) as plain:
            await stub.GetSagaHistory(req, timeout=5)
        assert plain.value.code() is grpc.StatusCode.NOT_FOUND  # allowed, no such order
        with pytest.raises(aio.AioRpcError) as forged:
            await stub.GetSagaHistory(req, metadata=md, timeout=5)
    assert forged.value.code() is DENIED
    assert "x-user-id" in (forged.value.details() or "")
    assert "'operator'" in (forged.value.details() or "")
    # A service allowed to call a user-facing RPC cannot act for a user either.
    async with mesh.as_identity("order", shop["user"].addr, "user") as chan:
        from shop.user.v1 import user_pb2, user_pb2_grpc

        with pytest.raises(aio.AioRpcError) as info:
            await user_pb2_grpc.UserServiceStub(chan).GetUser(
                user_pb2.GetUserRequest(id="someone"), metadata=md, timeout=5)
    assert info.value.code() is DENIED
    # The gateway may.
    async with mesh.as_identity("gateway", addr, "order") as chan:
        with pytest.raises(aio.AioRpcError) as ok:
            await order_pb2_grpc.OrderServiceStub(chan).GetOrder(
                order_pb2.GetOrderRequest(id="no-such-order"), metadata=md, timeout=5)
    assert ok.value.code() is grpc.StatusCode.NOT_FOUND


async def _reflect(chan: aio.Channel) -> list[str]:
    stub = reflection_pb2_grpc.ServerReflectionStub(chan)
    names: list[str] = []
    call = stub.ServerReflectionInfo(iter([reflection_pb2.ServerReflectionRequest(
        list_services="")]), timeout=5)
    async for reply in call:
        names += [s.name for s in reply.list_services_response.service]
    return names


async def test_reflection_for_the_operator_only(shop: ServiceFactory) -> None:
    addr = shop["product"].addr
    async with mesh.as_identity("operator", addr, "product") as chan:
        assert "shop.product.v1.ProductService" in await _reflect(chan)
    async with mesh.as_identity("gateway", addr, "product") as chan:
        # The refusal comes on the call's headers, before any request is read; a request
        # written meanwhile can fail on the closed stream, which the client reports as its
        # own INTERNAL error in place of the server's status. So nothing is written here.
        call = reflection_pb2_grpc.ServerReflectionStub(chan).ServerReflectionInfo(timeout=5)
        assert await call.code() is DENIED
        assert "reflection" in (await call.details() or "")


async def test_health_for_every_identity(shop: ServiceFactory) -> None:
    for who in ("operator", "gateway", "cart", "backoffice"):
        async with mesh.as_identity(who, shop["product"].addr, "product") as chan:
            reply = await health_pb2_grpc.HealthStub(chan).Check(
                health_pb2.HealthCheckRequest(), timeout=5)
            assert reply.status == health_pb2.HealthCheckResponse.SERVING, who


async def test_catalogue_changes_need_the_backoffice(shop: ServiceFactory) -> None:
    req = product_pb2.CreateProductRequest(product=product_pb2.Product(
        name="Forged", price_cents=1, currency="USD"))
    for who in ("gateway", "operator", "order"):
        async with mesh.as_identity(who, shop["product"].addr, "product") as chan:
            with pytest.raises(aio.AioRpcError) as info:
                await product_pb2_grpc.ProductServiceStub(chan).CreateProduct(req, timeout=5)
            assert info.value.code() is DENIED, who


def test_the_probe_port_answers_health_and_nothing_else(
        services: ServiceFactory, tmp_path: Path) -> None:
    probe = free_port()
    proc = services.start("product", PRODUCT_PROBE_PORT=str(probe))
    with grpc.insecure_channel(f"127.0.0.1:{probe}") as chan:
        reply = health_pb2_grpc.HealthStub(chan).Check(health_pb2.HealthCheckRequest(),
                                                        timeout=5)
        assert reply.status == health_pb2.HealthCheckResponse.SERVING
        with pytest.raises(grpc.RpcError) as info:
            product_pb2_grpc.ProductServiceStub(chan).GetProduct(
                product_pb2.GetProductRequest(id="mug"), timeout=5)
        assert info.value.code() is DENIED
        assert "'anonymous'" in (info.value.details() or "")
    # The service port itself still wants a certificate.
    with grpc.insecure_channel(proc.addr) as chan, pytest.raises(grpc.RpcError) as refused:
        health_pb2_grpc.HealthStub(chan).Check(health_pb2.HealthCheckRequest(), timeout=5)
    assert refused.value.code() is grpc.StatusCode.UNAVAILABLE


def test_mtls_off_is_plaintext_and_says_so(data_dir: Path, nats_server: NatsServer) -> None:
    proc = ServiceProcess("product", data_dir=data_dir, nats_url=nats_server.url,
                          env={"SHOP_MTLS": "off", "SHOP_REGISTRY": "off"})
    proc.start()
    try:
        deadline = time.monotonic() + 60
        while proc.ready_info() is None:
            assert proc.running, proc.log_tail()
            assert time.monotonic() < deadline, proc.log_tail()
            time.sleep(0.05)
        with grpc.insecure_channel(proc.addr) as chan:
            reply = product_pb2_grpc.ProductServiceStub(chan).GetProduct(
                product_pb2.GetProductRequest(id="chef-knife"), timeout=5)
        assert reply.product.id == "chef-knife"
        assert "PLAINTEXT" in proc.log_path.read_text()
    finally:
        proc.terminate()
