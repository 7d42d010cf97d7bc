"""Downstream: deadline and metadata passed on, retries, and the circuit breaker."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import grpc
import pytest
from grpc import aio
from shop.product.v1 import product_pb2, product_pb2_grpc

from services.common import context
from services.common.breakers import Breakers, new_breaker
from services.common.clients import Downstream, resolve_addr, rpc_name
from services.common.config import BreakerConfig
from services.common.errors import DeadlineExceeded, Unavailable
from tests.support.inprocess import RunningEcho, running_echo
from tests.support.mesh import process_wiring, settings_for, transport

if TYPE_CHECKING:  # on an aio channel the stub is the .pyi's async one
    Stub = product_pb2_grpc.ProductServiceAsyncStub
else:
    Stub = product_pb2_grpc.ProductServiceStub


@pytest.fixture
def reg() -> Iterator[Breakers]:
    """The breakers of the test's process: 5 failures open one, 0.3 s half-opens it."""
    made = Breakers(BreakerConfig(fail_max=5, reset_s=0.3))
    yield made
    made.stop_watches()


@pytest.fixture
async def echo(tmp_path: Path) -> AsyncIterator[RunningEcho]:
    async with running_echo(tmp_path, slow_s=1.0) as running:
        yield running


@pytest.fixture
async def ds(echo: RunningEcho, reg: Breakers) -> AsyncIterator[Downstream[Stub]]:
    client = Downstream("product", Stub, cap_s=2.0, address=echo.addr, speaks_for_users=True,
                        transport=transport(), breakers=reg)
    yield client
    await client.close()


def req(pid: str) -> product_pb2.GetProductRequest:
    return product_pb2.GetProductRequest(id=pid)


async def test_metadata_and_capped_deadline_are_passed_on(ds: Downstream[Stub]) -> None:
    with context.bind(request_id="rid-7", user_id="u-7", timeout=1.0):
        reply = await ds.call(lambda s: s.GetProduct, req("whoami"), idempotent=True)
    assert reply.product.name == "u-7"
    assert reply.product.description == "rid-7"
    # the caller's 1 s, not the 2 s cap (grpc-timeout may round up by a few ms)
    assert 0.5 < float(reply.product.category) <= 1.05
    reply = await ds.call(lambda s: s.GetProduct, req("whoami"), idempotent=True, timeout=0.3)
    assert float(reply.product.category) <= 0.35


async def test_a_service_does_not_pass_the_user_on(echo: RunningEcho) -> None:
    """Only a Downstream that speaks for users (the gateway's) sends x-user-id."""
    internal = Downstream("product", Stub, cap_s=2.0, address=echo.addr, transport=transport())
    try:
        with context.bind(request_id="rid-8", user_id="u-8"):
            reply = await internal.call(lambda s: s.GetProduct, req("whoami"), idempotent=True)
    finally:
        await internal.close()
    assert reply.product.name == ""
    assert reply.product.description == "rid-8"


async def test_no_time_left_fails_without_calling(ds: Downstream[Stub], echo: RunningEcho) -> None:
    with context.bind(timeout=-0.1), pytest.raises(DeadlineExceeded):
        await ds.call(lambda s: s.GetProduct, req("x"), idempotent=True)
    assert echo.servicer.calls == 0


async def test_business_errors_do_not_count(ds: Downstream[Stub]) -> None:
    for _ in range(8):
        with pytest.raises(aio.AioRpcError) as info:
            await ds.call(lambda s: s.GetProduct, req("missing"), idempotent=False)
        assert info.value.code() is grpc.StatusCode.NOT_FOUND
    assert ds.breaker_state == "closed"
    assert ds.breaker.fail_counter == 0


