"""A dead downstream: the cart's breaker for the product service opens after 5 failures,
answers UNAVAILABLE fast while open without a single call reaching the product side, and
closes again once a probe after the reset timeout succeeds. Under an order load: the payment
service dies behind the order service's back for a few seconds; the order service's breaker
opens, the sagas wait it out, and afterwards the full invariant check holds.

The breakers' health watch (which half-opens a breaker as soon as the instance reports
SERVING again, see tests/faults/test_recovery.py) is off here (SHOP_BREAKER_PROBE_S=0):
these tests count every call that reaches the product side, health checks included.

The product service sits behind tests/support/faultproxy.py, which counts the gRPC calls
(HTTP/2 HEADERS frames) that reach it in any mode.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import statistics
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import grpc
import pytest
from shop.cart.v1 import cart_pb2, cart_pb2_grpc

from ops.process import ServiceProcess
from services.common.registry import list_instances
from tests.fixtures_services import FAULT_ENV, START_TIMEOUT_S, ServiceFactory
from tests.support import mesh
from tests.support.faultproxy import FaultProxy, Mode
from tests.support.invariants import check_invariants
from tests.support.load import OrderClient, paced, set_stock
from tests.support.mesh import nats_auth
from tests.support.users import create_users

FAIL_MAX = 5
RESET_S = 2.0
PRODUCT = "headphones"
FAST_S = 0.1
SLOW_S = 1.0  # half the calls' deadline
CART_CAP_S = 5.0  # the cart's default cap on its product calls (services/cart/__main__.py)


@pytest.fixture
def cart_behind_proxy(services: ServiceFactory) -> Iterator[tuple[ServiceProcess, FaultProxy]]:
    product = services.start("product")
    # TLS on both legs: the proxy still counts the HTTP/2 requests it passes on.
    with FaultProxy(product.addr, tls=mesh.proxy_tls("product", "cart")) as proxy:
        cart = services.start("cart", PRODUCT_ADDR=proxy.addr,
                              SHOP_BREAKER_FAIL_MAX=str(FAIL_MAX),
                              SHOP_BREAKER_RESET_S=str(RESET_S),
                              SHOP_BREAKER_PROBE_S="0")
        yield cart, proxy


def _opened(proc: ServiceProcess) -> int:
    """How often a breaker of `proc` went open, from its log (one state-change line each)."""
    count = 0
    with contextlib.suppress(OSError):
        for line in proc.log_path.read_text(errors="replace").splitlines():
            with contextlib.suppress(ValueError, AttributeError):
                if json.loads(line).get("to") == "open":
                    count += 1
    return count


def _add(stub: cart_pb2_grpc.CartServiceAsyncStub, user: str,
         timeout: float) -> tuple[grpc.StatusCode, float, str]:
    t0 = time.monotonic()
    try:
        stub.AddItem(cart_pb2.AddItemRequest(product_id=PRODUCT, quantity=1),
                     metadata=[("x-user-id", user)], timeout=timeout)
        return grpc.StatusCode.OK, time.monotonic() - t0, ""
    except grpc.RpcError as err:
        return err.code(), time.monotonic() - t0, err.details() or ""


def _assert_open(stub: cart_pb2_grpc.CartServiceAsyncStub, proxy: FaultProxy, user: str) -> None:
    """While open: fast UNAVAILABLE, and nothing reaches the product side."""
    before = proxy.stats()
    took: list[float] = []
    for _ in range(20):
        code, t, details = _add(stub, user, timeout=2.0)
        assert code == grpc.StatusCode.UNAVAILABLE, (code, details)
        took.append(t)
    # Fast: the typical answer within FAST_S, none anywhere near the 2 s deadline a call
    # that reached the hung side would wait for (a single slow one is the shared CPU's).
    ms = [f"{t * 1000:.0f}" for t in took]
    assert statistics.median(took) < FAST_S, f"open breaker answered in {ms} ms"
    assert max(took) < SLOW_S, f"open breaker answered in {ms} ms"
    after = proxy.stats()
    # No call reaches the product side. (gRPC itself may reconnect the dropped channel in
    # the background meanwhile: a connection with no request on it.)
    assert after.requests_seen == before.requests_seen, "calls reached the product side"


def _recover(stub: cart_pb2_grpc.CartServiceAsyncStub, proxy: FaultProxy, user: str,
             opened_at: float) -> None:
    """Proxy back to pass; calls keep failing fast, untouched, until the reset timeout has
    passed; then one probe goes through and closes it."""
    proxy.set_mode(Mode.PASS)
    before = proxy.stats().requests_forwarded
    deadline = opened_at + RESET_S + 10.0
    while True:
        code, _, details = _add(stub, user, timeout=3.0)
        if code == grpc.StatusCode.OK:
            break
        assert code == grpc.StatusCode.UNAVAILABLE and "circuit open" in details, details
        assert proxy.stats().requests_forwarded == before, "a call passed the open breaker"
        assert time.monotonic() < deadline, "the breaker never let a probe through"
        time.sleep(0.05)
    # opened_at is when the client saw it open, a moment after it opened: a margin.
    assert time.monotonic() - opened_at >= RESET_S - 0.5, "closed before the reset timeout"
    assert proxy.stats().requests_forwarded == before + 1  # exactly the one probe
    for _ in range(5):  # closed again: calls flow normally
        code, _, details = _add(stub, user, timeout=3.0)
        assert code == grpc.StatusCode.OK, (code, details)


def test_dropped_downstream_opens_then_recovers(
        cart_behind_proxy: tuple[ServiceProcess, FaultProxy]) -> None:
    cart, proxy = cart_behind_proxy
    user = "breaker-drop"
    with mesh.sync_channel(cart.addr) as chan:
        stub = cart_pb2_grpc.CartServiceStub(chan)
        assert _add(stub, user, timeout=5.0)[0] == grpc.StatusCode.OK
        proxy.set_mode(Mode.DROP)
        # Every failing AddItem costs the breaker at least one failure (idempotent calls
        # are retried on UNAVAILABLE), so it is open after at most FAIL_MAX of them.
        failing = 0
        opened_at = 0.0
        for _ in range(FAIL_MAX + 3):
            code, _, details = _add(stub, user, timeout=3.0)
            assert code == grpc.StatusCode.UNAVAILABLE, (code, details)
            if "circuit open" in details:
                opened_at = time.monotonic()
                break
            failing += 1
        assert opened_at, "the breaker never opened"
        assert 1 <= failing <= FAIL_MAX
        _assert_open(stub, proxy, user)
        _recover(stub, proxy, user, opened_at)


def test_hung_downstream_opens_after_five_timeouts_then_recovers(
        cart_behind_proxy: tuple[ServiceProcess, FaultProxy]) -> None:
    """Blackhole: each call times out inside the cart (DEADLINE_EXCEEDED is not retried),
    so exactly FAIL_MAX calls reach the hung side before the breaker opens. The callers'
    deadlines outlast the cart's own cap, so the failure the breaker sees is the cart's."""
    cart, proxy = cart_behind_proxy
    user = "breaker-hang"
    with mesh.sync_channel(cart.addr) as chan:
        stub = cart_pb2_grpc.CartServiceStub(chan)
        assert _add(stub, user, timeout=5.0)[0] == grpc.StatusCode.OK
        proxy.set_mode(Mode.BLACKHOLE)
        seen0 = proxy.stats().requests_seen
        with ThreadPoolExecutor(FAIL_MAX) as pool:
            results = list(pool.map(lambda _: _add(stub, user, CART_CAP_S + 3.0),
                                    range(FAIL_MAX)))
        opened_at = time.monotonic()
        for code, took, details in results:
            assert code == grpc.StatusCode.UNAVAILABLE, (code, details)
            assert CART_CAP_S - 0.5 < took < CART_CAP_S + 2.0
        assert proxy.stats().requests_seen - seen0 == FAIL_MAX
        _assert_open(stub, proxy, user)
        _recover(stub, proxy, user, opened_at)


def test_hung_downstream_under_caller_deadlines_opens(
        cart_behind_proxy: tuple[ServiceProcess, FaultProxy]) -> None:
    """The usual case: callers (the gateway, the order service) set deadlines shorter than
    the cart's own cap, so their deadline, not the cart's, ends each hung call."""
    cart, proxy = cart_behind_proxy
    user = "breaker-caller-deadline"
    with mesh.sync_channel(cart.addr) as chan:
        stub = cart_pb2_grpc.CartServiceStub(chan)
        assert _add(stub, user, timeout=5.0)[0] == grpc.StatusCode.OK
        proxy.set_mode(Mode.BLACKHOLE)
        seen0 = proxy.stats().requests_seen
        opened_before = _opened(cart)
        for _ in range(FAIL_MAX):
            code, _, details = _add(stub, user, timeout=0.5)
            assert code != grpc.StatusCode.OK, details
        # The cart records each failure when its own call ends: wait for the open state.
        deadline = time.monotonic() + 5.0
        while _opened(cart) == opened_before:
            assert time.monotonic() < deadline, f"the breaker did not open\n{cart.log_tail()}"
            time.sleep(0.02)
        reached = proxy.stats().requests_seen - seen0
        code, took, details = _add(stub, user, timeout=0.5)
        # Refused at once (the hung side would hold it for the whole 0.5 s deadline; the
        # margin is for a CPU shared with other suites), and it never reached that side.
        assert code == grpc.StatusCode.UNAVAILABLE and took < 0.3, (
            f"after {FAIL_MAX} timeouts ({reached} calls reached the hung side) the next call "
            f"answered {code.name} in {took * 1000:.0f} ms: {details}")
        assert proxy.stats().requests_seen - seen0 == reached


ORDERS = 60
RUN_S = 10.0
DEAD_AT_S = 2.0
DEAD_S = 4.0
ORDER_STOCK = {"chef-knife": 10_000}


async def _payment_breaker_states(nats_url: str) -> set[str]:
    """The states the order service reports for its payment breaker(s) in the registry."""
    states: set[str] = set()
    for inst in await list_instances(nats_url, timeout=2.0, auth=nats_auth()):
        if inst.service == "order":
            states |= {v for k, v in inst.breakers.items() if "payment" in k}
    return states


async def test_dead_payment_under_order_load_opens_breaker_then_orders_end_consistent(
        services: ServiceFactory) -> None:
    services.start_many("user", "product", "inventory", "payment", "shipping", "notification",
                        "cart", timeout=START_TIMEOUT_S, **FAULT_ENV)
    with FaultProxy(services["payment"].addr, tls=mesh.proxy_tls("payment", "order")) as proxy:
        services.start("order", PAYMENT_ADDR=proxy.addr, SHOP_BREAKER_FAIL_MAX=str(FAIL_MAX),
                       timeout=START_TIMEOUT_S, **FAULT_ENV)
        users = await create_users(services["user"].addr, 6, "dead-payment")
        await set_stock(services["inventory"].addr, ORDER_STOCK)
        seen: set[str] = set()

        async def outage() -> None:
            await asyncio.sleep(DEAD_AT_S)
            await asyncio.to_thread(proxy.set_mode, Mode.DROP)
            back_at = time.monotonic() + DEAD_S
            while time.monotonic() < back_at:
                seen.update(await _payment_breaker_states(services.nats_url))
                await asyncio.sleep(0.1)
            await asyncio.to_thread(proxy.set_mode, Mode.PASS)

        async with OrderClient(services["order"].addr, timeout_s=5, retry_for_s=30) as client:
            fault = asyncio.create_task(outage())
            answers = await paced(ORDERS, RUN_S, 8, lambda i: client.create(
                users[i % 6], {"chef-knife": 1}, key=f"dead-{i}",
                card="tok_chargeDeclined" if i % 5 == 4 else "tok_visa"))
            await fault
        assert client.unexpected == [], client.unexpected
        assert "open" in seen, f"the order service's payment breaker never opened: {seen}"

        report = await check_invariants(services, stock_set=ORDER_STOCK,
                                        created=client.created, expect_orders=ORDERS,
                                        timeout_s=60)
        report.assert_ok()
        # Orders placed after the payment service came back went through.
        last = {o.id: o.status for o in report.orders}
        late = [a for i, a in enumerate(answers)
                if i * RUN_S / ORDERS > DEAD_AT_S + DEAD_S + 2.0 and i % 5 != 4]
        assert late and all(last[a.order_id] in ("CONFIRMED", "SHIPPED") for a in late), late
        print(f"\nbreaker states seen {sorted(seen)}; {report.summary()}")
