"""The saga orchestrator with fake downstream ports and a real SQLite store in a temp dir."""

from __future__ import annotations

import asyncio
import dataclasses
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import grpc
import pybreaker
import pytest
from grpc import aio
from shop.events.v1 import envelope_pb2

from services.common import breakers
from services.common.clients import Downstream
from services.common.db import Database
from services.common.errors import FailedPrecondition, NotFound
from services.common.schema import service_migrations
from services.common.storage import Row, Tx
from services.order import domain as d
from services.order import handlers
from services.order import store as order_store
from services.order.ports import GrpcPorts, StepRefused, StepUnknown, StepUnwell
from services.order.saga import SagaConfig, SagaRunner
from services.order.store import HistoryEntry, OrderStore
from tests.support.mesh import transport

# The skip check reads only the payload.
NO_ENVELOPE = envelope_pb2.Envelope()
FAST = d.Limits(reserve=3, charge=3, compensation=4, backoff_base_s=0.005, backoff_max_s=0.02)


class FakePorts:
    """Scripted downstreams: each method pops its next result (None = success)."""

    def __init__(self, **script: list[Exception | None]) -> None:
        self.script = script
        self.calls: list[str] = []
        self.charge_gate: asyncio.Event | None = None
        self.charging = asyncio.Event()

    async def _step(self, name: str) -> None:
        self.calls.append(name)
        queue = self.script.get(name, [])
        result = queue.pop(0) if queue else None
        if result is not None:
            raise result

    async def reserve(self, order: d.Order) -> None:
        await self._step("reserve")

    async def charge(self, order: d.Order, card_token: str) -> None:
        assert card_token == "tok_visa"
        self.charging.set()
        if self.charge_gate is not None:
            await self.charge_gate.wait()
        await self._step("charge")

    async def refund(self, order_id: str, reason: str) -> None:
        await self._step("refund")

    async def release(self, order_id: str) -> None:
        await self._step("release")

    async def cancel_shipment(self, order_id: str) -> None:
        await self._step("cancel_shipment")

    async def restock(self, order_id: str) -> None:
        await self._step("restock")


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[OrderStore]:
    db = await Database.open(tmp_path / "order.db", migrations=[service_migrations("order")],
                             durable=False)
    try:
        yield OrderStore(db)
    finally:
        await db.close()


async def new_order(store: OrderStore, runner: SagaRunner) -> tuple[d.Order, d.SagaState]:
    now = time.time()
    order = d.Order(id=f"o{now!r}", user_id="u1", items=(d.Line("mat", 2, 500),),
                    total_cents=1000, currency="USD", create_time=now, update_time=now)
    state = d.SagaState(order.id, card_token="tok_visa")
    order, created = await store.create(order, state, owner=runner.config.owner, lease_s=5)
    assert created
    return order, state


async def run_saga(store: OrderStore, ports: FakePorts) -> tuple[d.Order, list[str]]:
    runner = SagaRunner(store, ports, SagaConfig(owner="order-1", limits=FAST))
    order, state = await new_order(store, runner)
    result = await asyncio.wait_for(runner.start(order, state), 5)
    assert result is not None
    stored = await store.get(order.id)
    assert stored is not None and stored.status is result.status
    history = [f"{h.step}:{h.outcome}" for h in await store.history(order.id)]
    return stored, history


async def rows(store: OrderStore, sql: str, *args: object) -> list[Row]:
    async def run(tx: Tx) -> list[Row]:
        return await tx.fetch(sql, args)

    return await store.storage.read(run)


async def execute(store: OrderStore, sql: str, *args: object) -> None:
    async def run(tx: Tx) -> None:
        await tx.run(sql, args)

    await store.storage.write(run)


async def outbox_subjects(store: OrderStore) -> list[str]:
    return [r[0] for r in await rows(store, "SELECT subject FROM outbox ORDER BY id")]


async def test_happy_path_confirms_and_publishes(store: OrderStore) -> None:
    ports = FakePorts()
    order, history = await run_saga(store, ports)
    assert order.status is d.OrderStatus.CONFIRMED
    # Confirming calls nothing: inventory commits the stock on order.confirmed.
    assert ports.calls == ["reserve", "charge"]
    assert history == ["reserve_stock:succeeded", "charge:succeeded", "confirm:succeeded"]
    assert await outbox_subjects(store) == ["order.created", "order.confirmed"]


