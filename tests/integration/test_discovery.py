"""Discovery with real processes: echo instances (tests/support/echo_app.py, port 0) register
in the NATS KV registry, callers spread calls round-robin over them, a killed instance
expires, a SIGTERMed one leaves at once, and a fixed <SERVICE>_ADDR needs no NATS at all."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, TYPE_CHECKING

import grpc
import nats
import pytest
from grpc import aio
from nats.js.errors import KeyNotFoundError
from shop.product.v1 import product_pb2, product_pb2_grpc

from ops.natsd import NatsServer
from services.common import context
from services.common.breakers import Breakers
from services.common.clients import Downstream
from services.common.config import BreakerConfig
from services.common.discovery import Discovery
from services.common.registry import BUCKET, RegistryLink, list_instances
from tests.support.mesh import nats_auth, process_wiring, transport

ROOT = Path(__file__).resolve().parents[2]
if TYPE_CHECKING:  # on an aio channel the stub is the .pyi's async one
    Stub = product_pb2_grpc.ProductServiceAsyncStub
else:
    Stub = product_pb2_grpc.ProductServiceStub


@dataclass
class Echo:
    instance: str
    proc: subprocess.Popen[bytes]
    addr: str
    log_path: Path
    log: IO[bytes]

    def request_ids(self) -> set[str]:
        """Request ids of the GetProduct calls this instance answered."""
        ids: set[str] = set()
        for line in self.log_path.read_text().splitlines():
            with contextlib.suppress(ValueError):
                entry = json.loads(line)
                if entry.get("msg") == "rpc" and str(entry.get("method", "")).endswith(
                    "/GetProduct"
                ):
                    ids.add(str(entry.get("request_id")))
        return ids

    def log_text(self) -> str:
        return self.log_path.read_text()


class EchoFleet:
    """Echo instances as real processes; each stopped by its own PID afterwards."""

    def __init__(self, tmp: Path, nats_url: str) -> None:
        self.tmp = tmp
        self.nats_url = nats_url
        self.started: list[Echo] = []

    def start(self, instance: str, *, ttl_s: float, **env: str) -> Echo:
        ready = self.tmp / "run" / f"{instance}.json"
        log_path = self.tmp / "logs" / f"{instance}.log"
        log_path.parent.mkdir(parents=True, exist_ok=True)
        full_env = {
            k: v for k, v in os.environ.items() if not k.endswith("_ADDR") and k != "NATS_URL"
        }
        full_env.update(
            PYTHONPATH=os.pathsep.join([str(ROOT), str(ROOT / "gen")]),
            ECHO_PORT="0",
            NATS_URL=self.nats_url,
            SHOP_DATA_DIR=str(self.tmp / "data"),
            SHOP_READY_FILE=str(ready),
            SHOP_INSTANCE_ID=instance,
            SHOP_LOG_LEVEL="DEBUG",
            SHOP_GRACE_S="3",
            SHOP_REGISTRY_TTL_S=str(ttl_s),
        )
        full_env.update(env)  # may choose the port (ECHO_PORT)
        log = log_path.open("ab")
        proc = subprocess.Popen(
            [sys.executable, "-m", "tests.support.echo_app"],
            cwd=ROOT,
            env=full_env,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        deadline = time.monotonic() + 20
        while not ready.exists():
            if proc.poll() is not None or time.monotonic() > deadline:
                proc.kill()
                proc.wait()
                log.close()
                raise AssertionError(f"{instance} did not start:\n{log_path.read_text()[-3000:]}")
            time.sleep(0.02)
        addr = str(json.loads(ready.read_text())["addr"])
        echo = Echo(instance, proc, addr, log_path, log)
        self.started.append(echo)
        return echo

    def stop_all(self) -> None:
        for echo in self.started:
            if echo.proc.poll() is None:
                os.kill(echo.proc.pid, signal.SIGTERM)
        for echo in self.started:
            try:
                echo.proc.wait(10)
            except subprocess.TimeoutExpired:
                os.kill(echo.proc.pid, signal.SIGKILL)
                echo.proc.wait()
            echo.log.close()


# The test process's breakers: tolerant, so the faults below stay in discovery's hands.
TOLERANT = BreakerConfig(fail_max=50)


@pytest.fixture
def fleet(tmp_path: Path, fresh_nats: NatsServer) -> Iterator[EchoFleet]:
    f = EchoFleet(tmp_path, fresh_nats.url)
    try:
        yield f
    finally:
        f.stop_all()


@contextlib.asynccontextmanager
async def discovery_on(nats_url: str, ttl_s: float,
                       *clients: Downstream[Stub]) -> AsyncIterator[Discovery]:
    """A discovery, the picker of `clients`; the first to touch the bucket creates it with
    `ttl_s`."""
    link = RegistryLink(nats_url, name="test-caller", ttl_s=ttl_s, auth=nats_auth())
    d = Discovery(link, transport=transport(), breakers=Breakers(TOLERANT))
    for client in clients:
        client.picker = d
    try:
        await d.start(wait_s=5)
        yield d
    finally:
        for client in clients:
            client.picker = None
        await d.stop()
        await link.close()


@pytest.fixture
async def echo_ds() -> AsyncIterator[Downstream[Stub]]:
    ds = Downstream("echo", Stub, cap_s=3.0, transport=transport(), breakers=Breakers(TOLERANT))
    yield ds
    await ds.close()


async def wait_for(cond: Callable[[], bool | Awaitable[bool]], within: float, what: str) -> float:
    """Poll `cond` until true; returns the seconds it took."""
    start = time.monotonic()
    while True:
        got = cond()
        if not isinstance(got, bool):
            got = await got
        if got:
            return time.monotonic() - start
        if time.monotonic() - start > within:
            raise AssertionError(f"timed out after {within}s waiting for {what}")
        await asyncio.sleep(0.02)


async def key_exists(nats_url: str, key: str) -> bool:
    nc = await nats.connect(nats_url, **nats_auth().options())
    try:
        kv = await nc.jetstream().key_value(BUCKET)
        try:
            await kv.get(key)
        except KeyNotFoundError:  # also KeyDeletedError
            return False
        return True
    finally:
        await nc.close()


async def get(ds: Downstream[Stub], pid: str, rid: str) -> product_pb2.GetProductResponse:
    with context.bind(request_id=rid):
        reply: product_pb2.GetProductResponse = await ds.call(
            lambda s: s.GetProduct, product_pb2.GetProductRequest(id=pid), idempotent=True
        )
    return reply


class CallStream:
    """`workers` callers calling without pause until stopped; counts outcomes."""

    def __init__(self, ds: Downstream[Stub], workers: int = 4) -> None:
        self.ds = ds
        self.ok = 0
        self.failures: list[BaseException] = []
        self._stop = asyncio.Event()
        self._tasks = [asyncio.create_task(self._run(i)) for i in range(workers)]

    async def _run(self, worker: int) -> None:
        n = 0
        while not self._stop.is_set():
            n += 1
            try:
                reply = await get(self.ds, f"p{n}", f"w{worker}-{n}")
                assert reply.product.id == f"p{n}"
                self.ok += 1
            except Exception as err:
                self.failures.append(err)
            await asyncio.sleep(0.005)

    async def stop(self) -> None:
        self._stop.set()
        await asyncio.gather(*self._tasks)


async def test_two_instances_register_and_share_calls_round_robin(
    fleet: EchoFleet,
    fresh_nats: NatsServer,
    echo_ds: Downstream[Stub],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    a = fleet.start("echo-a", ttl_s=5)
    b = fleet.start("echo-b", ttl_s=5)
    assert not a.addr.endswith(":0") and a.addr != b.addr  # the ports they really got

    async def both_listed() -> bool:
        return len(await list_instances(fresh_nats.url, auth=nats_auth())) == 2

    await wait_for(both_listed, 5, "both instances in the registry")
    listed = await list_instances(fresh_nats.url, auth=nats_auth())
    assert [(i.service, i.instance_id, i.addr, i.pid) for i in listed] == [
        ("echo", "echo-a", a.addr, a.proc.pid),
        ("echo", "echo-b", b.addr, b.proc.pid),
    ]
    assert all(i.version and 0 < time.time() - i.started_at < 60 for i in listed)

    async with discovery_on(fresh_nats.url, 5.0, echo_ds) as disc:
        assert sorted(disc.healthy_addrs("echo")) == sorted([a.addr, b.addr])
        rids = [f"rr-{i}" for i in range(20)]
        for rid in rids:
            await get(echo_ds, "x", rid)
        got_a = {r for r in a.request_ids() if r.startswith("rr-")}
        got_b = {r for r in b.request_ids() if r.startswith("rr-")}
        assert got_a | got_b == set(rids) and not got_a & got_b
        assert len(got_a) == len(got_b) == 10  # strict alternation

        # A fixed address (ECHO_ADDR, as the settings read it) bypasses discovery entirely.
        wiring = process_wiring(discovery=disc, pinned={"echo": b.addr})
        pinned = wiring.downstream("echo", Stub, cap_s=3.0)
        try:
            for i in range(6):
                await get(pinned, "x", f"pin-{i}")
            assert pinned.address == b.addr
        finally:
            await pinned.close()
        assert {f"pin-{i}" for i in range(6)} <= b.request_ids()
        assert not any(r.startswith("pin-") for r in a.request_ids())


async def test_breaker_states_travel_in_the_registry_value(
    fleet: EchoFleet, fresh_nats: NatsServer
) -> None:
    # echo-a's own downstream "product" is unreachable; its breaker opens after 2 failures.
    a = fleet.start("echo-a", ttl_s=30, PRODUCT_ADDR="127.0.0.1:1", SHOP_BREAKER_FAIL_MAX="2")
    pinned = Downstream("echo", Stub, cap_s=3.0, address=a.addr, transport=transport(),
                        breakers=Breakers(TOLERANT))
    try:
        for i in range(3):
            with pytest.raises(aio.AioRpcError) as info:
                await get(pinned, "forward:x", f"f-{i}")
            assert info.value.code() is grpc.StatusCode.UNAVAILABLE
    finally:
        await pinned.close()

    async def shows_open() -> bool:
        found = await list_instances(fresh_nats.url, auth=nats_auth())
        return bool(found) and dict(found[0].breakers).get("product") == "open"

    # The TTL is 30 s: only the refresh-on-change can make this appear this fast.
    await wait_for(shows_open, 3, "product breaker 'open' in echo-a's registry value")


async def test_kill9_instance_expires_and_calls_keep_succeeding(
    fleet: EchoFleet, fresh_nats: NatsServer, echo_ds: Downstream[Stub]
) -> None:
    async with discovery_on(fresh_nats.url, 2.0, echo_ds) as disc:
        ttl = 2.0
        a = fleet.start("echo-a", ttl_s=ttl)
        b = fleet.start("echo-b", ttl_s=ttl)
        await wait_for(lambda: len(disc.healthy_addrs("echo")) == 2, 5, "two live instances")

        stream = CallStream(echo_ds)
        await asyncio.sleep(0.5)
        os.kill(a.proc.pid, signal.SIGKILL)
        a.proc.wait()
        killed_at = time.monotonic()
        await asyncio.sleep(0.5)
        served_by_a_before = len(a.request_ids())

        await wait_for(
            lambda: _not(key_exists(fresh_nats.url, "echo.echo-a")),
            ttl + 2.0,
            "echo-a's key to expire",
        )
        expired_after = time.monotonic() - killed_at
        await wait_for(
            lambda: [v.instance_id for v in disc.instances("echo")] == ["echo-b"],
            2.0,
            "echo-a to leave the live list",
        )
        await asyncio.sleep(0.3)
        await stream.stop()

        assert expired_after <= ttl + 1.0, expired_after
        assert stream.failures == []
        assert stream.ok > 50
        assert served_by_a_before > 0  # the stream really was spread over both
        assert await key_exists(fresh_nats.url, "echo.echo-b")
        assert b.proc.poll() is None


async def _not(aw: Awaitable[bool]) -> bool:
    return not await aw


async def test_sigterm_deregisters_at_once_with_no_failed_calls(
    fleet: EchoFleet, fresh_nats: NatsServer, echo_ds: Downstream[Stub]
) -> None:
    async with discovery_on(fresh_nats.url, 30.0, echo_ds) as disc:
        a = fleet.start("echo-a", ttl_s=30)  # long TTL: only the delete can remove the key fast
        b = fleet.start("echo-b", ttl_s=30)
        await wait_for(lambda: len(disc.healthy_addrs("echo")) == 2, 5, "two live instances")
        assert await key_exists(fresh_nats.url, "echo.echo-a")

        stream = CallStream(echo_ds, workers=8)
        await asyncio.sleep(0.5)
        os.kill(a.proc.pid, signal.SIGTERM)
        gone_after = await wait_for(
            lambda: _not(key_exists(fresh_nats.url, "echo.echo-a")), 5, "echo-a's key to be deleted"
        )
        left_after = await wait_for(
            lambda: [v.instance_id for v in disc.instances("echo")] == ["echo-b"],
            2.0,
            "echo-a to leave the live list",
        )
        code = await asyncio.to_thread(a.proc.wait, 10)
        await asyncio.sleep(0.3)
        await stream.stop()

        assert gone_after < 1.5, gone_after
        assert left_after < 1.0, left_after
        assert code == 0
        assert stream.failures == []
        assert stream.ok > 50
        assert any(r.startswith("w") for r in a.request_ids())
        assert '"deregistered"' in a.log_text()
        assert await key_exists(fresh_nats.url, "echo.echo-b") and b.proc.poll() is None


async def test_fixed_addr_works_without_nats(
    fleet: EchoFleet, monkeypatch: pytest.MonkeyPatch
) -> None:
    fleet.nats_url = "nats://127.0.0.1:1"  # nothing listens there
    started = time.monotonic()
    a = fleet.start("echo-a", ttl_s=2)
    assert time.monotonic() - started < 15
    ds = process_wiring(pinned={"echo": a.addr}).downstream("echo", Stub, cap_s=3.0)
    try:
        for i in range(3):
            reply = await get(ds, f"n{i}", f"fixed-{i}")
            assert reply.product.id == f"n{i}"
        assert ds.address == a.addr
    finally:
        await ds.close()
    assert {f"fixed-{i}" for i in range(3)} <= a.request_ids()
    assert "registry: NATS not reachable" in a.log_text()
    assert a.proc.poll() is None


async def test_killed_instance_restarted_on_its_port_is_used_again_within_seconds(
    fleet: EchoFleet, fresh_nats: NatsServer, echo_ds: Downstream[Stub]
) -> None:
    """kill -9 of one of two instances: no call fails (the other takes them all), and once
    it is back on its port (the supervisor's restart) and SERVING, it gets calls again
    within seconds: taken out of the ring, never out of reach."""
    async with discovery_on(fresh_nats.url, 10.0, echo_ds) as disc:
        a = fleet.start("echo-a", ttl_s=10)
        b = fleet.start("echo-b", ttl_s=10)
        await wait_for(lambda: len(disc.healthy_addrs("echo")) == 2, 5, "two live instances")
        port = a.addr.rsplit(":", 1)[1]
        stream = CallStream(echo_ds)
        await asyncio.sleep(0.3)
        os.kill(a.proc.pid, signal.SIGKILL)
        a.proc.wait()
        await wait_for(lambda: disc.healthy_addrs("echo") == [b.addr], 3, "echo-a taken out")
        await asyncio.sleep(1.0)  # the supervisor's pause before a restart
        before = len(a.request_ids())
        again = fleet.start("echo-a", ttl_s=10, ECHO_PORT=port)  # returns once serving
        serving_at = time.monotonic()
        assert again.addr == a.addr
        took = await wait_for(lambda: len(again.request_ids()) > before, 10,
                              "calls to reach the restarted echo-a")
        await stream.stop()
        print(f"\nrestarted instance used again {took:.2f} s after serving "
              f"({time.monotonic() - serving_at:.2f} s)")
        assert stream.failures == []
        # About a second on a quiet machine; the bound is far below what it replaces
        # (waiting for grpc's reconnect back-off, up to 2 min, or a breaker's 30 s reset)
        # and leaves room for a loaded one.
        assert took < 5.0, took
