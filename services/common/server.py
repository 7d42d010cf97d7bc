"""Runs one shop service process: grpc.aio server, health, reflection, graceful stop.

`run_service(name, build)` is what every `services/<svc>/__main__.py` calls.
`ServiceRunner` and `serve_app` run the same thing inside an existing loop (tests).

A process is composed in three steps: its settings (`load_settings`: every variable,
read once), its wiring (`Wiring.of(settings)`: transport, breakers, discovery, made once
and handed to `build`), then its lifecycle (services/common/lifecycle.py), in order of
start: the registry link and the process's `Discovery` (unless SHOP_REGISTRY=off;
started once `build` returned, so Downstream calls spread over the registered
instances), the app's resources (`App.closers`), its background tasks, the gRPC server, and the
registration in the `shop_registry` KV bucket once serving. A graceful stop undoes them
in reverse: the key goes first, then the server drains, the tasks stop, the resources
close, discovery and the link last.
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

from services.common import authz, envvars
from services.common.cancellation import STOP_WAIT_S, cancel_and_wait, within
from services.common.gcpolicy import tune_for_serving
from services.common.interceptors import WrappedServer
from services.common.lifecycle import Lifecycle, advertised
from services.common.logging import configure_logging
from services.common.metrics import MetricsServer, ShopMetrics, bind_process, metrics_port
from services.common.metrics import current as current_metrics
from services.common.readyfile import write_ready_file
from services.common.registry import Instance, Registration
from services.common.settings import Settings, health_name, load_settings
from services.common.tracing import setup_tracing
from services.common.wiring import Wiring

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
    """What a service's `build(settings, wiring)` hands to the runtime.

    `closers`: how to close what `build` opened, in the order it opened them (the
    database first, ...); the runner closes them in reverse, after the server drained
    and the background tasks stopped."""

    grpc_services: list[str]
    register: Callable[[aio.Server], None]
    tasks: list[Callable[[], Awaitable[None]]] = field(default_factory=list)
    closers: list[Callable[[], Awaitable[None]]] = field(default_factory=list)

    @classmethod
    def serving(
        cls,
        service: ServiceDescriptor,
        add_to_server: Callable[[Any, aio.Server], None],
        servicer: object,
        *,
        tasks: Sequence[Callable[[], Awaitable[None]]] = (),
        closers: Sequence[Callable[[], Awaitable[None]]] = (),
    ) -> App:
        """The App of a service with one gRPC servicer: `add_to_server` is the generated
        `add_<Name>Servicer_to_server`, `service` its descriptor (health, reflection)."""

        def register(server: aio.Server) -> None:
            add_to_server(servicer, server)

        return cls([service.full_name], register, list(tasks), list(closers))


class ServiceRunner:
    """One started service: server, health, background tasks. start() then stop().

    `life` carries what the composition root started before (the registry link and
    discovery): stopped after everything the runner starts. `wiring` with a registry
    link: the instance registers once serving, with its breakers' states."""

    def __init__(self, settings: Settings, app: App, *, life: Lifecycle | None = None,
                 wiring: Wiring | None = None) -> None:
        self.settings = settings
        self.app = app
        self.life = life or Lifecycle()
        self.wiring = wiring
        self.registration: Registration | None = None
        self.health = HealthServicer()
        self.server: aio.Server | None = None
        self.addr = ""
        self.port = 0
        self.failed = asyncio.Event()  # set when a background task dies
        self._tasks: list[asyncio.Future[None]] = []
        self._grace = settings.grace_s
        self._deregistered = False

    async def start(self) -> str:
        """Start the app's parts in order, each pushing its stop; returns the advertised
        address. A failed start stops what it had started."""
        try:
            return await self._start()
        except BaseException:
            await self.life.stop()
            raise

    async def _start(self) -> str:
        s = self.settings
        for close in self.app.closers:
            self.life.push("app resource", close)
        for factory in self.app.tasks:
            task: asyncio.Future[None] = asyncio.ensure_future(factory())
            task.add_done_callback(self._task_done)
            self._tasks.append(task)
        self.life.push("background tasks", self._stop_tasks)
        # Every handler is wrapped as it is registered (authorization, request context,
        # errors, metrics, spans): no grpc.aio interceptors, which cost per call.
        server = WrappedServer(aio.server(options=SERVER_OPTIONS),
                               authz.authorizer(s.tls.enabled, s.serving.call_policy))
        self.app.register(server)
        health_pb2_grpc.add_HealthServicer_to_server(self.health, server)
        reflection.enable_server_reflection(
            [*self.app.grpc_services, HEALTH_SERVICE, reflection.SERVICE_NAME], server
        )
        try:
            port = authz.listen(server, f"{s.host}:{s.port}", s.service, s.tls,
                                s.serving.probe_port)
        except RuntimeError as err:
            raise RuntimeError(f"cannot listen on {s.host}:{s.port}: {err}") from err
        if port == 0:
            raise RuntimeError(f"cannot listen on {s.host}:{s.port}")
        await server.start()
        self.server = server
        self.life.push("grpc server", self._drain)
        self.port = port
        self.addr = advertised(s.host, port, s.serving.advertise_host)
        serving = health_pb2.HealthCheckResponse.SERVING
        # Also under the name callers ask for (`health_name`): the same as the servicer's
        # for every shop service; a stand-in serving another contract still answers.
        names = dict.fromkeys(("", health_name(s.service), *self.app.grpc_services))
        for name in names:
            await self.health.set(name, serving)
        if self.wiring is not None and self.wiring.link is not None:
            self.registration = Registration(
                self.wiring.link,
                Instance(
                    service=s.service,
                    instance_id=s.instance_id,
                    addr=self.addr,
                    version=s.version,
                    started_at=time.time(),
                    pid=os.getpid(),
                    storage="postgres" if s.database_url else "sqlite",
                ),
                breakers=self.wiring.breakers.states,
            )
            self.registration.start()  # in the background: NATS down never stops serving
            self.life.push("registration", self._deregister)
        log.info("serving", extra={"addr": self.addr, "services": self.app.grpc_services})
        return self.addr

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
        """Stop in reverse order of start: out of the registry, NOT_SERVING and drain the
        calls in flight, stop the tasks, close the app's resources, then what the
        composition root started (discovery, the registry link)."""
        self._grace = self.settings.grace_s if grace_s is None else grace_s
        await self.life.stop()
        log.info("stopped")

    async def _deregister(self) -> None:
        if self.registration is not None:
            # Out of the registry first, so callers stop choosing this instance at once.
            self._deregistered = await self.registration.stop(
                timeout=min(2.0, max(self._grace, 0.1)))

    async def _drain(self) -> None:
        grace = self._grace
        await self.health.enter_graceful_shutdown()
        # Lets health checkers and discovery notice NOT_SERVING (and the deleted key)
        # before the port closes.
        drain_delay = self.settings.serving.drain_delay_s
        if self._deregistered:
            drain_delay = max(drain_delay, self.settings.serving.deregister_wait_s)
        drain_delay = min(drain_delay, grace)
        if drain_delay > 0:
            await asyncio.sleep(drain_delay)
        if self.server is not None:
            await self.server.stop(grace)
        log.debug("grpc server stopped; stopping background tasks")

    async def _stop_tasks(self) -> None:
        for task in self._tasks:
            task.remove_done_callback(self._task_done)
        # A task that swallows its cancellation must not keep the process alive.
        await cancel_and_wait(self._tasks, max(1.0, min(self._grace, STOP_WAIT_S)))
        log.debug("background tasks stopped; closing the app's resources")