async def test_out_of_stock_cancels_without_charge(store: OrderStore) -> None:
    ports = FakePorts(reserve=[StepRefused("mat: 1 available")])
    order, _ = await run_saga(store, ports)
    assert order.status is d.OrderStatus.CANCELLED
    assert order.cancel_reason == "out of stock: mat: 1 available"
    assert ports.calls == ["reserve"]
    assert await outbox_subjects(store) == ["order.created", "order.cancelled"]


async def test_declined_releases_stock(store: OrderStore) -> None:
    ports = FakePorts(charge=[StepRefused("card declined")])
    order, history = await run_saga(store, ports)
    assert (order.status, order.cancel_reason) == (d.OrderStatus.CANCELLED, "payment declined")
    assert ports.calls == ["reserve", "charge", "release"]
    assert history[-1] == "release_stock:succeeded"


async def test_unknown_charge_is_retried_until_it_answers(store: OrderStore) -> None:
    ports = FakePorts(charge=[StepUnknown("DEADLINE_EXCEEDED"), StepUnknown("UNAVAILABLE")])
    order, history = await run_saga(store, ports)
    assert order.status is d.OrderStatus.CONFIRMED
    assert history == ["reserve_stock:succeeded", "charge:unknown", "charge:unknown",
                       "charge:succeeded", "confirm:succeeded"]
    attempts = [h.attempt for h in await store.history(order.id) if h.step == "charge"]
    assert attempts == [1, 2, 3]


async def test_unknown_charge_past_limit_refunds_then_releases(store: OrderStore) -> None:
    ports = FakePorts(charge=[StepUnknown("UNAVAILABLE")] * FAST.charge)
    order, _ = await run_saga(store, ports)
    assert (order.status, order.cancel_reason) == (d.OrderStatus.CANCELLED, "payment unavailable")
    assert ports.calls[-2:] == ["refund", "release"]


async def test_compensation_retries_to_limit_then_requires_attention(store: OrderStore) -> None:
    ports = FakePorts(charge=[StepRefused("declined")],
                      release=[StepUnknown("UNAVAILABLE")] * FAST.compensation)
    order, history = await run_saga(store, ports)
    assert order.status is d.OrderStatus.REQUIRES_ATTENTION
    assert ports.calls.count("release") == FAST.compensation
    assert history.count("release_stock:unknown") == FAST.compensation
    assert (await outbox_subjects(store))[-1] == "order.requires_attention"


async def test_payment_event_reconciles_a_hung_charge(store: OrderStore) -> None:
    """The charge call hangs; payment.completed moves the saga on; the late answer is
    then a no-op and the order confirms exactly once."""
    ports = FakePorts()
    ports.charge_gate = asyncio.Event()
    runner = SagaRunner(store, ports, SagaConfig(owner="order-1", limits=FAST))
    order, state = await new_order(store, runner)
    task = runner.start(order, state)
    await asyncio.wait_for(ports.charging.wait(), 5)
    async def reconcile(tx: Tx) -> bool:
        return await order_store.reconcile_charge(tx, order.id, charged=True, error="",
                                                  by="payment.completed")

    moved = await store.storage.write(reconcile)
    assert moved
    runner.poke(order.id)
    ports.charge_gate.set()
    result = await asyncio.wait_for(task, 5)
    assert result is not None and result.status is d.OrderStatus.CONFIRMED
    assert (await outbox_subjects(store)).count("order.confirmed") == 1
    steps = [(h.step, h.outcome) for h in await store.history(order.id)]
    assert ("charge", "reconciled") in steps


