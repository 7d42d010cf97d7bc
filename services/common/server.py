"""Runs one shop service process: grpc.aio server, health, reflection, graceful stop.

`run_service(name, build)` is what every `services/<svc>/__main__.py` calls.
`ServiceRunner` and `serve_app` run the same thing inside an existing loop (tests).

With `registry=True` (run_service's default; SHOP_REGISTRY=off turns it off) the runner
also starts the process's discovery before serving (Downstream calls then spread over the
registered instances) and registers this instance in the `shop_registry` KV bucket once
serving; on a graceful stop the key is deleted first, then the server drains.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import sys
import threading
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from google.protobuf.descriptor import ServiceDescriptor
from grpc import aio
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_health.v1._async import HealthServicer
from grpc_reflection.v1alpha import reflection

from services.common import authz, discovery, envvars, tls
from services.common.interceptors import ServerInterceptor
from services.common.logging import configure_logging
from services.common.metrics import MetricsServer, ShopMetrics, bind_process, metrics_port
from services.common.metrics import current as current_metrics
from services.common.readyfile import write_ready_file
from services.common.registry import (
    Instance,
    Registration,
    RegistryLink,
    registry_enabled,
    shop_version,
)
from services.common.settings import Settings, health_name, load_settings
from services.common.tracing import setup_tracing

log = logging.getLogger("shop.server")

HEALTH_SERVICE = health_pb2.DESCRIPTOR.services_by_name["Health"].full_name

SERVER_OPTIONS: list[tuple[str, int]] = [
    # Two instances must never silently share one port.
    ("grpc.so_reuseport", 0),
    # Accept the client keepalive pings clients.py sends (every 30 s, also when idle).
    ("grpc.keepalive_permit_without_calls", 1),
    ("grpc.http2.min_recv_ping_interval_without_data_ms", 10_000),
    ("grpc.keepalive_time_ms", 60_000),
    ("grpc.keepalive_timeout_ms", 20_000),
    ("grpc.max_receive_message_length", 4 * 1024 * 1024),
]


@dataclass
class App:
    """What a service's `build(settings)` hands to the runtime."""

    grpc_services: list[str]
    register: Callable[[aio.Server], None]
    tasks: list[Callable[[], Awaitable[None]]] = field(default_factory=list)
    on_stop: list[Callable[[], Awaitable[None]]] = field(default_factory=list)

    @classmethod
    def serving(
        cls,
        service: ServiceDescriptor,
        add_to_server: Callable[[Any, aio.Server], None],
        servicer: object,
        *,
        tasks: Sequence[Callable[[], Awaitable[None]]] = (),
        on_stop: Sequence[Callable[[], Awaitable[None]]] = (),
    ) -> App:
        """The App of a service with one gRPC servicer: `add_to_server` is the generated
        `add_<Name>Servicer_to_server`, `service` its descriptor (health, reflection)."""

        def register(server: aio.Server) -> None:
            add_to_server(servicer, server)

        return cls([service.full_name], register, list(tasks), list(on_stop))


def _advertised(host: str, port: int) -> str:
    # SHOP_ADVERTISE_HOST: the name other machines reach this one by (a pod IP, ...).
    host = envvars.SHOP_ADVERTISE_HOST.get() or host
    if host in ("", "0.0.0.0", "::", "[::]"):
        host = "127.0.0.1"
    return f"{host}:{port}"