async def test_five_failures_open_then_half_open_success_closes(
    ds: Downstream[Stub], echo: RunningEcho, reg: Breakers
) -> None:
    for _ in range(5):
        with pytest.raises(aio.AioRpcError) as info:
            await ds.call(lambda s: s.GetProduct, req("unavailable"), idempotent=False)
        assert info.value.code() is grpc.StatusCode.UNAVAILABLE
    assert ds.breaker_state == "open"
    assert reg.states() == {"product": "open"}
    for _ in range(3):
        with pytest.raises(Unavailable, match="product unavailable: circuit open"):
            await ds.call(lambda s: s.GetProduct, req("ok"), idempotent=True)
    assert echo.servicer.calls == 5  # nothing reached the server while open

    await asyncio.sleep(0.35)
    reply = await ds.call(lambda s: s.GetProduct, req("ok"), idempotent=True)
    assert reply.product.id == "ok"
    assert ds.breaker_state == "closed"


async def test_failed_probe_reopens(ds: Downstream[Stub], echo: RunningEcho) -> None:
    for _ in range(5):
        with pytest.raises(aio.AioRpcError):
            await ds.call(lambda s: s.GetProduct, req("boom"), idempotent=False)  # INTERNAL counts
    assert ds.breaker_state == "open"
    await asyncio.sleep(0.35)
    with pytest.raises(aio.AioRpcError):
        await ds.call(lambda s: s.GetProduct, req("unavailable"), idempotent=False)
    assert ds.breaker_state == "open"
    assert echo.servicer.calls == 6


async def test_deadline_exceeded_counts_as_failure(ds: Downstream[Stub]) -> None:
    with pytest.raises(aio.AioRpcError) as info:
        await ds.call(lambda s: s.GetProduct, req("slow"), idempotent=True, timeout=0.05)
    assert info.value.code() is grpc.StatusCode.DEADLINE_EXCEEDED
    assert ds.breaker.fail_counter == 1


async def test_retries_only_idempotent_calls_on_unavailable(
    ds: Downstream[Stub], echo: RunningEcho
) -> None:
    ds.breaker = Breakers(BreakerConfig(fail_max=100, reset_s=0.3)).breaker_for("product")

    with pytest.raises(aio.AioRpcError):
        await ds.call(lambda s: s.GetProduct, req("unavailable"), idempotent=False)
    assert echo.servicer.calls == 1

    with pytest.raises(aio.AioRpcError):
        await ds.call(lambda s: s.GetProduct, req("unavailable"), idempotent=True)
    assert echo.servicer.calls == 1 + 3

    with pytest.raises(aio.AioRpcError):
        await ds.call(lambda s: s.GetProduct, req("missing"), idempotent=True)
    assert echo.servicer.calls == 1 + 3 + 1  # business codes are never retried


async def test_unreachable_downstream_is_unavailable() -> None:
    client = Downstream("shipping", Stub, cap_s=1.0, address="127.0.0.1:1",
                        transport=transport())
    try:
        with pytest.raises(aio.AioRpcError) as info:
            await client.call(lambda s: s.GetProduct, req("x"), idempotent=True)
        assert info.value.code() is grpc.StatusCode.UNAVAILABLE
        assert client.breaker.fail_counter == 3  # each attempt counts
    finally:
        await client.close()


def test_address_order() -> None:
    assert resolve_addr("cart") == "127.0.0.1:50053"
    found = lambda service: f"{service}.found:1"  # noqa: E731
    assert resolve_addr("cart", resolver=found) == "cart.found:1"
    # `<SERVICE>_ADDR`, as the settings read it, pins every Downstream the wiring makes.
    pinned = process_wiring(pinned={"cart": "fixed:2"})
    assert pinned.downstream("cart", Stub).address == "fixed:2"
    assert process_wiring().downstream("cart", Stub).address == "127.0.0.1:50053"


async def _open(ds: Downstream[Stub]) -> None:
    for _ in range(5):
        with pytest.raises(aio.AioRpcError):
            await ds.call(lambda s: s.GetProduct, req("unavailable"), idempotent=False)
    assert ds.breaker_state == "open"