async def test_second_instance_cannot_take_a_live_lease(store: OrderStore) -> None:
    ports = FakePorts()
    ports.charge_gate = asyncio.Event()
    one = SagaRunner(store, ports, SagaConfig(owner="order-1", limits=FAST))
    two = SagaRunner(store, FakePorts(), SagaConfig(owner="order-2", limits=FAST))
    order, state = await new_order(store, one)
    task = one.start(order, state)
    assert await two.store.acquire(order.id, "order-2", 5) is None
    assert await two.ensure(order.id) is None  # the driver gives up at once
    ports.charge_gate.set()
    result = await asyncio.wait_for(task, 5)
    assert result is not None and result.status is d.OrderStatus.CONFIRMED


async def test_resume_picks_up_an_abandoned_saga(store: OrderStore) -> None:
    """A saga leased by a dead owner (lease run out) is resumed by the scan."""
    dead = SagaRunner(store, FakePorts(), SagaConfig(owner="order-dead", limits=FAST))
    order, _ = await new_order(store, dead)
    await execute(store, "UPDATE sagas SET lease_until = 0 WHERE order_id = ?", order.id)
    ports = FakePorts()
    live = SagaRunner(store, ports, SagaConfig(owner="order-2", limits=FAST,
                                                resume_every_s=0.05))
    scan = asyncio.create_task(live.resume_loop())
    try:
        for _ in range(200):
            got = await store.get(order.id)
            if got is not None and got.status is d.OrderStatus.CONFIRMED:
                break
            await asyncio.sleep(0.02)
    finally:
        scan.cancel()
        await live.close()
    got = await store.get(order.id)
    assert got is not None and got.status is d.OrderStatus.CONFIRMED
    assert ports.calls == ["reserve", "charge"]


class _ScriptedStub:
    """A gRPC stub stand-in: each method answers from a shared script (codes to fail with,
    in order; then success) and counts the calls that reached it."""

    def __init__(self, failures: dict[str, list[grpc.StatusCode]],
                 calls: dict[str, int]) -> None:
        self._failures = failures
        self._calls = calls

    def __getattr__(self, method: str) -> Any:
        async def call(request: Any, timeout: float | None = None,  # noqa: ASYNC109
                       metadata: Any = None) -> Any:
            self._calls[method] = self._calls.get(method, 0) + 1
            queue = self._failures.get(method, [])
            if queue:
                code = queue.pop(0)
                raise aio.AioRpcError(code, aio.Metadata(), aio.Metadata(), details=code.name)
            return None

        return call


def _scripted(failures: dict[str, list[grpc.StatusCode]],
              calls: dict[str, int]) -> Callable[[aio.Channel], Any]:
    """A stub factory for Downstream: the scripted stand-in stands for any service."""
    return lambda channel: _ScriptedStub(failures, calls)


def _no_shipping() -> Downstream[Any]:
    return Downstream("shipping", _scripted({}, {}), address="127.0.0.1:9",
                      breaker=pybreaker.CircuitBreaker(fail_max=50, name="ship"),
                      transport=transport())


async def test_open_breaker_does_not_use_up_compensation_attempts(store: OrderStore) -> None:
    """A compensation hitting an open circuit breaker is not attempted at all (it fails
    fast until the breaker's reset timeout): those fast failures must not use up its
    attempts. With the default settings (8 attempts with back-off capped at 5 s: about
    11 s, against a 30 s reset timeout) every compensation started during a downstream
    blip ended in REQUIRES_ATTENTION although the downstream was back long before."""
    calls: dict[str, int] = {}
    inv_fail = {"ReleaseStock": [grpc.StatusCode.UNAVAILABLE] * 2}
    pay_fail = {"Charge": [grpc.StatusCode.FAILED_PRECONDITION]}  # declined: release next
    opts: dict[str, Any] = {"exclude": [breakers._not_a_failure],
                            "throw_new_error_on_trip": False}
    inventory = Downstream("inventory", _scripted(inv_fail, calls),
                           address="127.0.0.1:9", breaker=pybreaker.CircuitBreaker(
                               fail_max=2, reset_timeout=0.5, name="inv", **opts),
                           transport=transport())
    payment = Downstream("payment", _scripted(pay_fail, calls),
                         address="127.0.0.1:9", breaker=pybreaker.CircuitBreaker(
                             fail_max=2, reset_timeout=0.5, name="pay", **opts),
                         transport=transport())
    ports = GrpcPorts(inventory, payment, _no_shipping(), step_timeout_s=1.0)
    runner = SagaRunner(store, ports, SagaConfig(owner="order-1", limits=FAST))
    try:
        order, state = await new_order(store, runner)
        result = await asyncio.wait_for(runner.start(order, state), 5)
    finally:
        await inventory.close()
        await payment.close()
    assert result is not None
    assert (result.status, result.cancel_reason) == (d.OrderStatus.CANCELLED,
                                                     "payment declined")
    assert calls["ReleaseStock"] == 3  # two failures (the breaker opened), then the probe


