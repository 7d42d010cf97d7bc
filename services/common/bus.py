"""The NATS connection every process shares: JetStream streams and event publishing.

The events stream keeps an event `SHOP_STREAM_MAX_AGE_S` (7 days) and at most
`SHOP_STREAM_MAX_BYTES` (1 GiB, the oldest go first); 0 means no limit (a `NatsConfig`
handed to `Bus.connect`). Both are applied whenever a process creates or updates the
stream. The max age is the stream's horizon: no event older than it can be delivered
again, so the consumers' inboxes forget events after it plus a margin
(`inbox_retention_s`, or `SHOP_INBOX_RETAIN_S`).

On a JetStream cluster (`NATS_URL` naming several servers) both streams keep
`stream_replicas()` copies (3 by default): an acknowledged publish is then on a majority
of the nodes, and losing one node loses no event and stops no publish for longer than the
stream's leader election.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from urllib.parse import urlsplit

import nats
from nats.aio.client import Client
from nats.errors import NoServersError
from nats.js import JetStreamContext
from nats.js.api import DiscardPolicy, PubAck, RetentionPolicy, StorageType, StreamConfig
from nats.js.errors import NotFoundError
from shop.events.v1 import envelope_pb2

from services.common.cancellation import within
from services.common.config import NatsConfig
from services.common.events import AGGREGATES, DLQ_STREAM, STREAM
from services.common.natsauth import NatsAuth
from services.common.natsurl import nats_servers, stream_replicas
from services.common.settings import DUPLICATE_WINDOW_S

__all__ = ["DUPLICATE_WINDOW_S", "Bus", "OutMsg", "envelope_headers", "inbox_retention_s",
           "probe", "stream_differs"]

log = logging.getLogger("shop.bus")

DEFAULT_MAX_AGE_S = 7 * 24 * 3600.0
DEFAULT_MAX_BYTES = 1024**3
# Past the stream's horizon, an inbox row is kept this much longer (clock skew, a
# consumer that was down while the event aged out).
INBOX_MARGIN_S = 3600.0


def inbox_retention_s(config: NatsConfig) -> float:
    """How long an inbox row is kept: SHOP_INBOX_RETAIN_S, else the stream's max age plus
    INBOX_MARGIN_S; 0 (a stream without max age) keeps them for ever."""
    explicit = config.inbox_retain_s
    if explicit is not None and explicit >= 0:
        return explicit
    age = config.stream_max_age_s
    return age + INBOX_MARGIN_S if age > 0 else 0.0


@dataclass(frozen=True, slots=True)
class OutMsg:
    """A publish ready to go: already serialized, headers already built."""

    subject: str
    data: bytes
    headers: dict[str, str] = field(default_factory=dict)


def envelope_headers(event_id: str, correlation_id: str, traceparent: str) -> dict[str, str]:
    hdrs = {"Nats-Msg-Id": event_id}
    if correlation_id:
        hdrs["x-request-id"] = correlation_id
    if traceparent:
        hdrs["traceparent"] = traceparent
    return hdrs


def events_stream_config(replicas: int = 1, limits: NatsConfig | None = None) -> StreamConfig:
    limits = limits or NatsConfig()
    return StreamConfig(
        name=STREAM,
        num_replicas=replicas,
        subjects=[f"{a}.>" for a in AGGREGATES],
        storage=StorageType.FILE,
        retention=RetentionPolicy.LIMITS,
        duplicate_window=DUPLICATE_WINDOW_S,
        max_age=limits.stream_max_age_s,  # nats-py: seconds; 0 = no limit
        max_bytes=limits.stream_max_bytes or -1,
        discard=DiscardPolicy.OLD,
    )


def dlq_stream_config(replicas: int = 1) -> StreamConfig:
    return StreamConfig(
        name=DLQ_STREAM,
        num_replicas=replicas,
        subjects=["dlq.>"],
        storage=StorageType.FILE,
        retention=RetentionPolicy.LIMITS,
        discard=DiscardPolicy.OLD,
        duplicate_window=DUPLICATE_WINDOW_S,
    )


async def probe(url: str, *, timeout_s: float = 2.0) -> None:
    """Returns once a TCP connection to one of `url`'s servers (comma-separated) opened;
    raises OSError when none accepts one."""
    errors: list[str] = []
    for part in nats_servers(url):
        u = urlsplit(part if "://" in part else f"nats://{part}")
        host, port = u.hostname or "127.0.0.1", u.port or 4222
        try:
            _, writer = await within(asyncio.open_connection(host, port), timeout_s)
        except (OSError, TimeoutError) as e:
            errors.append(f"{host}:{port}: {e!r}")
            continue
        writer.close()
        with contextlib.suppress(Exception):
            await writer.wait_closed()
        return
    raise OSError(f"no NATS server reachable ({'; '.join(errors) or url})")


# Waits for the stream requests of `ensure_streams`. A JetStream cluster does not answer
# some requests made while the same stream is being created (a second create, an info or
# update of a stream not placed yet): the client only sees its wait end. A short wait and
# a retry get past that; the client's 5 s default cost a starting process 5-15 s.
ENSURE_REQUEST_S = 1.0
ENSURE_FOR_S = 10.0

# The settings a process applies to a stream; any other field is the server's.
_APPLIED = ("num_replicas", "storage", "retention", "duplicate_window", "max_age",
            "max_bytes", "discard")


def stream_differs(current: StreamConfig, wanted: StreamConfig) -> bool:
    """Whether `current` (as the server reports it) lacks any setting `wanted` makes (a
    field `wanted` leaves unset keeps the server's value)."""
    if sorted(current.subjects or []) != sorted(wanted.subjects or []):
        return True
    return any((w := getattr(wanted, f)) is not None and getattr(current, f) != w
               for f in _APPLIED)


# A stopping process drains its subscriptions for at most this long.
DRAIN_TIMEOUT_S = 2


class Bus:
    def __init__(self, nc: Client, name: str, *, replicas: int = 1,
                 config: NatsConfig | None = None) -> None:
        self.nc = nc
        self.name = name
        self.replicas = replicas  # copies of each stream this process creates
        # The streams' limits and the inboxes' retention (SHOP_STREAM_*, SHOP_INBOX_*).
        self.config = config or NatsConfig()
        self.js: JetStreamContext = nc.jetstream()
        self.closing = False  # set by close(): a disconnect is then expected

    @classmethod
    async def connect(cls, url: str, *, name: str, auth: NatsAuth,
                      config: NatsConfig | None = None, connect_for_s: float = 10.0) -> Bus:
        """Connect as `auth`'s identity (retrying for `connect_for_s`, then raising), then
        reconnect forever with a short wait. `connect_for_s=0`: one attempt. `url` may
        list several servers (a cluster): the client knows them all and moves to a live
        one. `config`: the streams' limits and replicas (default: shop's defaults)."""
        config = config or NatsConfig()

        holder: list[Bus] = []

        async def on_error(e: Exception) -> None:
            log.debug("nats error", extra={"error": repr(e)})

        async def on_disconnect() -> None:
            if holder and holder[0].closing:
                log.debug("nats disconnected (closing)")
            else:
                log.warning("nats disconnected")

        async def on_reconnect() -> None:
            log.info("nats reconnected")

        deadline = time.monotonic() + connect_for_s
        while True:
            try:
                # nats.connect with endless reconnects never gives up on a first connect:
                # see that a server listens first, so an unreachable NATS fails here.
                await probe(url)
                nc = await nats.connect(
                    nats_servers(url), name=name, allow_reconnect=True, max_reconnect_attempts=-1,
                    reconnect_time_wait=0.25, connect_timeout=2, error_cb=on_error,
                    disconnected_cb=on_disconnect, reconnected_cb=on_reconnect,
                    # Publishes made while reconnecting are buffered up to this size.
                    pending_size=16 * 1024 * 1024,
                    drain_timeout=DRAIN_TIMEOUT_S,
                    **auth.options(),  # TLS as this identity (SHOP_MTLS)
                )
                bus = cls(nc, name, replicas=stream_replicas(url, config.replicas),
                          config=config)
                holder.append(bus)
                return bus
            except (TimeoutError, NoServersError, OSError):
                if time.monotonic() >= deadline:
                    raise
                await asyncio.sleep(0.2)

    async def ensure_streams(self) -> None:
        """Create SHOP_EVENTS and SHOP_DLQ, or update them where their limits or replicas
        differ from this process's; safe when instances race. Raises once a stream is
        still not settled after ENSURE_FOR_S (the caller retries with back-off)."""
        for config in (events_stream_config(self.replicas, self.config),
                       dlq_stream_config(self.replicas)):
            await self._ensure_stream(config)

    async def _ensure_stream(self, config: StreamConfig) -> None:
        deadline = time.monotonic() + ENSURE_FOR_S
        attempt = 0
        while True:
            try:
                await self._create_or_update(config)
                return
            except Exception as e:
                attempt += 1
                if time.monotonic() >= deadline:
                    raise
                if attempt == 1:  # one line per stream, not per attempt
                    log.info("stream not settled yet; retrying",
                             extra={"stream": config.name, "error": repr(e)})
                await asyncio.sleep(min(0.1 * attempt, 1.0))

    async def _create_or_update(self, config: StreamConfig) -> None:
        assert config.name is not None
        js = self.nc.jetstream(timeout=ENSURE_REQUEST_S)
        try:
            info = await js.stream_info(config.name)
        except NotFoundError:
            await js.add_stream(config)
            return
        # An update is a cluster-wide proposal: every process starting at once would
        # otherwise make one per stream, for nothing when the stream is already right.
        if stream_differs(info.config, config):
            await js.update_stream(config)

    async def publish(self, envelope: envelope_pb2.Envelope, *, timeout_s: float = 5.0) -> PubAck:
        hdrs = envelope_headers(envelope.id, envelope.correlation_id, envelope.traceparent)
        return await self.js.publish(envelope.subject, envelope.SerializeToString(),
                                     timeout=timeout_s, headers=hdrs)

    async def publish_batch(self, msgs: Sequence[OutMsg], *,
                            timeout_s: float = 5.0) -> list[PubAck | BaseException]:
        """Publish in order on the one connection with every ack in flight at once.

        Returns one PubAck or exception per message, in order; acks not back within
        `timeout_s` are TimeoutErrors (the message may still be stored: callers retry and
        the Nats-Msg-Id duplicate window drops the repeat).
        """
        futures: list[asyncio.Future[PubAck]] = []
        results: list[PubAck | BaseException] = []
        for m in msgs:
            try:
                fut = await self.js.publish_async(m.subject, m.data, headers=dict(m.headers),
                                                  wait_stall=timeout_s)
            except Exception as e:  # disconnected, buffer full: the rest fail too
                results.append(e)
                break
            futures.append(fut)
        if futures:
            _, pending = await asyncio.wait(futures, timeout=timeout_s)
            for fut in pending:
                fut.cancel()
        ordered: list[PubAck | BaseException] = []
        for fut in futures:
            if fut.cancelled():
                ordered.append(TimeoutError("publish ack timed out"))
            elif (exc := fut.exception()) is not None:
                ordered.append(exc)
            else:
                ordered.append(fut.result())
        return ordered + results

    async def close(self) -> None:
        """Drain (subscriptions end, pending publishes flushed, at most DRAIN_TIMEOUT_S),
        then close; a connection that is not up (NATS gone, reconnecting) is just closed.
        Never raises: it runs while the process stops."""
        self.closing = True
        nc = self.nc
        if nc.is_closed:
            return
        if nc.is_connected:
            try:
                await nc.drain()
                return
            except Exception as e:
                log.debug("nats drain failed, closing", extra={"error": repr(e)})
        try:
            await nc.close()
        except Exception as e:
            log.debug("nats close failed", extra={"error": repr(e)})
