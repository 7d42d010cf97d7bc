"""/api/admin/*: what the operator console reads and does, for admins only.

Every route checks the bearer token itself: a valid token whose signed `roles` claim holds
"admin" (the user service puts it there; nothing a client sends can). Others get 401/403.

    GET  /api/admin/instances               the registry, as `shopctl status`, with health
    GET  /api/admin/orders/{id}/saga         an order's saga timeline (GetSagaHistory)
    POST /api/admin/orders/{id}/retry        resume a saga in REQUIRES_ATTENTION (RetrySaga)
    GET  /api/admin/dlq                      dead letters
    POST /api/admin/dlq/{id}/replay          replay one
    GET  /api/admin/events?after=N           the live tail: events seen since N

The console's NATS connection is made on first use and kept; the tail's subscription
starts then too (seeded with the stream's last events), so a gateway nobody operates
costs nothing.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections import deque
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any, TypeVar

import grpc
import nats
from google.protobuf.message import Message
from grpc import aio
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.js import JetStreamContext
from nats.js.errors import BucketNotFoundError, NotFoundError
from shop.events.v1 import envelope_pb2
from shop.order.v1 import order_pb2
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from gateway.auth import Identity, TokenVerifier, bearer_token
from gateway.errors import HttpError, from_domain_error, from_rpc_error
from gateway.upstreams import Caller
from ops.process import grpc_health, http_ok
from services.common import dlq, registry, timestamps
from services.common.cancellation import within
from services.common.clients import Rpc
from services.common.errors import DomainError
from services.common.events import AGGREGATES, STREAM
from services.common.natsauth import NatsAuth
from services.common.settings import health_name
from services.common.tls import Transport

ReqT = TypeVar("ReqT", bound=Message)
RespT = TypeVar("RespT", bound=Message)

log = logging.getLogger("shop.gateway.admin")

ADMIN_ROLE = "admin"
ADMIN_PREFIX = "/api/admin/"
TAIL_SIZE = 500  # events kept for the live tail
TAIL_SEED = 50  # recent events read from the stream when the tail starts
_MAX_ID = 128



def _json(body: Any, status: int = 200) -> Response:
    return Response(json.dumps(body, separators=(",", ":")), status,
                    media_type="application/json",
                    headers={"cache-control": "no-store"})


def _error(err: HttpError) -> Response:
    headers = {k.decode(): v.decode() for k, v in err.headers}
    return Response(err.body(), err.http_status, media_type="application/json",
                    headers={"cache-control": "no-store", **headers})


async def admin_identity(verifier: TokenVerifier, token: str) -> Identity:
    """The admin a token speaks for; 401 for a bad token, 403 for a non-admin."""
    identity = await verifier.verify_identity(token)
    if ADMIN_ROLE not in identity.roles:
        raise HttpError(403, "PERMISSION_DENIED", "this needs an admin account")
    return identity


@dataclass(frozen=True, slots=True)
class TailEvent:
    n: int
    subject: str
    time: float
    correlation_id: str
    source: str
    aggregate_id: str
    event_id: str

    def to_json(self) -> dict[str, Any]:
        return {"n": self.n, "subject": self.subject, "time": _iso(self.time),
                "correlationId": self.correlation_id, "source": self.source,
                "aggregateId": self.aggregate_id, "eventId": self.event_id}


def _iso(seconds: float) -> str:
    if not seconds:
        return ""
    whole = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(seconds))
    return f"{whole}.{int(seconds * 1000) % 1000:03d}Z"


class EventTail:
    """The last TAIL_SIZE events, numbered in arrival order; duplicates (the seed and
    the subscription overlap) dropped by event id."""

    def __init__(self) -> None:
        self._events: deque[TailEvent] = deque(maxlen=TAIL_SIZE)
        self._ids: deque[str] = deque(maxlen=TAIL_SIZE)
        self._n = 0

    def add(self, subject: str, data: bytes, headers: Mapping[str, str] | None) -> None:
        try:
            env = envelope_pb2.Envelope.FromString(data)
        except Exception:
            env = envelope_pb2.Envelope()
        when = timestamps.seconds(env.occurred_at) or time.time()
        correlation = env.correlation_id or (headers or {}).get("x-request-id", "")
        self.add_event(TailEvent(0, env.subject or subject, when, correlation, env.source,
                                 env.aggregate_id, env.id))

    def add_event(self, event: TailEvent) -> None:
        """Append `event` under the next number, unless its id was seen."""
        if event.event_id and event.event_id in self._ids:
            return
        self._n += 1
        self._events.append(TailEvent(self._n, event.subject, event.time,
                                      event.correlation_id, event.source,
                                      event.aggregate_id, event.event_id))
        if event.event_id:
            self._ids.append(event.event_id)

    def since(self, after: int, limit: int = 200) -> list[TailEvent]:
        return [e for e in self._events if e.n > after][-limit:]

    @property
    def last(self) -> int:
        return self._n


class AdminConsole:
    """The state behind /api/admin/*: one NATS connection, the event tail."""

    def __init__(self, verifier: TokenVerifier, order: Callable[[], Caller], nats_url: str,
                 *, auth: NatsAuth | None = None, transport: Transport | None = None,
                 registry_ttl_s: float = registry.DEFAULT_TTL_S) -> None:
        self.verifier = verifier
        self._order = order
        self.nats_url = nats_url
        # Who the console is on NATS and on the mesh (the gateway's own identity).
        self.auth = auth or NatsAuth.plaintext()
        self.transport = transport or Transport.plaintext()
        self.registry_ttl_s = registry_ttl_s
        self.tail = EventTail()
        self._nc: Client | None = None
        self._lock = asyncio.Lock()
        self._tailing = False

    async def _connection(self) -> Client:
        async with self._lock:
            if self._nc is not None and not self._nc.is_closed:
                return self._nc

            async def quiet(_err: Exception) -> None:
                pass  # nats-py logs a traceback per failed attempt; the 503 says it

            try:
                nc = await within(
                    nats.connect(self.nats_url, name="shop-gateway-console",
                                 connect_timeout=2, max_reconnect_attempts=-1,
                                 reconnect_time_wait=0.5, error_cb=quiet,
                                 **self.auth.options()),
                    4)
            except Exception as err:
                raise HttpError(503, "UNAVAILABLE",
                                f"NATS not reachable at {self.nats_url}: "
                                f"{str(err) or type(err).__name__}") from None
            self._nc = nc
            return nc

    async def js(self) -> JetStreamContext:
        return (await self._connection()).jetstream(timeout=5)

    async def close(self) -> None:
        if self._nc is not None and not self._nc.is_closed:
            with contextlib.suppress(Exception):
                await self._nc.close()
        self._nc = None

    # --- the routes' work ------------------------------------------------------------

    async def instances(self) -> list[dict[str, Any]]:
        nc = await self._connection()
        try:
            kv = await registry.open_bucket(nc, ttl_s=self.registry_ttl_s, create=False)
            found = [inst for _, inst in await registry.read_all(kv, timeout=2.0)]
        except BucketNotFoundError:
            found = []
        found.sort(key=lambda i: (i.service, i.instance_id))
        now = time.time()

        async def health(inst: registry.Instance) -> str:
            if inst.protocol == "http":
                ok = await asyncio.to_thread(http_ok, f"http://{inst.addr}/healthz", 1.0)
                return "SERVING" if ok else "UNREACHABLE"
            return await asyncio.to_thread(grpc_health, inst.addr, 1.0,
                                           health_name(inst.service), server=inst.service,
                                           transport=self.transport)

        healths = await asyncio.gather(*(health(i) for i in found))
        return [
            {"service": i.service, "instance": i.instance_id, "addr": i.addr,
             "protocol": i.protocol, "version": i.version, "pid": i.pid,
             "uptimeSeconds": round(now - i.started_at, 1) if i.started_at else None,
             "health": h, "breakers": dict(i.breakers),
             # The storage backend, where the registry entry names one.
             "backend": str(getattr(i, "backend", "") or "")}
            for i, h in zip(found, healths, strict=True)
        ]

    async def _call_order(self, rpc: Rpc[Any, ReqT, RespT], request: ReqT) -> RespT:
        try:
            return await self._order().call(rpc, request, idempotent=True, timeout=5.0)
        except aio.AioRpcError as err:
            raise from_rpc_error(err, "order") from None
        except DomainError as err:
            raise from_domain_error(err) from None

    async def saga(self, order_id: str) -> dict[str, Any]:
        reply = await self._call_order(
            lambda s: s.GetSagaHistory, order_pb2.GetSagaHistoryRequest(order_id=order_id))
        status = order_pb2.OrderStatus.Name(reply.status)
        return {
            "orderId": reply.order_id, "status": status,
            "retryable": status == "ORDER_STATUS_REQUIRES_ATTENTION",
            "steps": [{"step": s.step, "outcome": s.outcome, "attempt": s.attempt,
                       "time": s.time.ToJsonString() if s.HasField("time") else "",
                       "error": s.error} for s in reply.steps],
        }

    async def retry(self, order_id: str) -> dict[str, Any]:
        await self._call_order(lambda s: s.RetrySaga, order_pb2.RetrySagaRequest(order_id=order_id))
        return await self.saga(order_id)

    async def dead_letters(self) -> list[dict[str, Any]]:
        letters = await dlq.list_dead_letters(await self.js(), limit=200)
        return [{"id": str(d.seq), "subject": d.subject, "consumer": d.consumer,
                 "eventId": d.event_id, "reason": d.reason,
                 "time": d.time.isoformat() if d.time else "",
                 "correlationId": d.correlation_id} for d in letters]

    async def replay(self, seq: int) -> int:
        try:
            return await dlq.replay(await self.js(), seq)
        except NotFoundError:
            raise HttpError(404, "NOT_FOUND", f"no dead letter with id {seq}") from None

    async def events(self, after: int) -> dict[str, Any]:
        if not self._tailing:
            await self._start_tail()
        return {"events": [e.to_json() for e in self.tail.since(after)],
                "last": self.tail.last}

    async def _start_tail(self) -> None:
        nc = await self._connection()
        async with self._lock:
            if self._tailing:
                return

            async def on_msg(msg: Msg) -> None:
                self.tail.add(msg.subject, msg.data, msg.headers)

            for aggregate in AGGREGATES:
                await nc.subscribe(f"{aggregate}.>", cb=on_msg)
            self._tailing = True
        await self._seed(nc.jetstream(timeout=2))

    async def _seed(self, js: JetStreamContext) -> None:
        """The stream's last TAIL_SEED events, so an opened tail is not empty."""
        try:
            last = int((await js.stream_info(STREAM)).state.last_seq)
        except Exception as err:
            log.info("event tail: no stream to seed from", extra={"error": str(err)})
            return
        seen: list[tuple[str, bytes, Mapping[str, str] | None]] = []
        for seq in range(max(1, last - TAIL_SEED + 1), last + 1):
            try:
                raw = await js.get_msg(STREAM, seq=seq)
            except NotFoundError:
                continue
            except Exception:
                break
            seen.append((str(raw.subject or ""), raw.data or b"", raw.headers))
        # Live ones may have arrived meanwhile: rebuild in stream order, live ones after.
        live = list(self.tail.since(0))
        self.tail = EventTail()
        for subject, data, headers in seen:
            self.tail.add(subject, data, headers)
        for e in live:
            self.tail.add_event(e)


def _path_id(request: Request, name: str) -> str:
    value = str(request.path_params[name])
    if not value or len(value) > _MAX_ID:
        raise HttpError(400, "INVALID_ARGUMENT", f"{name} must be 1 to {_MAX_ID} characters")
    return value


Handler = Callable[[Request], Awaitable[Any]]


def admin_routes(console: AdminConsole) -> list[Route]:
    """The /api/admin/* routes; each answers JSON, errors in the API's error shape."""

    def guarded(work: Handler, *, status: int = 200) -> Callable[[Request], Awaitable[Response]]:
        async def endpoint(request: Request) -> Response:
            try:
                token = bearer_token(request.headers.get("authorization", ""))
                await admin_identity(console.verifier, token)
                return _json(await work(request), status)
            except HttpError as err:
                return _error(err)
            except grpc.RpcError as err:  # a sync probe's error, never expected here
                log.warning("admin call failed", extra={"error": str(err)})
                return _error(HttpError(503, "UNAVAILABLE", "a downstream call failed"))
        return endpoint

    async def instances(request: Request) -> Any:
        return {"instances": await console.instances()}

    async def saga(request: Request) -> Any:
        return await console.saga(_path_id(request, "order_id"))

    async def retry(request: Request) -> Any:
        return await console.retry(_path_id(request, "order_id"))

    async def letters(request: Request) -> Any:
        return {"deadLetters": await console.dead_letters()}

    async def replay(request: Request) -> Any:
        raw = str(request.path_params["seq"])
        if not raw.isdigit() or int(raw) < 1:
            raise HttpError(400, "INVALID_ARGUMENT", "a dead letter id is a positive number")
        return {"replayed": await console.replay(int(raw))}

    async def events(request: Request) -> Any:
        raw = request.query_params.get("after", "0")
        if not raw.isdigit():
            raise HttpError(400, "INVALID_ARGUMENT", "after must be a non-negative number")
        return await console.events(int(raw))

    return [
        Route("/api/admin/instances", guarded(instances), methods=["GET"]),
        Route("/api/admin/orders/{order_id}/saga", guarded(saga), methods=["GET"]),
        Route("/api/admin/orders/{order_id}/retry", guarded(retry), methods=["POST"]),
        Route("/api/admin/dlq", guarded(letters), methods=["GET"]),
        Route("/api/admin/dlq/{seq}/replay", guarded(replay), methods=["POST"]),
        Route("/api/admin/events", guarded(events), methods=["GET"]),
    ]


__all__ = ["ADMIN_PREFIX", "ADMIN_ROLE", "AdminConsole", "EventTail",
           "admin_identity", "admin_routes"]