async def test_release_refused_for_another_reason_is_retried_not_skipped(
        store: OrderStore) -> None:
    """Only inventory's FAILED_PRECONDITION ("already committed") may skip a release; an
    inventory that answers UNIMPLEMENTED (misrouted, half-deployed) must not leave the
    stock reserved for good."""
    calls: dict[str, int] = {}
    inv_fail = {"ReleaseStock": [grpc.StatusCode.UNIMPLEMENTED, grpc.StatusCode.NOT_FOUND]}
    pay_fail = {"Charge": [grpc.StatusCode.FAILED_PRECONDITION]}  # declined: release next
    inventory = Downstream("inventory", _scripted(inv_fail, calls),
                           address="127.0.0.1:9",
                           breaker=pybreaker.CircuitBreaker(fail_max=50, name="inv2"),
                           transport=transport())
    payment = Downstream("payment", _scripted(pay_fail, calls),
                         address="127.0.0.1:9",
                         breaker=pybreaker.CircuitBreaker(fail_max=50, name="pay2"),
                         transport=transport())
    runner = SagaRunner(store, GrpcPorts(inventory, payment, _no_shipping(),
                                         step_timeout_s=1.0),
                        SagaConfig(owner="order-1", limits=FAST))
    try:
        order, state = await new_order(store, runner)
        result = await asyncio.wait_for(runner.start(order, state), 5)
    finally:
        await inventory.close()
        await payment.close()
    assert result is not None and result.status is d.OrderStatus.CANCELLED
    assert calls["ReleaseStock"] == 3  # two odd answers retried, then released
    steps = [(h.step, h.outcome) for h in await store.history(order.id)]
    assert ("release_stock", "skipped") not in steps


async def _confirmed(store: OrderStore) -> tuple[d.Order, d.SagaState, SagaRunner]:
    runner = SagaRunner(store, FakePorts(), SagaConfig(owner="order-1", limits=FAST))
    order, state = await new_order(store, runner)
    done = await asyncio.wait_for(runner.start(order, state), 5)
    assert done is not None and done.status is d.OrderStatus.CONFIRMED
    got = await store.saga(order.id)
    assert got is not None
    return done, got[0], runner


def _shipped_handler() -> Any:
    _, shipments = handlers.routes(lambda order_id: None)
    return shipments[0].handler


def _shipped(order_id: str) -> Any:
    from shop.shipping.v1 import shipping_pb2
    return shipping_pb2.OrderShipped(shipment=shipping_pb2.Shipment(
        order_id=order_id, tracking_number="TRK1"))


async def test_cancel_loses_to_a_shipment_recorded_after_its_read(store: OrderStore) -> None:
    """CancelOrder reads CONFIRMED, order.shipped lands, then the cancel's saga write: the
    write must fail (the servicer re-reads and refuses: already shipped) rather than go on
    to refund a SHIPPED order and flip it to CANCELLED."""
    order, state, _ = await _confirmed(store)
    await store.storage.write(lambda tx: _shipped_handler()(tx, None, _shipped(order.id)))
    got = await store.get(order.id)
    assert got is not None and got.status is d.OrderStatus.SHIPPED
    entry = HistoryEntry("cancel", "requested", 1, time.time(), "changed my mind")
    ok = await store.replace_saga(state, d.cancel_confirmed(state, "changed my mind"), entry,
                                  owner="order-1", lease_s=5)
    assert not ok