async def test_half_open_probe_cancelled_early_does_not_close(ds: Downstream[Stub]) -> None:
    """A probe that never answered (its caller went away long before any deadline) says
    nothing about the downstream: the breaker stays half-open, the next call probes."""
    await _open(ds)
    await asyncio.sleep(0.35)
    with context.bind(timeout=5.0):
        probe = asyncio.create_task(ds.call(lambda s: s.GetProduct, req("slow"), idempotent=True))
        await asyncio.sleep(0.1)
        probe.cancel()
        with pytest.raises(asyncio.CancelledError):
            await probe
    assert ds.breaker_state == "half-open"
    with pytest.raises(aio.AioRpcError):  # the next probe fails: open again, not closed
        await ds.call(lambda s: s.GetProduct, req("unavailable"), idempotent=False)
    assert ds.breaker_state == "open"


async def test_non_grpc_exception_is_no_verdict() -> None:
    """Neither a failure nor a success: it does not reset the count of failures, and a
    half-open breaker stays half-open."""
    b = new_breaker("unit", fail_max=3, reset_timeout=0.05)
    unavailable = aio.AioRpcError(grpc.StatusCode.UNAVAILABLE, aio.Metadata(), aio.Metadata())
    for _ in range(2):
        with pytest.raises(aio.AioRpcError), b.calling():
            raise unavailable
    with pytest.raises(ValueError), b.calling():
        raise ValueError("a bug on our side")
    assert b.fail_counter == 2
    with pytest.raises(aio.AioRpcError), b.calling():
        raise unavailable
    assert b.current_state == "open"
    await asyncio.sleep(0.06)
    with pytest.raises(RuntimeError), b.calling():
        raise RuntimeError("channel closed")
    assert b.current_state == "half-open"
    with b.calling():
        pass
    assert b.current_state == "closed"


async def test_half_open_lets_one_probe_through_at_a_time(ds: Downstream[Stub]) -> None:
    await _open(ds)
    await asyncio.sleep(0.35)
    probe = asyncio.create_task(ds.call(lambda s: s.GetProduct, req("slow"), idempotent=True))
    await asyncio.sleep(0.1)
    with pytest.raises(Unavailable, match="circuit open"):
        await ds.call(lambda s: s.GetProduct, req("ok"), idempotent=True)
    await probe
    assert ds.breaker_state == "closed"


async def test_open_breaker_half_opens_when_the_instance_serves_again(
    tmp_path: Path
) -> None:
    """The instance goes away and comes back on its port: calls flow again as soon as its
    health says SERVING, not after the reset timeout (30 s here)."""
    import time

    from services.common.server import ServiceRunner
    from tests.support.echo_app import EchoProductServicer, make_app

    slow_reset = Breakers(BreakerConfig(fail_max=5, reset_s=30.0))
    async with running_echo(tmp_path / "a") as first:
        port = first.runner.port
        client = Downstream("product", Stub, cap_s=1.0, address=first.addr,
                            transport=transport(), breakers=slow_reset)
        await client.call(lambda s: s.GetProduct, req("ok"), idempotent=True)
        await first.runner.stop(grace_s=0)
        for _ in range(2):  # three attempts each, all refused: open after the fifth
            with pytest.raises((aio.AioRpcError, Unavailable)):
                await client.call(lambda s: s.GetProduct, req("ok"), idempotent=True)
        assert client.breaker_state == "open"
        await asyncio.sleep(0.6)  # the watch sees it down
        settings = settings_for("echo", port=port, data_dir=tmp_path, grace_s=1)
        again = ServiceRunner(settings, make_app(EchoProductServicer()))
        await again.start()
        serving_at = time.monotonic()
        try:
            while True:
                try:
                    await client.call(lambda s: s.GetProduct, req("ok"), idempotent=True)
                    break
                except Unavailable:
                    assert time.monotonic() - serving_at < 3.0, "still open"
                    await asyncio.sleep(0.05)
            assert client.breaker_state == "closed"
        finally:
            await client.close()
            slow_reset.stop_watches()
            await again.stop(grace_s=0)


def test_a_call_names_its_method_through_the_stub() -> None:
    # The selector is what mypy checks against the stub's .pyi; its name labels metrics,
    # spans and the traffic rules.
    assert rpc_name(lambda s: s.BatchGetProducts) == "BatchGetProducts"
    with pytest.raises(TypeError):
        rpc_name(lambda s: 42)
