"""The stock ledger under faults, on both backends: the inventory is killed -9 in the middle
of a burst of reservations and restarted, and `shopctl inventory rebuild --verify` finds the
projection equal to the replay of the events; then a stock row is corrupted behind the
service's back: verify names it (exit 1), rebuild rewrites it, verify is clean again."""

from __future__ import annotations

import asyncio
import os
import sqlite3
import sys
import uuid

import grpc
import pytest
from grpc import aio
from shop.inventory.v1 import inventory_pb2 as pb
from shop.inventory.v1 import inventory_pb2_grpc

from ops.process import ServiceProcess
from tests.fixtures_services import START_TIMEOUT_S, ServiceFactory
from tests.fixtures_storage import both_backends
from tests.support import mesh

pytestmark = [pytest.mark.timeout(180), both_backends]


async def shopctl(proc: ServiceProcess, *args: str) -> tuple[int, str]:
    env = {**os.environ, "INVENTORY_ADDR": proc.addr, "SHOP_DATA_DIR": str(proc.data_dir)}
    child = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "ops.shopctl", "inventory", "rebuild", *args, env=env,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    out, err = await asyncio.wait_for(child.communicate(), 60)
    assert child.returncode is not None
    assert err == b"", err
    return child.returncode, out.decode()


def corrupt(backend: str, request: pytest.FixtureRequest, proc: ServiceProcess,
            sql: str) -> None:
    """A hand edit of the served stock row, straight into the service's database."""
    if backend == "sqlite":
        with sqlite3.connect(proc.data_dir / "inventory.db") as conn:
            conn.execute(sql)
        return
    request.getfixturevalue("pg_server").psql(sql, "shop_inventory")


async def test_kill_minus_9_mid_burst_leaves_a_ledger_verify_accepts_and_a_corrupt_row_is_found(
        services: ServiceFactory, backend: str, request: pytest.FixtureRequest) -> None:
    inv = services.start("inventory", INVENTORY_SNAPSHOT_EVERY="3")
    pid = f"p-{uuid.uuid4().hex[:8]}"
    async with mesh.channel(inv.addr) as channel:
        stub = inventory_pb2_grpc.InventoryServiceStub(channel)
        await stub.SetStock(pb.SetStockRequest(product_id=pid, available=20_000), timeout=10)

        counter = iter(range(10_000))
        answered: list[int] = []
        enough = asyncio.Event()  # some reservations answered: time for the kill

        async def worker() -> tuple[int, grpc.StatusCode]:
            """Reserve one unit after another until a call fails (the kill)."""
            done = 0
            for i in counter:
                try:
                    await stub.ReserveStock(pb.ReserveStockRequest(
                        order_id=f"{pid}-o{i}",
                        items=[pb.StockItem(product_id=pid, quantity=1)]), timeout=5)
                except aio.AioRpcError as err:
                    return done, err.code()
                done += 1
                answered.append(i)
                if len(answered) >= 20:
                    enough.set()
            return done, grpc.StatusCode.OK

        burst = [asyncio.create_task(worker()) for _ in range(16)]

        # Kill once some reservations have landed, with others in flight.
        await asyncio.wait_for(enough.wait(), 30)
        inv.kill()
        results = await asyncio.gather(*burst)
        assert sum(n for n, _ in results) >= 20
        assert all(code != grpc.StatusCode.OK for _, code in results), results
        await asyncio.to_thread(inv.restart, START_TIMEOUT_S, graceful=False)

    code, out = await shopctl(inv, "--verify", "--from-scratch")
    assert (code, out.splitlines()[-1]) == (0, "no difference"), out
    code, out = await shopctl(inv, "--verify")
    assert (code, out.splitlines()[-1]) == (0, "no difference"), out

    async with mesh.channel(inv.addr) as channel:
        stub = inventory_pb2_grpc.InventoryServiceStub(channel)
        truth = (await stub.GetStock(pb.GetStockRequest(product_id=pid), timeout=5)).stock
        assert truth.available + truth.reserved == 20_000 and truth.reserved >= 20
        corrupt(backend, request, inv,
                f"UPDATE stock SET available = available + 7, total = total + 7"
                f" WHERE product_id = '{pid}'")
        served = (await stub.GetStock(pb.GetStockRequest(product_id=pid), timeout=5)).stock
        assert served.available == truth.available + 7

        code, out = await shopctl(inv, "--verify")
        assert code == 1, out
        (line,) = [ln for ln in out.splitlines() if ln.startswith(pid)]
        assert (f"served available {truth.available + 7} (events say {truth.available})"
                in line), out
        assert out.splitlines()[-1].startswith("1 product differ")
        again = (await stub.GetStock(pb.GetStockRequest(product_id=pid), timeout=5)).stock
        assert again == served  # verify wrote nothing

        code, out = await shopctl(inv)
        assert (code, out.splitlines()[-1]) == (0, "rewrote 1 of 1"), out
        fixed = (await stub.GetStock(pb.GetStockRequest(product_id=pid), timeout=5)).stock
        assert fixed == truth
    code, out = await shopctl(inv, "--verify", "--from-scratch")
    assert (code, out.splitlines()[-1]) == (0, "no difference"), out