async def test_shipment_during_a_cancel_is_decided_by_the_cancel_saga(
        store: OrderStore) -> None:
    """order.shipped lands while a cancel of the CONFIRMED order is under way: the order
    does not flash SHIPPED; the saga's CancelShipment (refused: dispatched) ends it SHIPPED
    with the tracking number, and nothing is refunded."""
    order, state, runner = await _confirmed(store)
    entry = HistoryEntry("cancel", "requested", 1, time.time(), "changed my mind")
    assert await store.replace_saga(state, d.cancel_confirmed(state, "changed my mind"), entry,
                                    owner="order-1", lease_s=5)
    await store.storage.write(lambda tx: _shipped_handler()(tx, None, _shipped(order.id)))
    got = await store.get(order.id)
    assert got is not None and got.status is d.OrderStatus.CONFIRMED
    ports = FakePorts(cancel_shipment=[StepRefused("already shipped")])
    runner.ports = ports
    result = await asyncio.wait_for(runner.ensure(order.id), 5)
    assert result is not None and result.status is d.OrderStatus.SHIPPED
    assert ports.calls == ["cancel_shipment"]
    got = await store.get(order.id)
    assert got is not None and (got.status, got.tracking_number, got.cancel_reason) == (
        d.OrderStatus.SHIPPED, "TRK1", "")
    assert "order.cancelled" not in await outbox_subjects(store)


async def test_payment_event_skip_check_only_past_the_charge(store: OrderStore) -> None:
    """The payments consumer acks without a write only when the saga can never be moved by
    the event again: at its charge (the reconcile case) it is handled as before."""
    payments, _ = handlers.routes(lambda order_id: None)
    skip = payments[0].skip
    assert skip is not None and all(r.skip is skip for r in payments)
    from shop.payment.v1 import payment_pb2

    unknown = payment_pb2.PaymentCompleted(payment=payment_pb2.Payment(order_id="no-such-order"))
    assert not await store.storage.read(lambda tx: skip(tx, NO_ENVELOPE, unknown))
    ports = FakePorts()
    ports.charge_gate = asyncio.Event()
    runner = SagaRunner(store, ports, SagaConfig(owner="order-1", limits=FAST))
    order, state = await new_order(store, runner)
    event = payment_pb2.PaymentCompleted(payment=payment_pb2.Payment(order_id=order.id))
    assert not await store.storage.read(lambda tx: skip(tx, NO_ENVELOPE, event))  # at reserve
    task = runner.start(order, state)
    await asyncio.wait_for(ports.charging.wait(), 5)
    assert not await store.storage.read(lambda tx: skip(tx, NO_ENVELOPE, event))  # at its charge
    ports.charge_gate.set()
    done = await asyncio.wait_for(task, 5)
    assert done is not None and done.status is d.OrderStatus.CONFIRMED
    assert await store.storage.read(lambda tx: skip(tx, NO_ENVELOPE, event))  # ended: a no-op


async def _cancel_confirmed(store: OrderStore, ports: FakePorts) -> tuple[d.Order, d.Order]:
    order, state, runner = await _confirmed(store)
    runner.ports = ports
    entry = HistoryEntry("cancel", "requested", 1, time.time(), "changed my mind")
    assert await store.replace_saga(state, d.cancel_confirmed(state, "changed my mind"), entry,
                                    owner="order-1", lease_s=5)
    result = await asyncio.wait_for(runner.ensure(order.id), 5)
    assert result is not None
    return order, result


async def test_cancel_of_confirmed_order_cancels_shipment_refunds_restocks(
        store: OrderStore) -> None:
    ports = FakePorts(cancel_shipment=[StepUnwell("shipping: DEADLINE_EXCEEDED")])
    order, result = await _cancel_confirmed(store, ports)
    assert (result.status, result.cancel_reason) == (d.OrderStatus.CANCELLED, "changed my mind")
    assert ports.calls == ["cancel_shipment", "cancel_shipment", "refund", "restock"]
    history = [(h.step, h.outcome) for h in await store.history(order.id)]
    assert history[-5:] == [("cancel", "requested"), ("cancel_shipment", "unwell"),
                            ("cancel_shipment", "succeeded"), ("refund", "succeeded"),
                            ("restock", "succeeded")]
    assert (await outbox_subjects(store))[-1] == "order.cancelled"


