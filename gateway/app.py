"""The gateway application: `create_app(settings) -> Starlette`.

/api/* is served by one ASGI-level handler (`ApiHandler`) that does request id, route
match, auth, rate limit, transcoding and metrics in a straight line — no middleware
stack, no Request/Response objects on the hot path. Everything else (/healthz, /readyz,
/metrics, /openapi.json, /docs) goes to ordinary Starlette routes behind it.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import logging
import re
import time
import uuid
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qsl

from grpc import aio
from grpc_health.v1 import health_pb2
from shop.order.v1 import order_pb2
from shop.user.v1 import user_pb2
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, Response
from starlette.routing import Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from gateway.access import is_public
from gateway.admission import Admission
from gateway.auth import TokenVerifier, bearer_token
from gateway.body import RequestBody
from gateway.clientaddr import ClientAddress, parse_networks
from gateway.config import GatewaySettings
from gateway.dashboard import Dashboard
from gateway.docs_page import DOCS_HTML
from gateway.errors import HttpError, error_body, from_domain_error, from_rpc_error
from gateway.jsonmap import dumps
from gateway.metrics import CONTENT_TYPE as METRICS_CONTENT_TYPE
from gateway.metrics import GatewayMetrics
from gateway.openapi import build_openapi
from gateway.router import Match, Router
from gateway.rules import HttpRule, load_rules, parse_template
from gateway.transcoder import Binding, check_content_type
from gateway.upstreams import (
    Caller,
    api_downstreams,
    breaker_state,
    close_all,
    dashboard_callers,
    health_downstreams,
)
from gateway.web import ADMIN_PREFIX, AdminConsole, admin_routes, web_routes
from services.common import context
from services.common.errors import DomainError
from services.common.httptracing import HttpSpans
from services.common.natsauth import NatsAuth
from services.common.settings import health_name
from services.common.tls import Transport
from services.common.wiring import Wiring

log = logging.getLogger("shop.gateway")

_REQUEST_ID = re.compile(r"[A-Za-z0-9._:\-]{1,128}")
# New request ids: a random per-process prefix plus a counter — unique, and cheaper than
# a uuid4 (one urandom call) per request.
_ID_PREFIX = uuid.uuid4().hex[:16]
_id_counter = itertools.count(1)


def _new_request_id() -> str:
    return f"{_ID_PREFIX}{next(_id_counter):016x}"


_JSON = b"application/json"
DASHBOARD_PATH = "/api/dashboard"


@dataclass(frozen=True, slots=True)
class ApiRoute:
    label: str  # the template, for metrics
    public: bool
    binding: Binding | None  # None: the dashboard
    login: bool = False  # POST /api/auth/login: limited per address and per email


@dataclass
class Callers:
    """The gateway's clients of the services, made in the lifespan (inside the running
    loop). Made before the state, so the metrics (breaker states) and the token verifier
    (the JWKS) are given them directly."""

    upstreams: dict[str, Caller] = field(default_factory=dict)
    health: dict[str, Caller] = field(default_factory=dict)
    # "dashboard.<service>" -> that part's caller, with a breaker of its own.
    dashboard_parts: dict[str, Caller] = field(default_factory=dict)

    def breaker_states(self) -> dict[str, str]:
        states = {name: breaker_state(c) for name, c in self.upstreams.items()}
        states.update((name, breaker_state(c)) for name, c in self.dashboard_parts.items())
        return states

    async def fetch_jwks(self) -> list[dict[str, str]]:
        reply = await self.upstreams["user"].call(
            lambda s: s.GetJwks, user_pb2.GetJwksRequest(), idempotent=True, timeout=2.0
        )
        return [
            {"kty": k.kty, "crv": k.crv, "x": k.x, "kid": k.kid, "alg": k.alg, "use": k.use}
            for k in reply.keys
        ]


@dataclass
class GatewayState:
    settings: GatewaySettings
    rules: list[HttpRule]
    bindings: list[Binding]
    router: Router[ApiRoute]
    admission: Admission
    client_address: ClientAddress
    metrics: GatewayMetrics
    verifier: TokenVerifier
    openapi_json: bytes
    callers: Callers
    dashboard: Dashboard | None = None

    @property
    def upstreams(self) -> dict[str, Caller]:
        return self.callers.upstreams

    @property
    def health(self) -> dict[str, Caller]:
        return self.callers.health

    def breaker_states(self) -> dict[str, str]:
        return self.callers.breaker_states()


class ApiHandler:
    """The single ASGI wrapper: request id and metrics for every request, /api/* itself."""

    def __init__(self, app: ASGIApp, state: GatewayState) -> None:
        self.app = app
        self.state = state
        self._spans = HttpSpans()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        rid = auth = ctype = forwarded = xff = tp = ts = ""
        declared = -1
        chunked = False
        for key, value in scope["headers"]:
            if key == b"x-request-id":
                rid = value.decode("latin-1")
            elif key == b"authorization":
                auth = value.decode("latin-1")
            elif key == b"content-type":
                ctype = value.decode("latin-1")
            elif key == b"content-length":
                try:
                    declared = int(value)
                except ValueError:
                    declared = -1
            elif key == b"transfer-encoding":
                chunked = True
            elif key == b"forwarded":  # several lines read as one list (RFC 9110 5.3)
                text = value.decode("latin-1")
                forwarded = f"{forwarded},{text}" if forwarded else text
            elif key == b"x-forwarded-for":
                text = value.decode("latin-1")
                xff = f"{xff},{text}" if xff else text
            elif key == b"traceparent":
                tp = value.decode("latin-1")
            elif key == b"tracestate":
                ts = value.decode("latin-1")
        if not rid or _REQUEST_ID.fullmatch(rid) is None:
            rid = _new_request_id()
        rid_header = (b"x-request-id", rid.encode())
        path: str = scope["path"]
        method: str = scope["method"]

        if not path.startswith("/api/") or path.startswith(ADMIN_PREFIX):
            await self._other(scope, receive, send, rid_header, started)
            return

        state = self.state
        match = state.router.match(method, path)
        label = match.target.label if match is not None else "unmatched"
        extra: list[tuple[bytes, bytes]] = []
        settings = state.settings
        request_body = RequestBody(
            receive,
            declared=declared,
            chunked=chunked,
            drain_max_bytes=settings.drain_max_bytes,
            drain_timeout_s=settings.drain_timeout_s,
        )
        span = self._spans.start(method, label, tp, ts)  # the trace's root
        status = 500
        try:
            if match is None:
                allowed = state.router.allowed_methods(path)
                if allowed:
                    raise HttpError(
                        405,
                        "UNIMPLEMENTED",
                        f"method {method} not allowed on {path}; allowed: {', '.join(allowed)}",
                        headers=[(b"allow", ", ".join(allowed).encode())],
                    )
                raise HttpError(404, "NOT_FOUND", f"no route for {method} {path}")
            client = scope.get("client")
            addr = state.client_address.resolve(client[0] if client else "", forwarded, xff)
            status, body = await self._api(
                scope, request_body, match, rid, auth, ctype, addr or "unknown"
            )
        except HttpError as err:
            status, body, extra = err.http_status, err.body(), err.headers
        except Exception:
            log.exception("unhandled gateway error", extra={"request_id": rid})
            status, body = 500, error_body(500, "INTERNAL", "internal error")
        finally:
            self._spans.end(span, status)
        # Answered before the whole body was read (413, 401, 404, ...): read the rest first.
        extra = [*extra, *await request_body.finish()]
        headers = [
            (b"content-type", _JSON),
            (b"content-length", str(len(body)).encode()),
            rid_header,
            *extra,
        ]
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": body})
        state.metrics.observe(label, method, status, time.perf_counter() - started)

    async def _api(
        self,
        scope: Scope,
        request_body: RequestBody,
        match: Match[ApiRoute],
        rid: str,
        auth: str,
        ctype: str,
        addr: str,
    ) -> tuple[int, bytes]:
        state = self.state
        route = match.target
        user_id = await self._identify(route, auth, addr)
        if route.public:
            # Known only to count against the user's limit: a public route's call goes
            # downstream without a caller, token or not.
            user_id = ""
        binding = route.binding
        if binding is None:
            assert state.dashboard is not None
            with context.bind(request_id=rid, user_id=user_id):
                return 200, dumps(await state.dashboard.build(user_id))

        body = b""
        if binding.reads_body:
            body = await request_body.read(state.settings.max_body_bytes)
            if body.strip():
                check_content_type(ctype)
        qs: bytes = scope.get("query_string", b"")
        query = parse_qsl(qs.decode("latin-1"), keep_blank_values=True) if qs else []
        request = binding.build_request(match.params, query, body)
        if route.login:
            state.admission.login_email(getattr(request, "email", ""))
        rule = binding.rule
        caller = state.upstreams[rule.service]
        with context.bind(request_id=rid, user_id=user_id):
            try:
                response = await caller.call(
                    rule.method_of,
                    request,
                    idempotent=binding.idempotent,
                    timeout=state.settings.call_timeout_s,
                )
            except aio.AioRpcError as err:
                state.metrics.upstream_error(rule.service, err.code().name)
                raise from_rpc_error(err, rule.service) from None
            except DomainError as err:
                state.metrics.upstream_error(rule.service, err.status)
                raise from_domain_error(err) from None
        return binding.render(response)

    async def _identify(self, route: ApiRoute, auth: str, addr: str) -> str:
        """The caller's user id ("" when anonymous), each limit checked on the way: until a
        token is known good, the request counts against its client address."""
        state = self.state
        admission = state.admission
        token = auth.partition(" ")[2].strip() if auth[:7].lower() == "bearer " else ""
        user_id = state.verifier.cached(token) if token else ""
        if not user_id:
            admission.anonymous(addr)
            if not route.public:
                user_id = await state.verifier.verify(bearer_token(auth))
            elif token:
                # A public route with a token: a good one names the caller (its own
                # limit), a bad one is ignored, as if none had been sent.
                try:
                    user_id = await state.verifier.verify(token)
                except HttpError:
                    user_id = ""
        if route.login:
            admission.login_address(addr)
        if user_id:
            admission.user(user_id)
        return user_id

    async def _other(
        self,
        scope: Scope,
        receive: Receive,
        send: Send,
        rid_header: tuple[bytes, bytes],
        started: float,
    ) -> None:
        status_box = [500]

        async def send_with_id(message: Message) -> None:
            if message["type"] == "http.response.start":
                status_box[0] = message["status"]
                message["headers"] = [*message.get("headers", []), rid_header]
            await send(message)

        try:
            await self.app(scope, receive, send_with_id)
        finally:
            path = scope["path"]
            label = path if path in _OPS_PATHS else "unmatched"
            self.state.metrics.observe(
                label, scope["method"], status_box[0], time.perf_counter() - started
            )


_OPS_PATHS = frozenset({"/healthz", "/readyz", "/metrics", "/openapi.json", "/docs"})


def _build_state(settings: GatewaySettings) -> GatewayState:
    rules = load_rules()
    bindings = [Binding.of(r) for r in rules]
    api_routes: list[tuple[str, Any, ApiRoute]] = [
        (
            b.rule.http_method,
            b.rule.template,
            ApiRoute(
                b.rule.template.raw,
                is_public(b.rule.http_method, b.rule.template.raw),
                b,
                login=(b.rule.service, b.rule.rpc) == ("user", "Login"),
            ),
        )
        for b in bindings
    ]
    dashboard_route = ApiRoute(DASHBOARD_PATH, public=False, binding=None)
    api_routes.append(("GET", parse_template(DASHBOARD_PATH), dashboard_route))
    spec = build_openapi(
        bindings,
        is_public=is_public,
        dashboard=(user_pb2.User.DESCRIPTOR, order_pb2.Order.DESCRIPTOR),
    )
    callers = Callers()
    return GatewayState(
        settings=settings,
        rules=rules,
        bindings=bindings,
        router=Router(api_routes),
        admission=Admission.of(
            user=settings.rate_limit,
            anonymous=settings.anon_rate_limit,
            login=settings.login_rate_limit,
            login_email=settings.login_email_rate_limit,
        ),
        client_address=ClientAddress(parse_networks(settings.trusted_proxies)),
        metrics=GatewayMetrics(callers.breaker_states),
        verifier=TokenVerifier(
            callers.fetch_jwks,
            issuer=settings.jwt_issuer,
            audience=settings.jwt_audience,
            refetch_interval_s=settings.jwks_refetch_s,
            cache_ttl_s=settings.token_cache_ttl_s,
        ),
        openapi_json=json.dumps(spec, separators=(",", ":")).encode(),
        callers=callers,
    )


def _ops_routes(state: GatewayState) -> list[Route]:
    async def healthz(request: Request) -> Response:
        return JSONResponse({"status": "ok"})

    async def readyz(request: Request) -> Response:
        names = sorted(state.health)

        async def check(name: str) -> str:
            try:
                reply = await state.health[name].call(
                    lambda s: s.Check, health_pb2.HealthCheckRequest(service=health_name(name)),
                    idempotent=True, timeout=1.0,
                )
            except aio.AioRpcError as err:
                return str(err.code().name)
            except Exception as err:  # breaker open, no deadline left, ...
                return type(err).__name__
            return str(health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status))

        results = await asyncio.gather(*(check(n) for n in names))
        services = dict(zip(names, results, strict=True))
        ready = all(r == "SERVING" for r in results)
        body = {"status": "ready" if ready else "not ready", "services": services}
        return JSONResponse(body, status_code=200 if ready else 503)

    async def metrics(request: Request) -> Response:
        return Response(state.metrics.render(), media_type=METRICS_CONTENT_TYPE.decode())

    async def openapi(request: Request) -> Response:
        return Response(state.openapi_json, media_type="application/json")

    async def docs(request: Request) -> Response:
        return HTMLResponse(DOCS_HTML)

    return [
        Route("/healthz", healthz),
        Route("/readyz", readyz),
        Route("/metrics", metrics),
        Route("/openapi.json", openapi),
        Route("/docs", docs),
    ]


async def _http_error(request: Request, exc: Exception) -> Response:
    status = exc.status_code if isinstance(exc, HTTPException) else 500
    name = {404: "NOT_FOUND", 405: "UNIMPLEMENTED"}.get(status, "UNKNOWN")
    message = exc.detail if isinstance(exc, HTTPException) else "error"
    # Starlette's 405 carries `Allow`; keep it (and any other header it set).
    headers = dict(exc.headers or {}) if isinstance(exc, HTTPException) else None
    return Response(
        error_body(status, name, str(message)), status, headers, media_type="application/json"
    )


def _needed(wiring: Wiring | None) -> Wiring:
    if wiring is None:  # create_app checked it
        raise ValueError("no wiring to make Downstreams with")
    return wiring


def create_app(
    settings: GatewaySettings,
    *,
    wiring: Wiring | None = None,
    upstreams: Mapping[str, Caller] | None = None,
    health: Mapping[str, Caller] | None = None,
) -> Starlette:
    """The gateway. `wiring` (the process's transport, breakers and discovery) is what the
    real Downstreams are made with; `upstreams`/`health` replace them (tests), and then
    no wiring is needed."""
    if wiring is None and (upstreams is None or health is None):
        raise ValueError("create_app makes Downstreams: give it the process's wiring")
    state = _build_state(settings)
    process = settings.process
    # The storefront, the console and /api/admin/* (gateway/web.py, gateway/admin.py).
    console = AdminConsole(
        state.verifier, lambda: state.upstreams["order"], process.nats_url,
        auth=wiring.nats if wiring is not None else NatsAuth(process.nats_identity,
                                                              process.tls),
        transport=wiring.transport if wiring is not None else Transport.plaintext(),
        registry_ttl_s=process.discovery.ttl_s)

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        # Channels are made here, inside the running loop, and reused for the process.
        made: list[dict[str, Caller]] = []
        callers = state.callers
        callers.upstreams = (
            dict(upstreams)
            if upstreams is not None
            else api_downstreams(state.rules, cap_s=settings.call_timeout_s,
                                 wiring=_needed(wiring))
        )
        if upstreams is None:
            made.append(callers.upstreams)
        callers.health = (dict(health) if health is not None
                          else health_downstreams(callers.upstreams, wiring=_needed(wiring)))
        if health is None:
            made.append(callers.health)
        # The dashboard's parts reuse the same channels under breakers of their own, so
        # its short part deadlines never open the breakers the other routes share.
        parts = dashboard_callers(
            callers.upstreams,
            fail_max=settings.dashboard_breaker_fail_max,
            reset_s=settings.dashboard_breaker_reset_s,
            probe_s=process.breaker.probe_s,
        )
        callers.dashboard_parts = parts
        state.dashboard = Dashboard(
            parts["dashboard.user"],
            parts["dashboard.order"],
            parts["dashboard.notification"],
            part_timeout_s=settings.dashboard_part_timeout_s,
            on_error=lambda part, err: state.metrics.upstream_error(part, type(err).__name__),
        )
        await state.verifier.refresh(force=True)
        try:
            yield
        finally:
            await console.close()
            await close_all(*made)

    app = Starlette(
        routes=[*_ops_routes(state), *web_routes(state.verifier), *admin_routes(console)],
        middleware=[Middleware(ApiHandler, state=state)],
        exception_handlers={404: _http_error, 405: _http_error},
        lifespan=lifespan,
    )
    app.state.gateway = state
    return app