async def serve_app(
    settings: Settings, app: App, stop: asyncio.Event, *, life: Lifecycle | None = None,
    wiring: Wiring | None = None,
) -> int:
    """Serve `app` until `stop` is set (or a background task dies); returns an exit code."""
    runner = ServiceRunner(settings, app, life=life, wiring=wiring)
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


Build = Callable[[Settings, Wiring], Awaitable[App]]


async def _main(service: str, build: Build) -> int:
    envvars.read_once(service)  # every variable the process reads is checked now
    settings = load_settings(service)
    configure_logging(settings)
    # The process's transport, breakers and discovery: build() may already call out.
    wiring = Wiring.of(settings)
    # One metrics registry for the process: everything built below counts into it.
    bind_process(ShopMetrics(service, wiring.breakers.states))
    flush_traces = setup_tracing(service, settings.instance_id, settings.tracing,
                                 settings.version)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    life = Lifecycle()
    try:
        app = await build(settings, wiring)
        # Started once the app is built, just before it serves.
        await wiring.start(life)
    except BaseException:
        await life.stop()
        raise
    code = await serve_app(settings, app, stop, life=life, wiring=wiring)
    # Spans still buffered go out now; an unreachable collector costs at most this wait.
    with contextlib.suppress(Exception):
        await within(asyncio.to_thread(flush_traces), TRACE_FLUSH_S)
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


def run_service(service: str, build: Build) -> None:
    """The whole life of a service process; exits 0 after a graceful stop."""
    import uvloop

    tune_for_serving()
    try:
        code = uvloop.run(_main(service, build))
    except Exception:
        log.exception("service failed")
        code = 1
    sys.exit(code)


__all__ = ["App", "Build", "ServiceRunner", "run_service", "serve_app", "write_ready_file"]
