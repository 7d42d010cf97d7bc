"""RPC observers count by method and code into the histogram, one child per code."""

from __future__ import annotations

from services.common.metrics import ShopMetrics
from services.common.rpcmetrics import RpcCalls


def test_observer_counts_by_method_and_code() -> None:
    m = ShopMetrics("order")
    calls = RpcCalls(m.rpc_server)
    observe = calls.observer("/shop.order.v1.OrderService/GetOrder")
    assert calls.observer("/shop.order.v1.OrderService/GetOrder") is observe
    observe("OK", 0.002)
    observe("OK", 0.004)
    observe("NOT_FOUND", 0.001)
    get = m.registry.get_sample_value
    labels = {"method": "/shop.order.v1.OrderService/GetOrder"}
    assert get("shop_rpc_server_duration_seconds_count", {**labels, "code": "OK"}) == 2
    assert get("shop_rpc_server_duration_seconds_count", {**labels, "code": "NOT_FOUND"}) == 1
    total = get("shop_rpc_server_duration_seconds_sum", {**labels, "code": "OK"})
    assert total is not None and abs(total - 0.006) < 1e-9


def test_each_process_gets_its_own_registry() -> None:
    a, b = ShopMetrics("a"), ShopMetrics("b")
    RpcCalls(a.rpc_client).observer("x.Y")("OK", 0.1)
    assert b.registry.get_sample_value("shop_rpc_client_duration_seconds_count",
                                       {"method": "x.Y", "code": "OK"}) is None
