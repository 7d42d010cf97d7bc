"""`python -m gateway`: uvicorn (httptools, uvloop) on SHOP_HOST:GATEWAY_PORT.

GATEWAY_PORT=0 takes any free port; with SHOP_READY_FILE set, the JSON
{"service": "gateway", "instance", "addr", "pid"} is written there once serving.

Composed as a service is: its settings (`load_gateway_settings`, read once), its wiring
(`Wiring.of(settings.process, identity="gateway")`: its certificate, breakers and
discovery), then its lifecycle. Unless SHOP_REGISTRY=off, the gateway starts the
process's discovery before it serves (handed to its Downstreams; a `<SERVICE>_ADDR`
still pins), puts itself in the registry as service "gateway" (protocol "http", its
breakers' states) once serving, and deletes its key first thing on a graceful stop: the
services' lifecycle (services/common/lifecycle.py, `Wiring.start`).
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
from services.common import envvars
from services.common.gcpolicy import tune_for_serving
from services.common.lifecycle import Lifecycle, advertised
from services.common.logging import configure_logging
from services.common.readyfile import write_ready_file
from services.common.registry import Instance, Registration
from services.common.settings import SERVICES
from services.common.spiffe import GATEWAY
from services.common.tracing import setup_tracing
from services.common.wiring import Wiring

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


async def serve(settings: GatewaySettings, wiring: Wiring) -> None:
    """The gateway's life, as a service's (services/common/lifecycle.py): the socket, the
    registry link and discovery, the app (uvicorn runs its lifespan and drains), the
    registration once serving; stopped in reverse."""
    process = settings.process
    instance = process.instance_id
    sock = _bind(settings)
    port = sock.getsockname()[1]
    addr = f"{'127.0.0.1' if settings.host in ('', '0.0.0.0', '::') else settings.host}:{port}"
    async with Lifecycle() as life:
        life.push("socket", _closer(sock))
        app = create_app(settings, wiring=wiring)
        # Waits for the registry's first read only when some service is not pinned by
        # `<SERVICE>_ADDR` (the lifespan's first call needs it).
        pinned = all(name in wiring.pinned for name in SERVICES)
        await wiring.start(life, wait_s=0.0 if pinned else None)
        registration: Registration | None = None
        if wiring.link is not None:
            registration = Registration(
                wiring.link,
                Instance(
                    service="gateway",
                    instance_id=instance,
                    addr=advertised(settings.host, port, process.serving.advertise_host),
                    version=process.version,
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
            log_level=process.log_level.lower(),
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
    envvars.read_once(GATEWAY)  # every variable the gateway reads is checked now
    settings = load_gateway_settings()
    process = settings.process
    configure_logging(process)
    # Its certificate for every call it makes (fails now if the PKI is missing; warns if
    # SHOP_MTLS=off), its breakers, its discovery.
    wiring = Wiring.of(process, identity=GATEWAY)
    flush_traces = setup_tracing(GATEWAY, process.instance_id, process.tracing,
                                 process.version)
    tune_for_serving()
    try:
        uvloop.run(serve(settings, wiring))
    finally:
        flush_traces()


if __name__ == "__main__":
    main()
