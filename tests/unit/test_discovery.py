"""Discovery without NATS: registry values, the round-robin picker, mark-down and recovery,
watch updates, fallbacks. Instances are real in-process echo servers on port 0."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Callable
from contextlib import AsyncExitStack
from pathlib import Path
from types import SimpleNamespace
from typing import TYPE_CHECKING, Any

import nats.errors
import pytest
from shop.product.v1 import product_pb2, product_pb2_grpc

from services.common.breakers import Breakers
from services.common.clients import Downstream, Health, resolve_addr
from services.common.config import BreakerConfig
from services.common.discovery import Discovery
from services.common.registry import Instance, RegistryLink
from tests.support.inprocess import RunningEcho, running_echo
from tests.support.mesh import nats_auth, process_wiring, transport

if TYPE_CHECKING:  # on an aio channel the stub is the .pyi's async one
    Stub = product_pb2_grpc.ProductServiceAsyncStub
else:
    Stub = product_pb2_grpc.ProductServiceStub


def _discovery(config: BreakerConfig) -> Discovery:
    # Never started: the tests feed it registry entries by hand.
    link = RegistryLink("nats://127.0.0.1:1", name="unit", ttl_s=5, auth=nats_auth())
    return Discovery(link, recheck_s=0.05, transport=transport(), breakers=Breakers(config))


@pytest.fixture
async def disc() -> AsyncIterator[Discovery]:
    d = _discovery(BreakerConfig(fail_max=50))
    yield d
    await d.stop()
    d.breakers.stop_watches()


@pytest.fixture
async def echoes(tmp_path: Path) -> AsyncIterator[list[RunningEcho]]:
    async with AsyncExitStack() as stack:
        yield [
            await stack.enter_async_context(running_echo(tmp_path / str(i), slow_s=0.1))
            for i in range(3)
        ]


def inst(name: str, addr: str, service: str = "echo") -> Instance:
    return Instance(service, name, addr, "1.0", 1.5, 42, {"payment": "open"})


def register(d: Discovery, name: str, addr: str, service: str = "echo") -> str:
    i = inst(name, addr, service)
    d._upsert(i.key, i)
    return i.key


async def get(ds: Downstream[Stub], pid: str = "x") -> product_pb2.GetProductResponse:
    reply: product_pb2.GetProductResponse = await ds.call(
        lambda s: s.GetProduct, product_pb2.GetProductRequest(id=pid), idempotent=True
    )
    return reply


def test_instance_value_round_trips_and_bad_values_are_ignored() -> None:
    i = Instance("payment", "payment.2/x y", "10.0.0.7:50055", "0.1.0", 12.5, 99, {"a": "open"})
    assert i.key == "payment.payment_2/x_y"  # one dot only: service.instance
    back = Instance.from_entry(i.key, i.to_json())
    assert back == i
    assert Instance.from_entry("svc.x", b"not json") is None
    assert Instance.from_entry("svc.x", b'{"no_addr": 1}') is None
    assert Instance.from_entry("svc.x", None) is None
    bare = Instance.from_entry("svc.x", b'{"addr": "h:1"}')
    assert bare is not None and (bare.service, bare.instance_id, bare.addr) == ("svc", "x", "h:1")


async def test_round_robin_over_registered_instances(
    disc: Discovery, echoes: list[RunningEcho]
) -> None:
    for n, e in enumerate(echoes):
        register(disc, f"echo-{n}", e.addr)
    ds = Downstream("echo", Stub, cap_s=2.0, picker=disc, transport=transport(),
                    breakers=disc.breakers)
    try:
        for _ in range(30):
            await get(ds)
    finally:
        await ds.close()
    assert [e.servicer.calls for e in echoes] == [10, 10, 10]
    # one shared channel per instance, reused by every Downstream of the process
    channels = {id(v.endpoint.channel) for v in disc._by_key.values()}
    assert len(channels) == 3 and None not in {v.endpoint.channel for v in disc._by_key.values()}


async def test_unavailable_instance_is_skipped_and_retry_goes_elsewhere(
    disc: Discovery, tmp_path: Path
) -> None:
    async with running_echo(tmp_path / "a") as a, running_echo(tmp_path / "b") as b:
        register(disc, "echo-a", a.addr)
        register(disc, "echo-b", b.addr)
        ds = Downstream("echo", Stub, cap_s=2.0, picker=disc, transport=transport(),
                    breakers=disc.breakers)
        try:
            await a.runner.stop(grace_s=0)  # a dies without leaving the registry
            for _ in range(6):
                reply = await get(ds, "ok")
                assert reply.product.id == "ok"
            assert disc.healthy_addrs("echo") == [b.addr]
            assert b.servicer.calls == 6
            assert ds.breaker.fail_counter <= 1  # one failed attempt, then b only
            # the health check keeps it out while it stays down
            await asyncio.sleep(0.2)
            assert disc.healthy_addrs("echo") == [b.addr]
        finally:
            await ds.close()


async def test_down_instance_comes_back_after_a_serving_health_check(
    disc: Discovery, echoes: list[RunningEcho]
) -> None:
    register(disc, "echo-0", echoes[0].addr)
    register(disc, "echo-1", echoes[1].addr)
    first = disc.pick("echo")
    assert first is not None
    disc.mark_down(first)
    assert disc.healthy_addrs("echo") == [e.addr for e in echoes[:2] if e.addr != first.addr]
    assert all(disc.pick("echo") is not first for _ in range(5))
    await disc._check(first)
    assert sorted(disc.healthy_addrs("echo")) == sorted(e.addr for e in echoes[:2])

    # a NOT_SERVING instance (draining) is taken out by the check
    await echoes[1].runner.health.enter_graceful_shutdown()
    ep = next(v.endpoint for v in disc._by_key.values() if v.endpoint.addr == echoes[1].addr)
    await disc._check(ep)
    assert disc.healthy_addrs("echo") == [echoes[0].addr]


async def test_all_down_still_tries_them_and_unknown_service_falls_back(disc: Discovery) -> None:
    register(disc, "echo-0", "127.0.0.1:1")
    ep = disc.pick("echo")
    assert ep is not None
    disc.mark_down(ep)
    assert disc.pick("echo") is ep  # better a call that may fail than none at all
    assert disc.pick("nobody") is None
    assert resolve_addr("product") == "127.0.0.1:50052"  # no entry, no override: default
    assert Downstream("product", Stub, transport=transport()).address == "127.0.0.1:50052"


async def test_fixed_addr_overrides_discovery(
    disc: Discovery, echoes: list[RunningEcho]
) -> None:
    register(disc, "echo-0", echoes[0].addr)
    register(disc, "echo-1", echoes[1].addr)
    # ECHO_ADDR, as the settings read it, handed to the wiring with the discovery.
    pinned = process_wiring(discovery=disc, breakers=disc.breakers,
                            pinned={"echo": echoes[2].addr})
    ds = pinned.downstream("echo", Stub, cap_s=2.0)
    try:
        for _ in range(4):
            await get(ds)
    finally:
        await ds.close()
    assert [e.servicer.calls for e in echoes] == [0, 0, 4]


class FakeWatcher:
    def __init__(self, entries: list[Any]) -> None:
        self.entries = list(entries)

    async def updates(self, timeout: float) -> Any:  # noqa: ASYNC109 - mirrors nats-py
        for _ in range(20):  # a little patience (0.2 s), as a real watch has
            if self.entries:
                return self.entries.pop(0)
            await asyncio.sleep(0.01)
        raise nats.errors.TimeoutError


async def eventually(pred: Callable[[], bool]) -> None:
    for _ in range(100):
        if pred():
            return
        await asyncio.sleep(0.005)
    raise AssertionError("condition never became true")


def put(i: Instance) -> Any:
    return SimpleNamespace(key=i.key, value=i.to_json(), operation=None)


def delete(key: str, op: str = "DEL") -> Any:
    return SimpleNamespace(key=key, value=b"", operation=op)


async def test_watch_updates_add_remove_and_resync(disc: Discovery) -> None:
    a, b, c = inst("a", "h:1"), inst("b", "h:2"), inst("c", "h:3")
    watcher = FakeWatcher([put(a), put(b), None, put(c), delete(a.key)])
    consuming = asyncio.create_task(disc._consume(watcher))
    await eventually(lambda: [v.instance_id for v in disc.instances("echo")] == ["b", "c"])
    assert disc.synced.is_set()
    watcher.entries.append(delete(b.key, "PURGE"))  # a key aged out (MaxAge marker)
    await eventually(lambda: [v.instance_id for v in disc.instances("echo")] == ["c"])
    await consuming  # the watch went quiet: returns so the loop starts a fresh one
    assert [v.instance_id for v in disc.instances("echo")] == ["c"]
    # a fresh watch's initial values replace everything (keys missed while it was down)
    await disc._consume(FakeWatcher([put(a), None]))
    assert [(v.instance_id, v.addr) for v in disc.instances()] == [("a", "h:1")]
    # same instance, new address: a new endpoint
    old = disc.pick("echo")
    await disc._consume(FakeWatcher([put(inst("a", "h:9")), None]))
    new = disc.pick("echo")
    assert new is not None and old is not None and new is not old and new.addr == "h:9"


async def test_stale_entries_are_swept(disc: Discovery) -> None:
    register(disc, "old", "h:1")
    disc._by_key["echo.old"].seen -= disc.ttl_s * 2
    register(disc, "fresh", "h:2")
    disc._sweep()
    assert [v.instance_id for v in disc.instances()] == ["fresh"]


def test_a_downstream_picks_through_the_discovery_it_is_given() -> None:
    d = _discovery(BreakerConfig())
    register(d, "product-0", "h:1", service="product")
    assert Downstream("product", Stub, picker=d, transport=transport()).address == "h:1"
    # Nothing ambient: without one it never asks a discovery.
    assert Downstream("product", Stub, transport=transport()).address == "127.0.0.1:50052"


async def test_health_check_asks_for_the_expected_service(
    disc: Discovery, echoes: list[RunningEcho]
) -> None:
    """A shop server on a reused port that serves another contract is not healthy for the
    service registered there: the check names `shop.<svc>.v1.<Svc>Service`, not ""."""
    register(disc, "payment-1", echoes[0].addr, service="payment")  # an echo took its port
    register(disc, "product-1", echoes[1].addr, service="product")  # the echo is a product
    wrong = next(v.endpoint for v in disc._by_key.values() if v.info.service == "payment")
    right = next(v.endpoint for v in disc._by_key.values() if v.info.service == "product")
    assert not await disc.check(wrong)
    assert await disc.check(right)
    disc.mark_down(wrong)
    disc.mark_down(right)
    await disc._check(wrong)
    await disc._check(right)
    assert disc.healthy_addrs("payment") == []
    assert disc.healthy_addrs("product") == [echoes[1].addr]


async def test_an_instance_in_its_graceful_stop_is_draining_not_a_fault(
    disc: Discovery, echoes: list[RunningEcho], caplog: pytest.LogCaptureFixture
) -> None:
    """An instance answering NOT_SERVING is stopping on purpose: it leaves the ring with an
    INFO line ("instance draining"); one that does not answer at all is a WARNING."""
    register(disc, "product-1", echoes[0].addr, service="product")
    register(disc, "product-2", "127.0.0.1:1", service="product")  # nothing listens there
    draining, gone = (next(v.endpoint for v in disc._by_key.values() if v.info.instance_id == i)
                      for i in ("product-1", "product-2"))
    assert await disc.health(draining) is Health.SERVING
    await echoes[0].runner.health.enter_graceful_shutdown()
    assert await disc.health(draining) is Health.NOT_SERVING
    assert await disc.health(gone) is Health.UNREACHABLE
    with caplog.at_level(logging.INFO, logger="shop.discovery"):
        await disc._check(draining)
        await disc._check(gone)
    said = {(r.getMessage(), r.levelno, getattr(r, "downstream_instance", ""))
            for r in caplog.records}
    assert said == {("instance draining", logging.INFO, "product-1"),
                    ("instance marked down", logging.WARNING, "product-2")}
    assert disc.healthy_addrs("product") == []


async def test_hung_instance_is_ejected_alone_and_back_once_it_serves(
    echoes: list[RunningEcho]
) -> None:
    """One of two instances hangs: its own breaker opens after the failures, the picker
    skips it and every call goes to the other, the service is not "open"; once it answers
    again its breaker's health watch half-opens it and it gets calls within seconds, not
    after the 30 s reset timeout."""
    import time

    import grpc
    from grpc import aio

    from tests.support.faultproxy import FaultProxy, Mode

    disc = _discovery(BreakerConfig(fail_max=3, reset_s=30.0))
    a, b = echoes[0], echoes[1]
    with FaultProxy(a.addr) as proxy:
        register(disc, "echo-a", proxy.addr)
        register(disc, "echo-b", b.addr)
        ds = Downstream("echo", Stub, cap_s=0.3, picker=disc, transport=transport(),
                    breakers=disc.breakers)
        try:
            for _ in range(4):
                await get(ds)
            assert a.servicer.calls == 2 and b.servicer.calls == 2
            proxy.set_mode(Mode.BLACKHOLE)
            timeouts = 0
            for _ in range(8):  # a's calls time out until its breaker opens
                try:
                    await get(ds)
                except aio.AioRpcError as err:
                    assert err.code() is grpc.StatusCode.DEADLINE_EXCEEDED
                    timeouts += 1
            assert timeouts == 3
            assert disc.breakers.breaker_for("echo", "echo-a").current_state == "open"
            served = b.servicer.calls
            for _ in range(20):
                await get(ds)  # none fails: all go to b
            assert b.servicer.calls == served + 20
            assert ds.breaker_state == "closed"
            assert disc.breakers.states()["echo"] == "closed"

            proxy.set_mode(Mode.PASS)
            back_at = time.monotonic()
            before = a.servicer.calls
            while a.servicer.calls == before:
                await get(ds)
                assert time.monotonic() - back_at < 5.0, "echo-a never used again"
                await asyncio.sleep(0.02)
            assert disc.breakers.breaker_for("echo", "echo-a").current_state == "closed"
        finally:
            await ds.close()
            await disc.stop()
            disc.breakers.stop_watches()
