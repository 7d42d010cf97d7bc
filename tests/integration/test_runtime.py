"""The runtime as a real process: ready file, health, reflection, request ids, JSON logs,
and a graceful SIGTERM that lets an in-flight call finish and exits 0."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest
from grpc import aio
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
from shop.product.v1 import product_pb2, product_pb2_grpc

from tests.support import mesh

ROOT = Path(__file__).resolve().parents[2]
PRODUCT_SERVICE = "shop.product.v1.ProductService"
SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


@dataclass
class EchoProcess:
    proc: asyncio.subprocess.Process
    addr: str
    ready: dict[str, object]
    log_path: Path


def _read_ready(path: Path) -> dict[str, object] | None:
    if not path.exists():
        return None
    data: dict[str, object] = json.loads(path.read_text())
    return data


def _log_entries(path: Path) -> list[dict[str, object]]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


async def _wait_ready(proc: asyncio.subprocess.Process, ready_file: Path) -> dict[str, object]:
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        if proc.returncode is not None:
            raise AssertionError(f"echo app exited early with {proc.returncode}")
        data = _read_ready(ready_file)
        if data is not None:
            return data
        await asyncio.sleep(0.02)
    raise AssertionError("echo app never wrote its ready file")


@pytest.fixture
async def echo_process(tmp_path: Path) -> AsyncIterator[EchoProcess]:
    ready_file = tmp_path / "ready" / "echo.json"
    log_path = tmp_path / "echo.log"
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(ROOT), str(ROOT / "gen")]),
        "ECHO_PORT": "0",
        "SHOP_DATA_DIR": str(tmp_path / "data"),
        "SHOP_READY_FILE": str(ready_file),
        "SHOP_INSTANCE_ID": "echo-it",
        "SHOP_LOG_LEVEL": "DEBUG",
        "SHOP_GRACE_S": "5",
        "SHOP_DRAIN_DELAY_S": "0.4",
        "ECHO_SLOW_S": "1.2",
    }
    with log_path.open("wb") as log:
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "tests.support.echo_app", cwd=ROOT, env=env, stderr=log
        )
    try:
        ready = await _wait_ready(proc, ready_file)
        yield EchoProcess(proc, str(ready["addr"]), ready, log_path)
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()


async def _health(channel: aio.Channel, service: str) -> int:
    stub = health_pb2_grpc.HealthStub(channel)
    reply = await stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=2)
    return int(reply.status)


async def test_ready_health_reflection_request_id(echo_process: EchoProcess) -> None:
    ready = echo_process.ready
    assert ready["service"] == "echo"
    assert ready["instance"] == "echo-it"
    assert ready["pid"] == echo_process.proc.pid
    assert echo_process.addr.startswith("127.0.0.1:") and not echo_process.addr.endswith(":0")

    async with mesh.channel(echo_process.addr, server="echo") as channel:
        assert await _health(channel, "") == SERVING
        assert await _health(channel, PRODUCT_SERVICE) == SERVING

        refl = reflection_pb2_grpc.ServerReflectionStub(channel)
        call = refl.ServerReflectionInfo(timeout=2)
        await call.write(reflection_pb2.ServerReflectionRequest(list_services=""))
        await call.done_writing()
        reply = await call.read()
        names = {s.name for s in reply.list_services_response.service}
        assert {
            PRODUCT_SERVICE,
            "grpc.health.v1.Health",
            "grpc.reflection.v1alpha.ServerReflection",
        } <= names

        stub = product_pb2_grpc.ProductServiceStub(channel)
        mine = stub.GetProduct(
            product_pb2.GetProductRequest(id="whoami"),
            metadata=(("x-request-id", "req-42"), ("x-user-id", "u-9")),
            timeout=3,
        )
        answer = await mine
        assert answer.product.description == "req-42"
        assert answer.product.name == "u-9"
        assert 2.0 < float(answer.product.category) <= 3.1  # grpc-timeout rounds up a little

        fresh = stub.GetProduct(product_pb2.GetProductRequest(id="whoami"), timeout=3)
        answer = await fresh
        new_id = dict(await fresh.initial_metadata())["x-request-id"]
        assert len(new_id) == 32 and answer.product.description == new_id

        with pytest.raises(aio.AioRpcError) as info:
            await stub.GetProduct(product_pb2.GetProductRequest(id="missing"), timeout=3)
        assert info.value.code() is grpc.StatusCode.NOT_FOUND

    await _assert_logs(echo_process.log_path)


async def _assert_logs(path: Path) -> None:
    # The DEBUG call lines may still be in flight to the file; give them a moment.
    for _ in range(50):
        lines = _log_entries(path)
        calls = [e for e in lines if e.get("msg") == "rpc" and e.get("request_id") == "req-42"]
        if calls:
            break
        await asyncio.sleep(0.02)
    assert all(e["service"] == "echo" and e["instance"] == "echo-it" for e in lines)
    assert calls, "no log line for the call with request id req-42"
    assert calls[0]["method"] == f"/{PRODUCT_SERVICE}/GetProduct"
    assert calls[0]["code"] == "OK"
    assert isinstance(calls[0]["duration_ms"], float)


async def test_sigterm_drains_in_flight_call_and_exits_zero(echo_process: EchoProcess) -> None:
    async with mesh.channel(echo_process.addr, server="echo") as channel:
        stub = product_pb2_grpc.ProductServiceStub(channel)
        slow = asyncio.ensure_future(
            stub.GetProduct(product_pb2.GetProductRequest(id="slow"), timeout=10)
        )
        await asyncio.sleep(0.3)  # the call is in the servicer's sleep now
        assert not slow.done()
        os.kill(echo_process.proc.pid, signal.SIGTERM)

        await asyncio.sleep(0.15)  # inside the drain delay: still answering, not serving
        assert await _health(channel, "") == NOT_SERVING
        assert await _health(channel, PRODUCT_SERVICE) == NOT_SERVING

        reply = await slow
        assert reply.product.id == "slow"

    code = await asyncio.wait_for(echo_process.proc.wait(), timeout=10)
    assert code == 0
    entries = _log_entries(echo_process.log_path)
    assert any(e["msg"] == "stopped" for e in entries)