async def test_unwell_compensation_outlasts_its_attempt_limit(store: OrderStore) -> None:
    """A refund through a long payment outage (more unwell answers than attempts) still
    ends CANCELLED, not REQUIRES_ATTENTION."""
    ports = FakePorts(charge=[StepRefused("declined")],
                      release=[StepUnwell("inventory: UNAVAILABLE")] * (3 * FAST.compensation))
    order, history = await run_saga(store, ports)
    assert order.status is d.OrderStatus.CANCELLED
    assert history.count("release_stock:unwell") == 3 * FAST.compensation


async def test_operator_retry_resumes_a_saga_requiring_attention(store: OrderStore) -> None:
    ports = FakePorts(charge=[StepRefused("declined")],
                      release=[StepUnknown("inventory: UNIMPLEMENTED")] * FAST.compensation)
    order, _ = await run_saga(store, ports)
    assert order.status is d.OrderStatus.REQUIRES_ATTENTION
    runner = SagaRunner(store, ports, SagaConfig(owner="order-1", limits=FAST))
    got = await store.retry(order.id, owner="order-1", lease_s=5)
    assert got is not None and got[0].status is d.OrderStatus.PENDING
    assert await store.retry(order.id, owner="order-1", lease_s=5) is None  # a repeat
    result = await asyncio.wait_for(runner.ensure(order.id), 5)
    assert result is not None and result.status is d.OrderStatus.CANCELLED
    history = [f"{h.step}:{h.outcome}" for h in await store.history(order.id)]
    assert history[-2:] == ["retry:requested", "release_stock:succeeded"]
    with pytest.raises(FailedPrecondition, match="not requires_attention"):
        await store.retry(order.id, owner="order-1", lease_s=5)
    with pytest.raises(NotFound):
        await store.retry("no-such-order", owner="order-1", lease_s=5)


@pytest.mark.parametrize(("method", "codes", "compensations"), [
    # Timed out (may have charged), then refused: refunded, then released.
    ("Charge", [grpc.StatusCode.DEADLINE_EXCEEDED, grpc.StatusCode.UNIMPLEMENTED,
                grpc.StatusCode.FAILED_PRECONDITION], ["Refund", "ReleaseStock"]),
    # Timed out (may have reserved), then refused: released.
    ("ReserveStock", [grpc.StatusCode.DEADLINE_EXCEEDED, grpc.StatusCode.PERMISSION_DENIED,
                      grpc.StatusCode.FAILED_PRECONDITION], ["ReleaseStock"]),
])
async def test_uncertain_step_refused_later_is_compensated(
        store: OrderStore, method: str, codes: list[grpc.StatusCode],
        compensations: list[str]) -> None:
    """Only FAILED_PRECONDITION (and, for Charge, INVALID_ARGUMENT) is a refusal: the
    UNIMPLEMENTED / PERMISSION_DENIED of a misrouted call is retried, and the step that
    timed out is compensated once it is finally refused."""
    calls: dict[str, int] = {}
    fails = {method: list(codes)}
    inventory = Downstream("inventory", _scripted(fails, calls),
                           address="127.0.0.1:9",
                           breaker=pybreaker.CircuitBreaker(fail_max=50, name="inv3"),
                           transport=transport())
    payment = Downstream("payment", _scripted(fails, calls),
                         address="127.0.0.1:9",
                         breaker=pybreaker.CircuitBreaker(fail_max=50, name="pay3"),
                         transport=transport())
    limits = d.Limits(reserve=8, charge=8, compensation=4, backoff_base_s=0.005,
                      backoff_max_s=0.02)
    runner = SagaRunner(store, GrpcPorts(inventory, payment, _no_shipping(),
                                         step_timeout_s=1.0),
                        SagaConfig(owner="order-1", limits=limits))
    try:
        order, state = await new_order(store, runner)
        result = await asyncio.wait_for(runner.start(order, state), 5)
    finally:
        await inventory.close()
        await payment.close()
    assert result is not None and result.status is d.OrderStatus.CANCELLED
    assert calls[method] == 3
    assert [m for m in ("Refund", "ReleaseStock") if calls.get(m)] == compensations
    if method == "Charge":
        assert result.cancel_reason == "payment declined"


