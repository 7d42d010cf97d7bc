"""The grown shop's events in JetStream: published in windows of async publishes, then the
services' durable consumers created caught up with them.

The fill's own nats-server keeps its default fsync interval (a clean stop writes
everything out): the store it leaves is the one a server with `sync_interval: always`
reads, only written faster. The consumers are created with the services' settings and
then reset past the last event (`$JS.API.CONSUMER.RESET`), as if they had handled every
event: a service that starts on the filled store updates its consumer and finds nothing
pending, as a grown system's consumers would.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import nats
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy

from bench.fill_plan import CONSUMERS, Event
from ops.natsd import NatsServer
from services.common.bus import dlq_stream_config, envelope_headers, events_stream_config
from services.common.cancellation import within
from services.common.events import STREAM

__all__ = ["FillNats", "fill_stream"]

# Async publishes in flight at once: enough to keep the server busy, few enough that a
# refused publish is seen soon.
WINDOW = 4096
# The consumers' settings, as services.common.consumer creates them.
_MAX_DELIVER = 5
_ACK_WAIT_S = 30.0


class FillNats(NatsServer):
    """A plain nats-server for the fill: JetStream with the default sync interval."""

    def _write_config(self) -> None:
        store = self.data_dir / "jetstream"
        store.mkdir(parents=True, exist_ok=True)
        self.conf_path.write_text(
            f'# written by bench/fill_stream.py (the fill only)\nlisten: "{self.host}:-1"\n'
            f'jetstream {{\n  store_dir: "{store}"\n}}\n')


def fill_stream(nats_dir: Path, events: Sequence[Event]) -> dict[str, Any]:
    """Publish `events` into a new store under `nats_dir`; the stream's state and how
    long it took."""
    t0 = time.perf_counter()
    server = FillNats(nats_dir, secured=False)
    server.start()
    try:
        result = asyncio.run(_publish(server.url, events))
    finally:
        server.stop(timeout_s=120.0)  # a clean stop: index files written, nothing to rebuild
    result["seconds"] = round(time.perf_counter() - t0, 2)
    # Wall time once the server stopped, just after the last publish (a bound a little
    # late, never early): a store restarts slowly while its messages are younger than
    # the stream's duplicate window (see bench.grown.settle_wait_s).
    result["published_until"] = time.time()
    return result


async def _publish(url: str, events: Sequence[Event]) -> dict[str, Any]:
    nc = await nats.connect(url, pending_size=64 * 1024 * 1024)
    try:
        js = nc.jetstream(publish_async_max_pending=WINDOW)
        await js.add_stream(events_stream_config())
        await js.add_stream(dlq_stream_config())
        failures: list[str] = []

        def check(fut: asyncio.Future[Any]) -> None:
            if not fut.cancelled() and fut.exception() is not None:
                failures.append(repr(fut.exception()))

        t0 = time.perf_counter()
        for e in events:
            fut = await js.publish_async(
                e.subject, e.data, headers=envelope_headers(e.id, e.correlation_id, e.traceparent))
            fut.add_done_callback(check)
            if failures:
                raise RuntimeError(f"publish refused: {failures[0]}")
        if js.publish_async_pending():
            await within(js.publish_async_completed(), 120.0)
        publish_s = time.perf_counter() - t0
        if failures:
            raise RuntimeError(f"{len(failures)} publishes refused, first: {failures[0]}")
        info = await js.stream_info(STREAM)
        if info.state.messages != len(events):
            raise RuntimeError(f"stream holds {info.state.messages} events, "
                               f"{len(events)} published")
        last = int(info.state.last_seq)
        for _db, durable, subjects in CONSUMERS:
            await js.add_consumer(STREAM, ConsumerConfig(
                name=durable, durable_name=durable, deliver_policy=DeliverPolicy.ALL,
                ack_policy=AckPolicy.EXPLICIT, ack_wait=_ACK_WAIT_S, max_deliver=_MAX_DELIVER,
                filter_subjects=sorted(subjects)))
            reply = await nc.request(f"$JS.API.CONSUMER.RESET.{STREAM}.{durable}",
                                     json.dumps({"seq": last + 1}).encode(), timeout=30.0)
            answer = json.loads(reply.data)
            if "error" in answer:
                raise RuntimeError(f"reset of {durable}: {answer['error']}")
            cinfo = await js.consumer_info(STREAM, durable)
            if cinfo.num_pending:
                raise RuntimeError(f"{durable} still has {cinfo.num_pending} pending")
        return {"messages": int(info.state.messages), "bytes": int(info.state.bytes),
                "last_seq": last, "publish_s": round(publish_s, 2),
                "per_s": round(len(events) / publish_s, 1) if publish_s else 0.0,
                "consumers": [d for _, d, _ in CONSUMERS]}
    finally:
        await nc.close()
