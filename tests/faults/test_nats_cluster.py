"""kill -9 of one node of a 3-node JetStream cluster while the system takes orders.

The streams and the registry bucket run at 3 replicas. The node holding the events
stream's leader (first run) or a follower (second run) is killed, left down a while, then
restarted on its store. Judged afterwards: every order final and the full invariant check;
every event some outbox marked sent (the publish was acknowledged) is in the stream, the
ones acknowledged before the kill included; none twice; the restarted node caught up; and
how long the stream had no leader (printed, the figure of the run).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy
from nats.js.errors import ServiceUnavailableError
from shop.events.v1 import envelope_pb2

from ops.natscluster import NatsCluster
from ops.process import System, free_port, start_system
from services.common.bus import Bus
from services.common.events import DLQ_STREAM, STREAM
from tests.fixtures_services import FAULT_ENV, START_TIMEOUT_S
from tests.support.invariants import check_invariants
from tests.support.load import OrderClient, paced, set_stock
from tests.support.mesh import nats_auth
from tests.support.records import read_records
from tests.support.users import create_users

pytestmark = pytest.mark.timeout(240)

NODES = 3
STOCK = {"coffee-grinder": 10_000, "chef-knife": 10_000, "yoga-mat": 10_000}
USERS = 8


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[NatsCluster]:
    nodes = NatsCluster(tmp_path / "nats", [free_port() for _ in range(NODES)],
                        [free_port() for _ in range(NODES)])
    nodes.start()
    try:
        yield nodes
    finally:
        nodes.stop()


@pytest.fixture
def cluster_system(cluster: NatsCluster, tmp_path: Path) -> Iterator[System]:
    data = tmp_path / "data"
    data.mkdir()
    sysm = start_system(data, cluster.url, env=FAULT_ENV, ready_timeout=START_TIMEOUT_S)
    try:
        yield sysm
    finally:
        sysm.stop()


@dataclass
class LeaderWatch:
    """The events stream's leader, asked every `every_s` (each ask bounded by `ask_s`)
    through a client of the nodes that stay up: what it sees is the cluster, not a
    client's own reconnect."""

    bus: Bus
    every_s: float = 0.1
    ask_s: float = 0.5
    samples: list[tuple[float, str]] = field(default_factory=list)  # "" = none answered

    async def leader(self) -> str:
        try:
            info = await self.bus.nc.jetstream(timeout=self.ask_s).stream_info(STREAM)
        except Exception:  # no leader to answer: an election
            return ""
        return (info.cluster.leader or "") if info.cluster else ""

    async def run(self) -> None:
        while True:
            self.samples.append((time.monotonic(), await self.leader()))
            await asyncio.sleep(self.every_s)

    def longest_gap_s(self, since: float) -> float:
        """The longest stretch after `since` with no leader, from the last sample with one
        before it to the first sample with one after it."""
        gap, last_led = 0.0, since
        for t, who in self.samples:
            if t < since:
                continue
            if who:
                gap = max(gap, t - last_led)
                last_led = t
        return gap


async def _stream_event_ids(bus: Bus) -> list[str]:
    """Every event id in SHOP_EVENTS, in stream order (a throwaway consumer)."""
    info = await bus.js.stream_info(STREAM)
    total = info.state.messages
    sub = await bus.js.pull_subscribe(
        ">", stream=STREAM,
        config=ConsumerConfig(deliver_policy=DeliverPolicy.ALL, ack_policy=AckPolicy.NONE))
    ids: list[str] = []
    try:
        deadline = time.monotonic() + 30
        while len(ids) < total:
            assert time.monotonic() < deadline, f"read {len(ids)} of {total} events"
            try:
                batch = await sub.fetch(500, timeout=1.0)
            except TimeoutError:
                continue
            except ServiceUnavailableError:
                # 503, no responders: the new consumer's leader is not reachable through
                # the routes yet (this client may have just moved off the restarted node).
                await asyncio.sleep(0.2)
                continue
            ids.extend(envelope_pb2.Envelope.FromString(m.data).id for m in batch)
    finally:
        await sub.unsubscribe()
    return ids


async def _caught_up(bus: Bus, node: str, timeout_s: float) -> float:
    """Seconds until `node` is a current replica with no lag on both streams."""
    t0 = time.monotonic()
    while True:
        ok = True
        for stream in (STREAM, DLQ_STREAM):
            try:
                cl = (await bus.js.stream_info(stream)).cluster
            except Exception:
                ok = False
                break
            peers = {} if cl is None else {p.name: p for p in cl.replicas or []}
            if cl is None or (cl.leader != node and not (
                    node in peers and peers[node].current and not peers[node].lag)):
                ok = False
        if ok:
            return time.monotonic() - t0
        assert time.monotonic() - t0 < timeout_s, f"{node} did not catch up in {timeout_s}s"
        await asyncio.sleep(0.2)