async def test_invalid_card_is_a_typed_refusal(store: OrderStore) -> None:
    calls: dict[str, int] = {}
    fails = {"Charge": [grpc.StatusCode.INVALID_ARGUMENT]}
    inventory = Downstream("inventory", _scripted({}, calls),
                           address="127.0.0.1:9",
                           breaker=pybreaker.CircuitBreaker(fail_max=50, name="inv4"),
                           transport=transport())
    payment = Downstream("payment", _scripted(fails, calls),
                         address="127.0.0.1:9",
                         breaker=pybreaker.CircuitBreaker(fail_max=50, name="pay4"),
                         transport=transport())
    runner = SagaRunner(store, GrpcPorts(inventory, payment, _no_shipping(),
                                         step_timeout_s=1.0),
                        SagaConfig(owner="order-1", limits=FAST))
    try:
        order, state = await new_order(store, runner)
        result = await asyncio.wait_for(runner.start(order, state), 5)
    finally:
        await inventory.close()
        await payment.close()
    assert result is not None and result.status is d.OrderStatus.CANCELLED
    got = await store.saga(order.id)
    assert got is not None and got[0].refusal is d.Refusal.INVALID_CARD
    assert d.is_invalid_card(got[0])


async def test_a_file_from_before_versioned_migrations_is_adopted(tmp_path: Path) -> None:
    """A file an earlier release made (its tables created at start, no migration record)
    keeps its rows: migration 0001 finds its tables, is recorded, and the saga reads and
    advances as before."""
    import sqlite3

    path = tmp_path / "order.db"
    old = sqlite3.connect(path)
    old.executescript("""
        CREATE TABLE sagas (order_id TEXT PRIMARY KEY, step TEXT NOT NULL,
            status TEXT NOT NULL, attempt INTEGER NOT NULL DEFAULT 0,
            charged INTEGER NOT NULL DEFAULT 0, cancel_requested INTEGER NOT NULL DEFAULT 0,
            reason TEXT NOT NULL DEFAULT '', card_token TEXT NOT NULL DEFAULT '',
            version INTEGER NOT NULL DEFAULT 0, owner TEXT NOT NULL DEFAULT '',
            lease_until REAL NOT NULL DEFAULT 0, updated_at REAL NOT NULL,
            committed INTEGER NOT NULL DEFAULT 0, uncertain INTEGER NOT NULL DEFAULT 0,
            waits INTEGER NOT NULL DEFAULT 0, refusal TEXT NOT NULL DEFAULT '');
        INSERT INTO sagas (order_id, step, status, charged, committed, version, updated_at)
            VALUES ('o-old', 'done', 'done', 1, 1, 7, 1.0);
    """)
    old.close()
    db = await Database.open(path, migrations=[service_migrations("order")], durable=False)
    try:
        store = OrderStore(db)
        got = await store.saga("o-old")
        assert got is not None
        state = got[0]
        assert (state.step, state.status, state.charged, state.committed, state.version,
                state.refusal) == (d.Step.DONE, d.SagaStatus.DONE, True, True, 7, d.Refusal.NONE)
        cancelling = d.cancel_confirmed(state, "")
        entry = HistoryEntry("cancel", "requested", 1, time.time())
        assert await store.replace_saga(state, cancelling, entry, owner="order-1", lease_s=5)
        again = await store.saga("o-old")
        assert again is not None and again[0].step is d.Step.CANCEL_SHIPMENT
        assert again[0].committed and again[0].version == 8
        assert [r[0] for r in await rows(store, "SELECT version FROM schema_migrations"
                                                " WHERE component = 'order'")] == [1]
    finally:
        await db.close()


async def _saga_row(store: OrderStore, order_id: str) -> tuple[str, int]:
    got = await store.saga(order_id)
    assert got is not None
    return got[0].step.value, got[0].version


