"""Run the raw HTTP baselines: each starts its own processes on free ports, loads the
front with the same client and connection count as the matching shop scenario, and
stops every process it started."""

from __future__ import annotations

import json
from pathlib import Path

from bench.load import http_load_cpu
from bench.procs import Child, python_module, wait_http, wait_port
from bench.stats import Measured
from ops.process import free_port

__all__ = ["ORDER_BODY", "RawSaga", "raw_fanout", "raw_hop", "raw_saga"]

ORDER_BODY = json.dumps({"items": [{"productId": "espresso-machine", "quantity": 1}],
                         "cardToken": "tok_visa"})
_AUTH = {"Authorization": "Bearer raw-baseline-ignores-this"}


def _tiny(kind: str, log_dir: Path, *extra: str) -> tuple[Child, str]:
    port = free_port()
    child = Child(f"raw-{kind}-{port}", python_module("bench.raw.tiny", kind, "--port", str(port),
                                                      *extra), log_dir=log_dir)
    return child, f"127.0.0.1:{port}"


def _front(targets: list[str], log_dir: Path) -> tuple[Child, str]:
    port = free_port()
    child = Child(f"raw-front-{port}", python_module(
        "bench.raw.front", "--port", str(port), "--targets", ",".join(targets)), log_dir=log_dir)
    return child, f"http://127.0.0.1:{port}"


def _run(children: list[Child], addrs: list[str], front_targets: list[str], log_dir: Path,
         path: str, **load: object) -> Measured:
    front, base = _front(front_targets, log_dir)
    children.append(front)
    try:
        for child, addr in zip(children, addrs, strict=False):
            wait_port(int(addr.rsplit(":", 1)[1]), child=child)
        wait_http(f"{base}/healthz", child=front)
        pids = {c.name: c.pid for c in children}
        return http_load_cpu(pids, f"{base}{path}", **load)  # type: ignore[arg-type]
    finally:
        for child in reversed(children):
            child.stop()


def raw_hop(log_dir: Path, *, seconds: float, warmup_s: float) -> Measured:
    server, addr = _tiny("fixed", log_dir)
    return _run([server], [addr], [addr], log_dir, "/api/products/espresso-machine",
                headers=_AUTH, connections=64, seconds=seconds, warmup_s=warmup_s)


def raw_fanout(log_dir: Path, *, seconds: float, warmup_s: float) -> Measured:
    tiny = [_tiny("fixed", log_dir) for _ in range(3)]
    addrs = [a for _, a in tiny]
    return _run([c for c, _ in tiny], addrs, addrs, log_dir, "/api/dashboard",
                headers=_AUTH, connections=64, seconds=seconds, warmup_s=warmup_s)


def raw_saga(log_dir: Path, data_dir: Path, *, seconds: float, warmup_s: float) -> Measured:
    with RawSaga(log_dir, data_dir) as saga:
        return saga.load(16, seconds=seconds, warmup_s=warmup_s)


class RawSaga:
    """The raw saga's processes (front -> order -> reserve, charge over SQLite), kept up
    while several loads run against it (the load curve)."""

    def __init__(self, log_dir: Path, data_dir: Path) -> None:
        self.log_dir = log_dir
        self.data_dir = data_dir
        self.children: list[Child] = []
        self.base = ""

    def __enter__(self) -> RawSaga:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        try:
            reserve, reserve_addr = _tiny("reserve", self.log_dir, "--db",
                                          str(self.data_dir / "raw-stock.db"))
            self.children.append(reserve)
            charge, charge_addr = _tiny("charge", self.log_dir, "--db",
                                        str(self.data_dir / "raw-pay.db"))
            self.children.append(charge)
            order, order_addr = _tiny("order", self.log_dir, "--db",
                                      str(self.data_dir / "raw-order.db"),
                                      "--reserve", reserve_addr, "--charge", charge_addr)
            self.children.append(order)
            front, self.base = _front([order_addr], self.log_dir)
            self.children.append(front)
            for child, addr in zip(self.children, [reserve_addr, charge_addr, order_addr],
                                   strict=False):
                wait_port(int(addr.rsplit(":", 1)[1]), child=child)
            wait_http(f"{self.base}/healthz", child=front)
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *_exc: object) -> None:
        self.stop()

    def stop(self) -> None:
        for child in reversed(self.children):
            child.stop()
        self.children.clear()

    def load(self, connections: int, *, seconds: float, warmup_s: float) -> Measured:
        pids = {c.name: c.pid for c in self.children}
        return http_load_cpu(pids, f"{self.base}/api/orders", method="POST", body=ORDER_BODY,
                             headers=_AUTH, connections=connections, seconds=seconds,
                             warmup_s=warmup_s, ok_status=201)
