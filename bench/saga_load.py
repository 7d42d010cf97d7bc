"""Order-saga load over gRPC: `python -m bench.saga_load [--seconds 5] [--conc 1,8,32]`.

Starts NATS (ops.natsd) and user, product, inventory, payment, cart, order on free ports
in a temp dir, creates a user, tops up stock, then drives CreateOrder at each concurrency
for a few seconds (after a short warm-up) and prints orders/s and latency percentiles.

`--profile DIR` runs the order process under cProfile (written to DIR/order.prof at exit).
`--all` also starts notification and shipping, so the events after confirm (order.confirmed
-> shipping, cart, notification; order.shipped -> order, notification) run too. Each level
also prints the CPU time per confirmed order of every process (nats included), taken over
the timed window plus a short settle time for the event side to catch up.
Traces are sampled at the bench's ratio (10 %, parent-based) unless `--env` sets
`OTEL_TRACES_SAMPLER`. Every process is started by this script and stopped by PID.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from pathlib import Path

from grpc import aio
from shop.inventory.v1 import inventory_pb2, inventory_pb2_grpc
from shop.order.v1 import order_pb2, order_pb2_grpc
from shop.user.v1 import user_pb2, user_pb2_grpc

from bench import mesh
from bench.procs import cpu_seconds
from bench.shop import sampling_env
from bench.stats import percentile
from ops.natsd import NatsServer
from ops.process import System, start_system
from services.common.spiffe import BACKOFFICE, GATEWAY

SERVICES = ("user", "product", "inventory", "payment", "cart", "order")
EVENT_SERVICES = ("notification", "shipping")
PRODUCT = "water-bottle"


class _Run:
    def __init__(self, stop_at: float, rate: float = 0.0) -> None:
        self.stop_at = stop_at
        # Open loop when rate > 0: orders start at this many per second in all (at most
        # `concurrency` in flight), so CPU per order compares at the same load.
        self.interval = 1.0 / rate if rate > 0 else 0.0
        self.next_at = time.monotonic()
        self.recording = False
        self.lat: list[float] = []
        self.confirmed = 0
        self.failed = 0


async def _worker(orders: order_pb2_grpc.OrderServiceAsyncStub,
                  req: order_pb2.CreateOrderRequest, md: tuple[tuple[str, str], ...],
                  run: _Run) -> None:
    while time.monotonic() < run.stop_at:
        if run.interval:
            slot = run.next_at = max(run.next_at + run.interval, time.monotonic() - 0.05)
            delay = slot - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
        t0 = time.perf_counter()
        try:
            r = await orders.CreateOrder(req, metadata=md, timeout=10)
            ok = r.order.status == order_pb2.ORDER_STATUS_CONFIRMED
        except aio.AioRpcError:
            ok = False
        if run.recording:
            run.lat.append(time.perf_counter() - t0)
            if ok:
                run.confirmed += 1
            else:
                run.failed += 1


async def _level(orders: order_pb2_grpc.OrderServiceAsyncStub,
                 req: order_pb2.CreateOrderRequest,
                 md: tuple[tuple[str, str], ...], conc: int, seconds: float,
                 warmup_s: float, pids: dict[str, int], settle_s: float,
                 rate: float) -> dict[str, object]:
    run = _Run(time.monotonic() + warmup_s + seconds, rate)
    tasks = [asyncio.create_task(_worker(orders, req, md, run)) for _ in range(conc)]
    await asyncio.sleep(warmup_s)
    run.recording = True
    cpu0 = cpu_seconds(pids)
    t_start = time.perf_counter()
    await asyncio.gather(*tasks)
    elapsed = time.perf_counter() - t_start
    # The event side (relays, consumers) lags the last answers a little: let it finish
    # so its CPU is charged to the orders that caused it.
    await asyncio.sleep(settle_s)
    cpu1 = cpu_seconds(pids)
    lat = run.lat
    res: dict[str, object] = {
        "concurrency": conc, "orders_per_s": round(run.confirmed / elapsed, 1),
        "confirmed": run.confirmed, "not_confirmed": run.failed,
        "p50_ms": round(percentile(lat, 50) * 1000, 1) if lat else 0.0,
        "p99_ms": round(percentile(lat, 99) * 1000, 1) if lat else 0.0}
    if run.confirmed:
        per = {n: round((cpu1[n] - cpu0[n]) * 1000 / run.confirmed, 2)
               for n in cpu1 if n in cpu0}
        res["cpu_ms_per_order"] = per
        res["cpu_ms_per_order_total"] = round(sum(per.values()), 2)
    return res


async def _drive(system: System, levels: list[int], seconds: float, warmup_s: float,
                 pids: dict[str, int], settle_s: float, rate: float) -> list[dict[str, object]]:
    # Users and orders as the gateway does them, the stock as the back office.
    who = {"order": GATEWAY, "user": GATEWAY, "inventory": BACKOFFICE}
    chans = {n: mesh.aio_channel(system.addr(n), n, who[n]) for n in who}
    orders = order_pb2_grpc.OrderServiceStub(chans["order"])
    users = user_pb2_grpc.UserServiceStub(chans["user"])
    stock = inventory_pb2_grpc.InventoryServiceStub(chans["inventory"])
    reply = await users.CreateUser(user_pb2.CreateUserRequest(
        email=f"{uuid.uuid4().hex[:10]}@example.com", name="Bench", password="correct horse"),
        timeout=10)
    user = reply.user.id
    await stock.SetStock(inventory_pb2.SetStockRequest(product_id=PRODUCT,
                                                       available=10_000_000), timeout=10)
    md = (("x-user-id", user),)
    req = order_pb2.CreateOrderRequest(
        items=[order_pb2.CreateOrderItem(product_id=PRODUCT, quantity=1)],
        card_token="tok_visa")
    results = []
    for conc in levels:
        res = await _level(orders, req, md, conc, seconds, warmup_s, pids, settle_s, rate)
        print(json.dumps(res), flush=True)
        results.append(res)
    for ch in chans.values():
        await ch.close()
    return results


def run_load(levels: list[int], *, seconds: float = 5.0, warmup_s: float = 1.0,
             settle_s: float = 1.0, rate: float = 0.0, all_services: bool = False,
             env: dict[str, str] | None = None, keep: bool = False,
             argv_for: Callable[[str], list[str]] | None = None) -> list[dict[str, object]]:
    """Start NATS and the services in a temp dir (with `env` added), drive each level,
    stop everything; the per-level results."""
    tmp = Path(tempfile.mkdtemp(prefix="saga-load-"))
    mesh.prepare_pki(tmp / "data")
    nats = NatsServer(tmp / "nats").start()
    system: System | None = None
    try:
        services = SERVICES + (EVENT_SERVICES if all_services else ())
        system = start_system(tmp / "data", nats.url, services=services,
                              env={"SHOP_LOG_LEVEL": "WARNING", "SHOP_GRACE_S": "2",
                                   **(env or {})},
                              ready_timeout=60.0, argv_for=argv_for)
        print(f"data: {tmp}", flush=True)
        pids = {"nats": nats.pid}
        for proc in system.all():
            if proc.pid is not None:
                pids[proc.name] = proc.pid
        return asyncio.run(_drive(system, levels, seconds, warmup_s, pids, settle_s, rate))
    finally:
        if system is not None:
            system.stop(timeout=20.0)
        nats.stop()
        if not keep:
            import shutil
            shutil.rmtree(tmp, ignore_errors=True)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seconds", type=float, default=5.0)
    ap.add_argument("--warmup", type=float, default=1.0)
    ap.add_argument("--conc", default="1,8,32")
    ap.add_argument("--profile", default="", help="dir for order.prof (cProfile)")
    ap.add_argument("--wrap", default="", help="run services as `python WRAP <name>`")
    ap.add_argument("--keep", action="store_true", help="keep the temp dir (logs)")
    ap.add_argument("--all", action="store_true",
                    help="also run notification and shipping (the events after confirm)")
    ap.add_argument("--rate", type=float, default=0.0,
                    help="open loop: start this many orders/s in all (0: closed loop)")
    ap.add_argument("--settle", type=float, default=1.0,
                    help="seconds after each level before reading CPU (events catch up)")
    ap.add_argument("--env", action="append", default=[], metavar="KEY=VALUE",
                    help="extra environment of every service (e.g. OTEL_* variables)")
    args = ap.parse_args(argv)
    levels = [int(x) for x in args.conc.split(",") if x]
    # Traces sampled as `make bench` samples them, unless --env says otherwise: the
    # CPU split then weighs tracing as users run it.
    env = {**sampling_env(), **dict(item.split("=", 1) for item in args.env)}

    def argv_for(name: str) -> list[str]:
        if name == "order" and args.profile:
            out = Path(args.profile) / "order.prof"
            out.parent.mkdir(parents=True, exist_ok=True)
            return [sys.executable, "-m", "cProfile", "-o", str(out), "-m", "services.order"]
        if args.wrap:  # a wrapper script taking the service name (e.g. span tracing)
            return [sys.executable, args.wrap, name]
        return [sys.executable, "-m", f"services.{name}"]

    run_load(levels, seconds=args.seconds, warmup_s=args.warmup, settle_s=args.settle,
             rate=args.rate, all_services=args.all, env=env, keep=args.keep,
             argv_for=argv_for)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