async def test_a_charge_that_succeeded_is_written_with_the_confirmation(
        store: OrderStore) -> None:
    """One write less per order: while the charge is in flight the saga row says charge
    (so a restart or a cancel starts from there), and the charge's outcome is written in
    the confirmation's transaction, its history row first."""
    ports = FakePorts()
    ports.charge_gate = asyncio.Event()
    runner = SagaRunner(store, ports, SagaConfig(owner="order-1", limits=FAST))
    order, state = await new_order(store, runner)
    task = runner.start(order, state)
    await asyncio.wait_for(ports.charging.wait(), 5)
    step, version = await _saga_row(store, order.id)
    assert step == "charge"
    assert [h.step for h in await store.history(order.id)] == ["reserve_stock"]
    assert runner.driving(order.id)
    ports.charge_gate.set()
    result = await asyncio.wait_for(task, 5)
    assert result is not None and result.status is d.OrderStatus.CONFIRMED
    assert await _saga_row(store, order.id) == ("done", version + 1)
    assert [f"{h.step}:{h.outcome}" for h in await store.history(order.id)] == [
        "reserve_stock:succeeded", "charge:succeeded", "confirm:succeeded"]
    assert not runner.driving(order.id)


async def test_cancel_during_the_charge_refunds_and_releases(store: OrderStore) -> None:
    """A customer's cancel lands while the charge is in flight: the driver's confirmation
    loses to it, and the saga compensates from the charge step: refund, then release (the
    units were never committed). Nobody keeps the money or the goods, and no
    order.confirmed leaves."""
    ports = FakePorts()
    ports.charge_gate = asyncio.Event()
    runner = SagaRunner(store, ports, SagaConfig(owner="order-1", limits=FAST))
    order, state = await new_order(store, runner)
    task = runner.start(order, state)
    await asyncio.wait_for(ports.charging.wait(), 5)
    got = await store.saga(order.id)
    assert got is not None
    current = got[0]
    assert current.step is d.Step.CHARGE
    entry = HistoryEntry("cancel", "requested", 1, time.time(), "changed my mind")
    assert await store.replace_saga(current, dataclasses.replace(
        current, cancel_requested=True, reason="changed my mind"), entry)
    ports.charge_gate.set()
    result = await asyncio.wait_for(task, 5)
    assert result is not None and result.status is d.OrderStatus.CANCELLED
    assert ports.calls == ["reserve", "charge", "refund", "release"]
    assert "order.confirmed" not in await outbox_subjects(store)


async def test_payment_event_is_acked_without_a_write_while_the_driver_is_in_its_call(
        store: OrderStore) -> None:
    """The payments consumer leaves the saga to its driver while the driver waits for the
    Charge answer itself; once the driver waits out a back-off the event settles it."""
    from shop.payment.v1 import payment_pb2

    ports = FakePorts(charge=[StepUnknown("timeout")])
    ports.charge_gate = asyncio.Event()
    runner = SagaRunner(store, ports, SagaConfig(owner="order-1", limits=d.Limits(
        reserve=3, charge=3, compensation=4, backoff_base_s=30, backoff_max_s=30)))
    payments, _ = handlers.routes(runner.poke, runner.driving)
    skip = payments[0].skip
    assert skip is not None
    order, state = await new_order(store, runner)
    event = payment_pb2.PaymentCompleted(payment=payment_pb2.Payment(order_id=order.id))
    task = runner.start(order, state)
    await asyncio.wait_for(ports.charging.wait(), 5)
    assert await store.storage.read(lambda tx: skip(tx, NO_ENVELOPE, event))  # in its call
    ports.charge_gate.set()
    deadline = time.monotonic() + 5
    while runner.driving(order.id):  # the unknown answer: a 30 s back-off begins
        assert time.monotonic() < deadline, "the driver never paused"
        await asyncio.sleep(0.01)
    assert not await store.storage.read(lambda tx: skip(tx, NO_ENVELOPE, event))
    moved = await store.storage.write(lambda tx: order_store.reconcile_charge(
        tx, order.id, charged=True, error="", by="payment.completed"))
    assert moved
    runner.poke(order.id)  # what the handler does after its commit: no 30 s wait
    result = await asyncio.wait_for(task, 5)
    assert result is not None and result.status is d.OrderStatus.CONFIRMED
