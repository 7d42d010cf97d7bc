"""`python -m gateway`: uvicorn (httptools, uvloop) on SHOP_HOST:GATEWAY_PORT.

GATEWAY_PORT=0 takes any free port; with SHOP_READY_FILE set, the JSON
{"service": "gateway", "instance", "addr", "pid"} is written there once serving.

Unless SHOP_REGISTRY=off, the gateway also starts the process's discovery before it
serves (handed to its Downstreams; a `<SERVICE>_ADDR` still pins), puts itself in the
registry as service "gateway" (protocol "http", its breakers' states) once serving, and
deletes its key first thing on a graceful stop: the services' lifecycle
(services/common/lifecycle.py, `new_discovery`, `start_discovery` of services/common/server.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import socket
import time
from collections.abc import Awaitable, Callable, Iterator, Mapping

import uvicorn
import uvloop

from gateway.app import GatewayState, create_app
from gateway.config import GatewaySettings, load_gateway_settings
from services.common import envvars, tls
from services.common.discovery import Discovery
from services.common.lifecycle import Lifecycle, advertised
from services.common.logging import configure_logging
from services.common.pki import GATEWAY
from services.common.readyfile import write_ready_file
from services.common.registry import (
    Instance,
    Registration,
    RegistryLink,
    registry_enabled,
    shop_version,
)
from services.common.server import new_discovery, start_discovery
from services.common.settings import SERVICES, downstream_addr, load_settings
from services.common.tracing import setup_tracing

log = logging.getLogger("shop.gateway")


class _Server(uvicorn.Server):
    """uvicorn re-raises SIGTERM after a graceful stop (exit status -15); shop processes
    exit 0 after a graceful stop, so the signals only ask the server to exit.

    On shutdown the registry key goes first, then uvicorn drains."""

    registration: Registration | None = None

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        registration, self.registration = self.registration, None
        if registration is not None:
            await registration.stop(timeout=2.0)
        await super().shutdown(sockets)

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, self.handle_exit, sig, None)
        try:
            yield
        finally:
            for sig in (signal.SIGINT, signal.SIGTERM):
                loop.remove_signal_handler(sig)


def _bind(settings: GatewaySettings) -> socket.socket:
    # Bound here, before serving, so port 0 is resolved and can be reported.
    sock = socket.socket(socket.AF_INET6 if ":" in settings.host else socket.AF_INET)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((settings.host, settings.port))
    sock.set_inheritable(True)
    return sock


async def _announce_when_started(
    server: _Server,
    settings: GatewaySettings,
    addr: str,
    instance: str,
    registration: Registration | None,
) -> None:
    while not server.started:
        if server.should_exit:
            return
        await asyncio.sleep(0.005)
    log.info("gateway serving", extra={"addr": addr, "url": f"http://{addr}"})
    if registration is not None and not server.should_exit:
        server.registration = registration
        registration.start()  # in the background: NATS down never stops serving
    if settings.ready_file is not None:
        write_ready_file(settings.ready_file, "gateway", instance, addr)


def _breakers_of(app: object) -> Mapping[str, str]:
    state = getattr(getattr(app, "state", None), "gateway", None)
    return state.breaker_states() if isinstance(state, GatewayState) else {}


async def serve(settings: GatewaySettings, instance: str, nats_url: str | None = None) -> None:
    """The gateway's life, as a service's (services/common/lifecycle.py): the socket, the
    registry link and discovery, the app (uvicorn runs its lifespan and drains), the
    registration once serving; stopped in reverse."""
    sock = _bind(settings)
    port = sock.getsockname()[1]
    addr = f"{'127.0.0.1' if settings.host in ('', '0.0.0.0', '::') else settings.host}:{port}"
    async with Lifecycle() as life:
        life.push("socket", _closer(sock))
        link: RegistryLink | None = None
        picker: Discovery | None = None
        if nats_url and registry_enabled():
            link, picker = new_discovery(nats_url, instance)
        app = create_app(settings, picker=picker)
        if link is not None and picker is not None:
            # Waits for the registry's first read only when some service is not pinned by
            # `<SERVICE>_ADDR` (the lifespan's first call needs it).
            pinned = all(downstream_addr(name) for name in SERVICES)
            await start_discovery(life, link, picker, wait_s=0.0 if pinned else None)
        registration: Registration | None = None
        if link is not None:
            registration = Registration(
                link,
                Instance(
                    service="gateway",
                    instance_id=instance,
                    addr=advertised(settings.host, port),
                    version=shop_version(),
                    started_at=time.time(),
                    pid=os.getpid(),
                    protocol="http",
                ),
                breakers=lambda: _breakers_of(app),
            )
        config = uvicorn.Config(
            app,
            http="httptools",
            loop="uvloop",
            lifespan="on",
            access_log=False,
            log_level=envvars.SHOP_LOG_LEVEL.get().lower(),
            timeout_graceful_shutdown=10,
            # uvicorn would believe X-Forwarded-For from 127.0.0.1 (where the gateway
            # binds) and rewrite the client address with it; the gateway reads proxy
            # headers itself, from GATEWAY_TRUSTED_PROXIES only (gateway.clientaddr).
            proxy_headers=False,
            forwarded_allow_ips="",
        )
        server = _Server(config)

        async def deregister() -> None:
            if server.registration is not None:  # serve() ended without a shutdown()
                await server.registration.stop(timeout=2.0)

        life.push("registration", deregister)
        announcer = asyncio.create_task(
            _announce_when_started(server, settings, addr, instance, registration)
        )
        life.push("announcer", _canceller(announcer))
        await server.serve(sockets=[sock])


def _closer(sock: socket.socket) -> Callable[[], Awaitable[None]]:
    async def close() -> None:
        sock.close()
    return close


def _canceller(task: asyncio.Task[None]) -> Callable[[], Awaitable[None]]:
    async def cancel() -> None:
        task.cancel()
    return cancel


def main() -> None:
    envvars.read_once("gateway")  # every later read sees the environment of the start
    process = load_settings("gateway")
    configure_logging(process)
    tls.claim_identity(GATEWAY)  # its certificate for every call it makes
    tls.process_mesh()  # fails now if the PKI is missing; warns if SHOP_MTLS=off
    flush_traces = setup_tracing("gateway", process.instance_id)
    try:
        uvloop.run(serve(load_gateway_settings(), process.instance_id, process.nats_url))
    finally:
        flush_traces()


if __name__ == "__main__":
    main()