class ServiceRunner:
    """One started service: server, health, background tasks. start() then stop()."""

    def __init__(self, settings: Settings, app: App, *, registry: bool = False) -> None:
        self.settings = settings
        self.app = app
        self.use_registry = registry
        tls.claim_identity(settings.service)  # before the registry link connects to NATS
        self.link: RegistryLink | None = None
        self.registration: Registration | None = None
        self.discovery: discovery.Discovery | None = None
        self.health = HealthServicer()
        self.server: aio.Server | None = None
        self.addr = ""
        self.port = 0
        self.failed = asyncio.Event()  # set when a background task dies
        self._tasks: list[asyncio.Future[None]] = []

    async def start(self) -> str:
        """Bind, serve, start background tasks; returns the advertised address."""
        s = self.settings
        if self.use_registry:
            await self._start_discovery()
        server = aio.server(interceptors=[*authz.interceptors(), ServerInterceptor()],
                            options=SERVER_OPTIONS)
        self.app.register(server)
        health_pb2_grpc.add_HealthServicer_to_server(self.health, server)
        reflection.enable_server_reflection(
            [*self.app.grpc_services, HEALTH_SERVICE, reflection.SERVICE_NAME], server
        )
        try:
            port = authz.listen(server, f"{s.host}:{s.port}", s.service)
        except RuntimeError as err:
            raise RuntimeError(f"cannot listen on {s.host}:{s.port}: {err}") from err
        if port == 0:
            raise RuntimeError(f"cannot listen on {s.host}:{s.port}")
        await server.start()
        self.server = server
        self.port = port
        self.addr = _advertised(s.host, port)
        serving = health_pb2.HealthCheckResponse.SERVING
        # Also under the name callers ask for (`health_name`): the same as the servicer's
        # for every shop service; a stand-in serving another contract still answers.
        names = dict.fromkeys(("", health_name(s.service), *self.app.grpc_services))
        for name in names:
            await self.health.set(name, serving)
        for factory in self.app.tasks:
            task: asyncio.Future[None] = asyncio.ensure_future(factory())
            task.add_done_callback(self._task_done)
            self._tasks.append(task)
        if self.link is not None:
            self.registration = Registration(
                self.link,
                Instance(
                    service=s.service,
                    instance_id=s.instance_id,
                    addr=self.addr,
                    version=shop_version(),
                    started_at=time.time(),
                    pid=os.getpid(),
                ),
            )
            self.registration.start()  # in the background: NATS down never stops serving
        log.info("serving", extra={"addr": self.addr, "services": self.app.grpc_services})
        return self.addr

    async def _start_discovery(self) -> None:
        s = self.settings
        self.link = RegistryLink(s.nats_url, name=s.instance_id)
        self.link.start()
        try:
            self.discovery = await discovery.start_discovery(
                link=self.link, wait_s=envvars.SHOP_DISCOVERY_WAIT_S.get()
            )
        except Exception:
            log.exception("discovery failed to start; using fixed/default addresses")

    def _task_done(self, task: asyncio.Future[None]) -> None:
        if task.cancelled():
            return
        exc = task.exception()
        if exc is not None:
            log.error("background task died", exc_info=exc)
        else:
            log.error("background task ended unexpectedly")
        self.failed.set()

    async def stop(self, grace_s: float | None = None) -> None:
        """NOT_SERVING at once, drain in-flight calls, stop tasks, run on_stop."""
        grace = self.settings.grace_s if grace_s is None else grace_s
        deregistered = False
        if self.registration is not None:
            # Out of the registry first, so callers stop choosing this instance at once.
            deregistered = await self.registration.stop(timeout=min(2.0, max(grace, 0.1)))
        await self.health.enter_graceful_shutdown()
        # Lets health checkers and discovery notice NOT_SERVING (and the deleted key)
        # before the port closes.
        drain_delay = envvars.SHOP_DRAIN_DELAY_S.get()
        if deregistered:
            drain_delay = max(drain_delay, envvars.SHOP_DEREGISTER_WAIT_S.get())
        drain_delay = min(drain_delay, grace)
        if drain_delay > 0:
            await asyncio.sleep(drain_delay)
        if self.server is not None:
            await self.server.stop(grace)
        log.debug("grpc server stopped; stopping background tasks")
        for task in self._tasks:
            task.remove_done_callback(self._task_done)
            task.cancel()
        pending = [task for task in self._tasks if not task.done()]
        if pending:
            # A task that swallows its cancellation must not keep the process alive.
            _, stuck = await asyncio.wait(pending, timeout=max(1.0, min(grace, 5.0)))
            for task in stuck:
                log.error("background task ignored cancellation", extra={"task": repr(task)})
        for task in self._tasks:
            if task.done() and not task.cancelled():
                task.exception()  # retrieved: no "never retrieved" warning
        log.debug("background tasks stopped; running on_stop hooks")
        for hook in self.app.on_stop:
            try:
                await hook()
            except Exception:
                log.exception("on_stop hook failed")
        if self.discovery is not None and discovery.shared_discovery() is self.discovery:
            await discovery.stop_discovery(close_link=False)
        if self.link is not None:
            await self.link.close()
        log.info("stopped")


async def serve_app(
    settings: Settings, app: App, stop: asyncio.Event, *, registry: bool = False
) -> int:
    """Serve `app` until `stop` is set (or a background task dies); returns an exit code."""
    runner = ServiceRunner(settings, app, registry=registry)
    addr = await runner.start()
    scrape = MetricsServer(current_metrics(), settings.host, metrics_port(settings))
    scrape_port = await scrape.start()
    if settings.ready_file is not None:
        write_ready_file(settings.ready_file, settings.service, settings.instance_id, addr,
                         metrics_port=scrape_port)
    stop_wait = asyncio.create_task(stop.wait())
    failed_wait = asyncio.create_task(runner.failed.wait())
    await asyncio.wait({stop_wait, failed_wait}, return_when=asyncio.FIRST_COMPLETED)
    stop_wait.cancel()
    failed_wait.cancel()
    code = 1 if runner.failed.is_set() else 0
    await runner.stop()
    await scrape.close()
    return code


async def _main(service: str, build: Callable[[Settings], Awaitable[App]]) -> int:
    envvars.read_once(service)  # every later read sees the environment of the start
    settings = load_settings(service)
    configure_logging(settings)
    tls.claim_identity(service)  # build() may already reach NATS or other services
    # One registry for the process: everything built below counts into it.
    bind_process(ShopMetrics(service))
    flush_traces = setup_tracing(service, settings.instance_id)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    app = await build(settings)
    code = await serve_app(settings, app, stop, registry=registry_enabled())
    # Spans still buffered go out now; an unreachable collector costs at most this wait.
    with contextlib.suppress(Exception):
        await asyncio.wait_for(asyncio.to_thread(flush_traces), TRACE_FLUSH_S)
    _exit_watchdog(code, EXIT_WATCHDOG_S)
    return code


# After "stopped", only the loop's own clean-up and the interpreter's exit are left; a
# leftover thread or a task that ignores its cancellation must not keep the process up.
EXIT_WATCHDOG_S = 3.0
TRACE_FLUSH_S = 2.0


def _exit_watchdog(code: int, after_s: float) -> None:
    """Exit with `code` after `after_s` even if the normal exit is stuck."""

    def force() -> None:
        me = threading.current_thread()
        threads = sorted(t.name for t in threading.enumerate() if t is not me)
        log.warning("exit blocked after the stop; exiting now",
                    extra={"waited_s": after_s, "threads": threads})
        for handler in logging.getLogger().handlers:
            handler.flush()
        os._exit(code)

    timer = threading.Timer(after_s, force)
    timer.daemon = True
    timer.start()


def run_service(service: str, build: Callable[[Settings], Awaitable[App]]) -> None:
    """The whole life of a service process; exits 0 after a graceful stop."""
    import uvloop

    try:
        code = uvloop.run(_main(service, build))
    except Exception:
        log.exception("service failed")
        code = 1
    sys.exit(code)


__all__ = ["App", "ServiceRunner", "run_service", "serve_app", "write_ready_file"]
