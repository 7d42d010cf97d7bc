"""Raw JetStream: publish with 64 acks in flight, then pull+ack what was published.

`python -m bench.raw.jetstream --nats URL --seconds S --warmup W` prints one JSON line
{"publish": Measured, "pull_ack": Measured}. The server is shop's embedded NATS config
(ops.natsd: file storage, sync_interval always), started fresh by the caller. Messages
are the size of a real shop envelope and carry a Nats-Msg-Id, as shop's do.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
import uuid
from collections.abc import Callable
from typing import Any

import nats
import uvloop
from nats.js.api import AckPolicy, ConsumerConfig, StorageType, StreamConfig
from shop.order.v1 import order_pb2

from bench.stats import Measured, percentile
from services.common.outbox import new_envelope

__all__ = ["IN_FLIGHT", "main", "sample_event"]

IN_FLIGHT = 64
FETCH_BATCH = 64


def sample_event(n: int = 0) -> order_pb2.OrderCreated:
    """A typical event payload: an order of one item."""
    order = order_pb2.Order(
        id=uuid.uuid4().hex, user_id=uuid.uuid4().hex, total_cents=24900, currency="USD",
        status=order_pb2.ORDER_STATUS_PENDING,
        items=[order_pb2.OrderItem(product_id="espresso-machine", quantity=1,
                                   unit_price_cents=24900)])
    order.create_time.GetCurrentTime()
    return order_pb2.OrderCreated(order=order)


async def _publish_for(js: nats.js.JetStreamContext, data: bytes, seconds: float
                       ) -> tuple[int, float, list[float]]:
    latencies: list[float] = []
    pending: set[asyncio.Future[Any]] = set()

    def acked(sent: float) -> Callable[[asyncio.Future[Any]], None]:
        return lambda _fut: latencies.append(time.perf_counter() - sent)

    count = 0
    t0 = time.perf_counter()
    stop = t0 + seconds
    while time.perf_counter() < stop:
        sent = time.perf_counter()
        fut = await js.publish_async("raw.event", data,
                                     headers={"Nats-Msg-Id": uuid.uuid4().hex})
        fut.add_done_callback(acked(sent))
        pending.add(fut)
        count += 1
        if len(pending) >= IN_FLIGHT:
            _, pending = await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
    if pending:
        await asyncio.wait(pending)
    return count, time.perf_counter() - t0, latencies


async def run(url: str, seconds: float, warmup_s: float) -> dict[str, object]:
    nc = await nats.connect(url)
    js = nc.jetstream()
    await js.add_stream(StreamConfig(name="RAW", subjects=["raw.>"], storage=StorageType.FILE,
                                     duplicate_window=120.0))
    env = new_envelope("order.created", sample_event(), source="bench", aggregate_id="raw",
                       correlation_id=uuid.uuid4().hex)
    data = env.SerializeToString()
    warm, _, _ = await _publish_for(js, data, warmup_s)
    count, elapsed, lat = await _publish_for(js, data, seconds)
    ms = [x * 1000 for x in lat]
    publish = Measured(count / elapsed, percentile(ms, 50), percentile(ms, 99), ok=count,
                       seconds=elapsed, tool="nats-py", latency_of="publish ack (64 in flight)",
                       extra={"message_bytes": len(data)})

    total = warm + count
    await js.add_consumer("RAW", ConsumerConfig(durable_name="raw", ack_policy=AckPolicy.EXPLICIT,
                                                max_ack_pending=-1))
    sub = await js.pull_subscribe_bind(durable="raw", stream="RAW")
    consumed = 0
    batch_ms: list[float] = []
    t0 = time.perf_counter()
    start: float | None = None
    base = 0
    cap = t0 + 2 * seconds + 5
    while consumed < total and time.perf_counter() < cap:
        try:
            msgs = await sub.fetch(FETCH_BATCH, timeout=1.0)
        except TimeoutError:
            continue
        tb = time.perf_counter()
        for msg in msgs:
            await msg.ack()
        if start is not None:
            batch_ms.append((time.perf_counter() - tb) * 1000)
        consumed += len(msgs)
        if start is None and consumed >= warm:
            start, base = time.perf_counter(), consumed
    end = time.perf_counter()
    done = consumed - base
    window = end - start if start is not None else 0.0
    pull = Measured(done / window if window > 0 else 0.0, percentile(batch_ms, 50),
                    percentile(batch_ms, 99), ok=done, errors=total - consumed, seconds=window,
                    tool="nats-py", latency_of=f"acking one fetched batch (<= {FETCH_BATCH})")
    await nc.drain()
    return {"publish": publish.to_json(), "pull_ack": pull.to_json()}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.raw.jetstream")
    parser.add_argument("--nats", required=True)
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--warmup", type=float, default=1.0)
    args = parser.parse_args(argv)
    result = uvloop.run(run(args.nats, args.seconds, args.warmup))
    sys.stdout.write(json.dumps(result) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
