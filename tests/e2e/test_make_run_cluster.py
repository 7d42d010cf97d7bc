"""`make run NATS_CLUSTER=3`: three clustered nodes, every process healthy, the streams and
the registry at three replicas; kill -9 of the events stream's leader node leaves the
system serving and publishing through the other two."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from shop.events.v1 import envelope_pb2

from ops.process import grpc_health
from services.common.bus import Bus
from services.common.events import DLQ_STREAM, ORDER_CREATED, STREAM
from services.common.settings import SERVICES, health_name
from tests.e2e.test_make_run import START_TIMEOUT_S, ShopRun
from tests.support.mesh import nats_auth

pytestmark = pytest.mark.timeout(180)


def _free_run(n: int) -> int:
    """The first of `n` consecutive free loopback ports."""
    for _ in range(200):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            first = s.getsockname()[1]
        if first + n > 65535:
            continue
        socks = []
        try:
            for port in range(first, first + n):
                sock = socket.socket()
                socks.append(sock)
                sock.bind(("127.0.0.1", port))
            return int(first)
        except OSError:
            continue
        finally:
            for sock in socks:
                sock.close()
    raise RuntimeError("no run of free ports")


def _node_pid(data_dir: Path, node: str) -> int:
    index = node.rsplit("-", 1)[1]
    (ports_file,) = (data_dir / "nats" / f"node-{index}" / "ports").glob("*.ports")
    return int(ports_file.stem.rsplit("_", 1)[1])


@pytest.fixture
def cluster_run(tmp_path: Path) -> Iterator[ShopRun]:
    client, routes = _free_run(3), _free_run(3)
    run = ShopRun(tmp_path / "var", {"NATS_CLUSTER": "3", "NATS_PORT": str(client),
                                     "NATS_ROUTE_PORT": str(routes)})
    run.ports["nats"] = client
    try:
        yield run
    finally:
        run.cleanup()


async def test_make_run_with_a_three_node_cluster(cluster_run: ShopRun) -> None:
    cluster_run.wait_for("processes healthy in", START_TIMEOUT_S)
    doc = cluster_run.instances()
    first = cluster_run.ports["nats"]
    assert doc["nats_url"] == ",".join(f"nats://127.0.0.1:{first + i}" for i in range(3))
    assert "cluster of 3" in cluster_run.output
    bus = await Bus.connect(doc["nats_url"], name="cluster-e2e", auth=nats_auth())
    try:
        deadline = time.monotonic() + 30
        while True:  # the services create the streams once connected
            try:
                events = await bus.js.stream_info(STREAM)
                dlq = await bus.js.stream_info(DLQ_STREAM)
                registry = await bus.js.stream_info("KV_shop_registry")
                break
            except Exception:
                assert time.monotonic() < deadline, "streams not created"
                await asyncio.sleep(0.3)
        for info in (events, dlq, registry):
            assert info.config.num_replicas == 3, info.config
            assert info.cluster is not None and len(info.cluster.replicas or []) == 2
        assert events.cluster is not None
        leader = events.cluster.leader or ""
        assert leader
        os.kill(_node_pid(cluster_run.data_dir, leader), signal.SIGKILL)
        deadline = time.monotonic() + 30
        while True:  # published and acknowledged by the two nodes left
            try:
                env = envelope_pb2.Envelope(id=f"e2e-{time.monotonic_ns()}",
                                            subject=ORDER_CREATED)
                ack = await bus.publish(env, timeout_s=2.0)
                break
            except Exception:
                assert time.monotonic() < deadline, "no publish after the leader's loss"
                await asyncio.sleep(0.3)
        assert ack.stream == STREAM
        new = (await bus.js.stream_info(STREAM)).cluster
        # An election took place (the restarted node may even have won it again).
        assert new is not None and new.leader
        assert new.leader_since != events.cluster.leader_since
        # The supervisor starts the dead node again; it catches up and is current.
        cluster_run.wait_for(f"NATS node {leader} died; started it again", 30)
        deadline = time.monotonic() + 30
        while True:
            cl = (await bus.js.stream_info(STREAM)).cluster
            peers = {p.name: p for p in (cl.replicas or [])} if cl else {}
            if cl and (cl.leader == leader or (
                    leader in peers and peers[leader].current and not peers[leader].lag)):
                break
            assert time.monotonic() < deadline, f"{leader} not current again: {cl}"
            await asyncio.sleep(0.3)
    finally:
        await bus.close()
    for inst in doc["instances"]:
        if inst["service"] in SERVICES:
            assert await asyncio.to_thread(grpc_health, inst["addr"], 2.0,
                                           health_name(inst["service"]),
                                           server=inst["service"]) == "SERVING"
    assert cluster_run.interrupt() == 0
