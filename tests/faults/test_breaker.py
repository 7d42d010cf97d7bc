"""A dead downstream: the cart's breaker for the product service opens after 5 failures,
answers UNAVAILABLE fast while open without a single call reaching the product side, and
closes again once a probe after the reset timeout succeeds.

The product service sits behind tests/support/faultproxy.py, which counts the gRPC calls
(HTTP/2 HEADERS frames) that reach it in any mode.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import grpc
import pytest
from shop.cart.v1 import cart_pb2, cart_pb2_grpc

from ops.process import ServiceProcess
from tests.fixtures_services import ServiceFactory
from tests.support import mesh
from tests.support.faultproxy import FaultProxy, Mode

FAIL_MAX = 5
RESET_S = 2.0
PRODUCT = "headphones"
FAST_S = 0.1
CART_CAP_S = 5.0  # the cart's default cap on its product calls (services/cart/__main__.py)


@pytest.fixture
def cart_behind_proxy(services: ServiceFactory) -> Iterator[tuple[ServiceProcess, FaultProxy]]:
    product = services.start("product")
    # TLS on both legs: the proxy still counts the HTTP/2 requests it passes on.
    with FaultProxy(product.addr, tls=mesh.proxy_tls("product", "cart")) as proxy:
        cart = services.start("cart", PRODUCT_ADDR=proxy.addr,
                              SHOP_BREAKER_FAIL_MAX=str(FAIL_MAX),
                              SHOP_BREAKER_RESET_S=str(RESET_S))
        yield cart, proxy


def _add(stub: cart_pb2_grpc.CartServiceStub, user: str,
         timeout: float) -> tuple[grpc.StatusCode, float, str]:
    t0 = time.monotonic()
    try:
        stub.AddItem(cart_pb2.AddItemRequest(product_id=PRODUCT, quantity=1),
                     metadata=[("x-user-id", user)], timeout=timeout)
        return grpc.StatusCode.OK, time.monotonic() - t0, ""
    except grpc.RpcError as err:
        return err.code(), time.monotonic() - t0, err.details() or ""


def _assert_open(stub: cart_pb2_grpc.CartServiceStub, proxy: FaultProxy, user: str) -> None:
    """While open: fast UNAVAILABLE, and nothing reaches the product side."""
    before = proxy.stats()
    for _ in range(20):
        code, took, details = _add(stub, user, timeout=2.0)
        assert code == grpc.StatusCode.UNAVAILABLE, (code, details)
        assert took < FAST_S, f"open breaker answered in {took * 1000:.0f} ms"
    after = proxy.stats()
    assert after.requests_seen == before.requests_seen, "calls reached the product side"
    assert after.connections == before.connections


def _recover(stub: cart_pb2_grpc.CartServiceStub, proxy: FaultProxy, user: str,
             opened_at: float) -> None:
    """Proxy back to pass; after the reset time one probe goes through and closes it."""
    proxy.set_mode(Mode.PASS)
    time.sleep(max(0.0, opened_at + RESET_S + 0.2 - time.monotonic()))
    before = proxy.stats().requests_forwarded
    code, _, details = _add(stub, user, timeout=3.0)
    assert code == grpc.StatusCode.OK, (code, details)
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
        for _ in range(FAIL_MAX):
            code, _, details = _add(stub, user, timeout=0.5)
            assert code != grpc.StatusCode.OK, details
            time.sleep(0.05)  # the cart records the failure
        reached = proxy.stats().requests_seen - seen0
        code, took, details = _add(stub, user, timeout=0.5)
        assert code == grpc.StatusCode.UNAVAILABLE and took < FAST_S, (
            f"after {FAIL_MAX} timeouts ({reached} calls reached the hung side) the next call "
            f"answered {code.name} in {took * 1000:.0f} ms: {details}")
        assert proxy.stats().requests_seen - seen0 == reached