def _acked(sysm: System) -> set[str]:
    """Event ids some outbox marked sent: JetStream acknowledged their publish."""
    return {e.event_id for e in read_records(sysm.data_dir).events if e.sent}


@pytest.mark.parametrize(("victim", "orders"), [("leader", 300), ("follower", 150)])
async def test_node_kill_9_under_orders(cluster: NatsCluster, cluster_system: System,
                                        victim: str, orders: int) -> None:
    sysm = cluster_system
    run_s, kill_at_s, down_s = orders / 15, 3.0, 6.0
    users = await create_users(sysm.addr("user"), USERS, f"cluster-{victim}")
    await set_stock(sysm.addr("inventory"), STOCK)
    products = list(STOCK)
    watch_bus = await Bus.connect(cluster.url, name="cluster-check", auth=nats_auth())
    fault: dict[str, object] = {}
    watchers: list[tuple[LeaderWatch, asyncio.Task[None]]] = []

    async def kill_and_restart() -> None:
        await asyncio.sleep(kill_at_s)
        # The kill must meet acknowledged events. The relays connect to the cluster in the
        # background once their processes serve, so the first may come after kill_at_s.
        deadline = time.monotonic() + 30
        while not await asyncio.to_thread(_acked, sysm):
            assert time.monotonic() < deadline, "nothing was published 30 s into the load"
            await asyncio.sleep(0.2)
        fault["first_acked_s"] = time.monotonic() - t0
        info = await watch_bus.js.stream_info(STREAM)
        assert info.cluster is not None and info.config.num_replicas == NODES, info
        leader: str = info.cluster.leader or ""
        followers = sorted(p.name for p in info.cluster.replicas or [] if p.name)
        name = leader if victim == "leader" else followers[0]
        survivors = ",".join(n.url for n in cluster.nodes if n is not cluster.node(name))
        watch = LeaderWatch(await Bus.connect(survivors, name="leader-watch", auth=nats_auth()))
        watchers.append((watch, asyncio.create_task(watch.run())))
        await asyncio.sleep(0.5)  # a few samples from before the kill
        fault["acked_before"] = await asyncio.to_thread(_acked, sysm)
        fault["node"], fault["leader"] = name, leader
        fault["killed_at"] = time.monotonic()
        await asyncio.to_thread(cluster.node(name).kill)
        await asyncio.sleep(down_s)
        await asyncio.to_thread(cluster.node(name).start)
        fault["restarted_at"] = time.monotonic()

    t0 = time.monotonic()
    try:
        async with OrderClient(sysm.addr("order"), timeout_s=5, retry_for_s=30) as client:
            killer = asyncio.create_task(kill_and_restart())
            await paced(orders, run_s, 16, lambda i: client.create(
                users[i % USERS], {products[i % 3]: 1 + i % 2}, key=f"{victim}-{i}",
                card="tok_chargeDeclined" if i % 7 == 6 else "tok_visa"))
            await killer
        load_s = time.monotonic() - t0
        assert client.unexpected == [], client.unexpected

        report = await check_invariants(sysm, stock_set=STOCK, created=client.created,
                                        expect_orders=orders, timeout_s=90)
        report.assert_ok()
        node = str(fault["node"])
        catch_up_s = await _caught_up(watch_bus, node, timeout_s=30)
        acked = await asyncio.to_thread(_acked, sysm)
        in_stream = await _stream_event_ids(watch_bus)
    finally:
        for w, task in watchers:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
            await w.bus.close()
        await watch_bus.close()

    acked_before = fault["acked_before"]
    assert isinstance(acked_before, set)
    stream_set = set(in_stream)
    assert acked_before, "nothing was published before the kill"
    assert not acked_before - stream_set, f"{len(acked_before - stream_set)} events " \
                                          "acknowledged before the kill are gone"
    assert not acked - stream_set, f"{len(acked - stream_set)} acknowledged events missing"
    assert len(in_stream) == len(stream_set), "an event is in the stream twice"
    killed_at = float(str(fault["killed_at"]))
    watch = watchers[0][0]
    assert watch.samples[0][1], "the leader watch never saw a leader before the kill"
    no_leader_s = watch.longest_gap_s(killed_at)
    if victim == "follower":  # a follower's loss needs no election
        assert {who for _, who in watch.samples if who} == {fault["leader"]}, watch.samples
    print(f"\n{victim} {node} killed -9 for {down_s:g} s: {orders} orders in {load_s:.1f} s "
          f"({report.summary()}); events acked {len(acked)} (before the kill "
          f"{len(acked_before)}), in stream {len(in_stream)}, missing "
          f"{len(acked - stream_set)}; longest without a stream leader {no_leader_s:.2f} s; "
          f"restarted node caught up {catch_up_s:.2f} s after the check; first event acked "
          f"{float(str(fault['first_acked_s'])):.2f} s into the load")
