"""Scale-out through the registry: two payment and two notification instances of the real
services (same SQLite file per service, each registered in the NATS KV registry), the
others single; a scaled service gets no `<SERVICE>_ADDR`, so its callers find it by
discovery (ops.process.start_system(discovery=True), as `make run` does).

- Orders (CreateOrder on the order service) while payment-2 is killed -9 mid-run: both
  instances took Charge calls before the kill, no order fails (the saga retries on the
  live instance), each order ends as its card says, the invariants hold, and payment-2
  leaves the registry within its TTL.
- N new users (N user.created events) -> exactly N welcome notifications, whichever
  notification instance took each event (one shared durable consumer), and each instance
  alone consumes (the other killed).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from grpc import aio
from shop.inventory.v1 import inventory_pb2, inventory_pb2_grpc
from shop.notification.v1 import notification_pb2, notification_pb2_grpc
from shop.order.v1 import order_pb2, order_pb2_grpc

from ops.natsd import NatsServer
from ops.process import ServiceProcess, System, start_system
from services.common.registry import list_instances
from tests.fixtures_services import START_TIMEOUT_S, TEST_ENV
from tests.support import mesh
from tests.support.invariants import check_invariants
from tests.support.mesh import nats_auth, transport
from tests.support.users import create_users

TTL_S = 2.0
ENV = {
    **TEST_ENV,  # DEBUG: every RPC is logged, which is how calls are counted per instance
    "SHOP_REGISTRY_TTL_S": str(TTL_S),
    "SHOP_BREAKER_RESET_S": "1",
    "SHOP_SAGA_STEP_TIMEOUT_S": "1",
    "SHOP_SAGA_CHARGE_ATTEMPTS": "20",
    "SHOP_SAGA_COMPENSATION_ATTEMPTS": "20",
}
PRODUCT = "french-press"
STOCK = {PRODUCT: 100_000}
ORDERS = 60
IN_FLIGHT = 6
RUN_S = 4.0
KILL_AT_S = 1.6
PAID = frozenset({"CONFIRMED", "SHIPPED"})
CANCELLED = frozenset({"CANCELLED"})


@pytest.fixture(scope="module")
def scaled(nats_server: NatsServer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[System]:
    root = tmp_path_factory.mktemp("scaled")
    sysm = start_system(root, nats_server.url, env=ENV, scale={"payment": 2, "notification": 2},
                        discovery=True, ready_timeout=START_TIMEOUT_S)
    try:
        asyncio.run(_wait_registered(nats_server.url, sysm))
        yield sysm
    finally:
        sysm.stop()


async def _wait_registered(url: str, sysm: System, timeout: float = 15.0) -> None:  # noqa: ASYNC109
    want = {p.instance for p in sysm.processes}
    deadline = time.monotonic() + timeout
    have: set[str] = set()
    while time.monotonic() < deadline:
        have = {i.instance_id for i in await list_instances(url, auth=nats_auth())}
        if want <= have:
            return
        await asyncio.sleep(0.1)
    raise AssertionError(f"not registered: {sorted(want - have)}")


def _rpc_count(proc: ServiceProcess, method: str) -> int:
    """How many `method` calls the instance answered, from its log (one "rpc" line each)."""
    count = 0
    with contextlib.suppress(OSError):
        for line in proc.log_path.read_text(errors="replace").splitlines():
            with contextlib.suppress(ValueError, AttributeError):
                entry = json.loads(line)
                if entry.get("msg") == "rpc" and str(entry.get("method", "")).endswith(method):
                    count += 1
    return count


async def _gone_after(url: str, instance: str, since: float) -> float:
    """Seconds from `since` until `instance` is no longer in the registry."""
    while True:
        live = {i.instance_id for i in await list_instances(url, timeout=2.0, auth=nats_auth())}
        if instance not in live:
            return time.monotonic() - since
        await asyncio.sleep(0.1)


async def test_kill_one_payment_instance_under_order_load(scaled: System) -> None:
    order_env = scaled["order"].env()
    assert "PAYMENT_ADDR" not in order_env  # found through the registry, not pinned
    assert order_env.get("INVENTORY_ADDR")  # an unscaled one stays pinned
    pay1, pay2 = scaled.instances("payment")
    url = scaled.nats_url

    users = await create_users(scaled.addr("user"), 4, "order")
    async with mesh.channel(scaled.addr("inventory")) as chan:
        await inventory_pb2_grpc.InventoryServiceStub(chan).SetStock(
            inventory_pb2.SetStockRequest(product_id=PRODUCT, available=STOCK[PRODUCT]),
            timeout=5)

    cards = {i: "tok_chargeDeclined" if i % 4 == 3 else "tok_visa" for i in range(ORDERS)}
    ids: dict[int, str] = {}
    failures: list[str] = []
    charges_before_kill: list[int] = []
    sem = asyncio.Semaphore(IN_FLIGHT)
    t0 = time.monotonic()

    async def place(stub: order_pb2_grpc.OrderServiceAsyncStub, i: int) -> None:
        await asyncio.sleep(max(0.0, t0 + i * RUN_S / ORDERS - time.monotonic()))
        req = order_pb2.CreateOrderRequest(
            items=[order_pb2.CreateOrderItem(product_id=PRODUCT, quantity=1)],
            card_token=cards[i], idempotency_key=f"scale-{i}")
        async with sem:
            try:
                reply = await stub.CreateOrder(req, metadata=[("x-user-id", users[i % 4])],
                                               timeout=10)
                ids[i] = reply.order.id
            except aio.AioRpcError as err:
                md = dict(err.trailing_metadata() or ())
                refused = err.code() in (grpc.StatusCode.FAILED_PRECONDITION,
                                         grpc.StatusCode.INVALID_ARGUMENT)
                if refused and md.get("x-order-id") and cards[i] == "tok_chargeDeclined":
                    ids[i] = str(md["x-order-id"])
                else:
                    failures.append(f"order {i}: {err.code().name}: {err.details()}")

    async def kill() -> tuple[float, float]:
        await asyncio.sleep(max(0.0, t0 + KILL_AT_S - time.monotonic()))
        charges_before_kill.extend([_rpc_count(pay1, "/Charge"), _rpc_count(pay2, "/Charge")])
        pay2.kill()
        killed = time.monotonic()
        return killed, await _gone_after(url, pay2.instance, killed)

    async with mesh.channel(scaled.addr("order")) as chan:
        stub = order_pb2_grpc.OrderServiceStub(chan)
        killer = asyncio.create_task(kill())
        await asyncio.gather(*(place(stub, i) for i in range(ORDERS)))
        _, gone_s = await asyncio.wait_for(killer, TTL_S * 3)

    print(f"\ncharges before the kill {charges_before_kill}; payment-2 left the registry "
          f"{gone_s:.2f} s after the kill (TTL {TTL_S:g} s)")
    assert charges_before_kill[0] > 0 and charges_before_kill[1] > 0, (
        f"both instances take calls before the kill: {charges_before_kill}")
    assert failures == [], failures
    # The key of the killed instance expires with the bucket's TTL (plus the server's
    # expiry sweep); the live one stays.
    assert gone_s <= TTL_S + 1.0, f"payment-2 still listed {gone_s:.1f} s after the kill"
    live = {i.instance_id for i in await list_instances(url, auth=nats_auth())}
    assert pay1.instance in live and pay2.instance not in live

    report = await check_invariants(scaled, stock_set=STOCK, created=set(ids.values()),
                                    timeout_s=30)
    report.assert_ok()
    status = {o.id: o.status for o in report.orders}
    wrong = [(i, cards[i], status.get(oid, "missing"))
             for i, oid in ids.items()
             if status.get(oid) not in (CANCELLED if cards[i] == "tok_chargeDeclined" else PAID)]
    assert len(ids) == ORDERS and wrong == [], wrong
    assert _rpc_count(pay1, "/Charge") > charges_before_kill[0]  # it took over


async def _welcomes(addr: str, users: list[str], timeout_s: float = 30.0) -> dict[str, int]:
    """User -> WELCOME notifications, once every user has one (or at the deadline)."""
    welcome = notification_pb2.NOTIFICATION_KIND_WELCOME
    async with mesh.channel(addr) as chan:
        stub = notification_pb2_grpc.NotificationServiceStub(chan)

        async def count(user: str) -> int:
            reply = await stub.ListNotifications(
                notification_pb2.ListNotificationsRequest(user_id=user, page_size=50),
                metadata=[("x-user-id", user)], timeout=5)
            return sum(1 for note in reply.notifications if note.kind == welcome)

        deadline = time.monotonic() + timeout_s
        while True:
            counts = dict(zip(users, await asyncio.gather(*(count(u) for u in users)),
                              strict=True))
            if all(counts.values()) or time.monotonic() > deadline:
                return counts
            await asyncio.sleep(0.2)


async def test_two_notification_instances_one_welcome_per_user(scaled: System) -> None:
    """Both instances consume the one shared durable consumer: with both up, N sign-ups give
    N welcomes; then each instance alone (the other killed, so only it can take the
    events) gives the welcomes of its own batch of sign-ups, none twice; the full check
    then sees exactly one WELCOME per user, however the events were spread."""
    note1, note2 = scaled.instances("notification")
    n = 30
    users = await create_users(scaled.addr("user"), n, "welcome")  # n user.created events
    counts = await _welcomes(note1.addr, users)
    assert sorted(set(counts.values())) == [1], {u: c for u, c in counts.items() if c != 1}

    for alone, other in ((note1, note2), (note2, note1)):
        other.kill()
        batch = await create_users(scaled.addr("user"), 10, f"welcome-{alone.instance}")
        counts = await _welcomes(alone.addr, batch)
        assert all(counts.values()), f"{alone.instance} alone did not consume: {counts}"
        await asyncio.to_thread(other.restart, START_TIMEOUT_S, graceful=False)
        users += batch

    report = await check_invariants(scaled, stock_set=STOCK, timeout_s=60)
    report.assert_ok()
    welcomed = Counter(n.user_id for n in report.records.notifications if n.kind == "WELCOME")
    assert all(welcomed[u] == 1 for u in users), {u: welcomed[u] for u in users}
    for proc in scaled.instances("notification"):
        assert proc.running, proc.log_tail()


def test_scaled_service_is_not_pinned(tmp_path: Path) -> None:
    """What start_system hands out: no `<SERVICE>_ADDR` for a scaled service with discovery."""
    from ops.process import _addr_env

    procs = [ServiceProcess(n, data_dir=tmp_path, nats_url="nats://x", instance=f"{n}-{i}")
             for n, i in (("payment", 1), ("payment", 2), ("order", 1))]
    env = _addr_env(procs, {"payment": 2}, discovery=True)
    assert "PAYMENT_ADDR" not in env and env["ORDER_ADDR"] == procs[2].addr
    assert _addr_env(procs, {"payment": 2})["PAYMENT_ADDR"] == procs[0].addr


async def test_sharing_downstream_uses_the_base_endpoints() -> None:
    """The gateway's dashboard parts: the base's endpoints (and discovery picks), a breaker
    of their own, nothing of their own to close."""
    import pybreaker
    from shop.payment.v1 import payment_pb2_grpc

    from services.common.clients import Downstream

    base = Downstream("payment", payment_pb2_grpc.PaymentServiceStub, address="127.0.0.1:1",
                      transport=transport())
    own = pybreaker.CircuitBreaker(name="dashboard.payment")
    twin = Downstream.sharing(base, breaker=own)
    try:
        assert twin.shares is base and twin.address == base.address == "127.0.0.1:1"
        assert twin.breaker is own and base.breaker is not own
        assert twin._endpoint() is base._endpoint()
        channel = base._endpoint().open_channel()
        await twin.close()
        assert base._endpoint().channel is channel  # still the base's, still open
        assert Downstream("payment", payment_pb2_grpc.PaymentServiceStub,
                          breaker=own, transport=transport()).breaker is own
    finally:
        await base.close()
