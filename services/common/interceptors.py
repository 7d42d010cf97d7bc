"""The server-side per-call wrapper every shop service runs under.

Per unary call: request id (from `x-request-id`, or a new one sent back in initial metadata),
context vars set (request id, `x-user-id`, deadline), DomainError -> its status code,
a downstream's AioRpcError passed through with its code and details, anything else ->
INTERNAL with the traceback logged, and one log line (method, code, duration).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

import grpc
from grpc import aio

from services.common import context
from services.common.errors import DomainError
from services.common.rpcmetrics import Observer, server_calls
from services.common.rpctracing import ServerSpans

log = logging.getLogger("shop.rpc")

_STATUS_BY_NAME: dict[str, grpc.StatusCode] = {code.name: code for code in grpc.StatusCode}

UnaryBehavior = Callable[[Any, aio.ServicerContext[Any, Any]], Awaitable[Any]]


def status_of(error: DomainError) -> grpc.StatusCode:
    """The gRPC code a domain error maps to."""
    return _STATUS_BY_NAME.get(error.status, grpc.StatusCode.FAILED_PRECONDITION)


def _wrap(method: str, behavior: UnaryBehavior, observe: Observer,
          spans: ServerSpans) -> UnaryBehavior:
    # Bound once per method; the closure keeps the per-call work to a few attribute reads.
    request_id_var = context.request_id_var
    user_id_var = context.user_id_var
    deadline_var = context.deadline_var
    monotonic = time.monotonic
    perf = time.perf_counter
    new_id = context.new_request_id

    async def handle(request: Any, ctx: aio.ServicerContext[Any, Any]) -> Any:
        started = perf()
        rid = ""
        uid = ""
        tp = ts = ""
        for key, raw in ctx.invocation_metadata() or ():
            value = raw if isinstance(raw, str) else raw.decode("latin-1")
            if key == "x-request-id":
                rid = value
            elif key == "x-user-id":
                uid = value
            elif key == "traceparent":
                tp = value
            elif key == "tracestate":
                ts = value
        request_id_var.set(rid or new_id())
        user_id_var.set(uid)
        left = ctx.time_remaining()
        deadline_var.set(None if left is None else monotonic() + left)
        if not rid:
            # Only a made-up id is sent back: a caller that sent one already has it, and a
            # separate initial-metadata send costs about as much CPU as the rest of the hop.
            await ctx.send_initial_metadata((("x-request-id", request_id_var.get()),))
        code = "OK"
        span = spans.start(method, tp, ts)
        try:
            return await behavior(request, ctx)
        except DomainError as err:
            status = status_of(err)
            code = status.name
            await ctx.abort(status, err.message)
        except aio.AioRpcError as err:
            # A downstream's answer: business codes stay what they are.
            status = err.code()
            code = status.name
            await ctx.abort(status, err.details() or "")
        except aio.AbortError:
            # The servicer aborted itself with an explicit status.
            code_fn = getattr(ctx, "code", None)
            got = code_fn() if code_fn is not None else None
            code = got.name if isinstance(got, grpc.StatusCode) else "ABORTED_BY_HANDLER"
            raise
        except asyncio.CancelledError:
            code = "CANCELLED"
            raise
        except Exception:
            code = "INTERNAL"
            log.exception("unhandled error", extra={"method": method})
            await ctx.abort(grpc.StatusCode.INTERNAL, "internal error")
        finally:
            observe(code, perf() - started)
            level = logging.DEBUG if code == "OK" else logging.INFO
            if log.isEnabledFor(level):
                log.log(
                    level,
                    "rpc",
                    extra={
                        "method": method,
                        "code": code,
                        "duration_ms": round((perf() - started) * 1000, 3),
                    },
                )
            spans.end(span, code)  # after the log line, which carries its trace id

    return handle


class ServerInterceptor(aio.ServerInterceptor):
    """Wraps every unary-unary handler once per method and caches the wrapper."""

    def __init__(self) -> None:
        self._cache: dict[str, tuple[Any, Any]] = {}
        self._calls = server_calls()
        self._spans = ServerSpans()

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[Any]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> Any:
        handler = await continuation(handler_call_details)
        if handler is None or handler.unary_unary is None:
            return handler
        method: str = handler_call_details.method
        cached = self._cache.get(method)
        if cached is not None and cached[0] is handler:
            return cached[1]
        wrapped = grpc.unary_unary_rpc_method_handler(
            _wrap(method, handler.unary_unary, self._calls.observer(method), self._spans),
            request_deserializer=handler.request_deserializer,
            response_serializer=handler.response_serializer,
        )
        self._cache[method] = (handler, wrapped)
        return wrapped
