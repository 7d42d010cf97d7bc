"""RPC latency histograms with their label children cached: on the hot path one dict
lookup and one observe() per call, no labels() walk (a lock and a tuple) each time."""

from __future__ import annotations

from collections.abc import Callable

from prometheus_client import Histogram

from services.common import metrics

__all__ = ["Observer", "RpcCalls", "client_calls", "server_calls"]

# observe(code name, seconds)
Observer = Callable[[str, float], None]


class RpcCalls:
    """Per method, an observer that keeps one histogram child per status code seen."""

    def __init__(self, histogram: Histogram) -> None:
        self._histogram = histogram
        self._observers: dict[str, Observer] = {}

    def observer(self, method: str) -> Observer:
        got = self._observers.get(method)
        if got is not None:
            return got
        histogram = self._histogram
        children: dict[str, Histogram] = {}

        def observe(code: str, seconds: float) -> None:
            child = children.get(code)
            if child is None:  # codes are a closed set: at most 17 per method
                child = children[code] = histogram.labels(method, code)
            child.observe(seconds)

        self._observers[method] = observe
        return observe


def server_calls() -> RpcCalls:
    return RpcCalls(metrics.current().rpc_server)


def client_calls() -> RpcCalls:
    return RpcCalls(metrics.current().rpc_client)
