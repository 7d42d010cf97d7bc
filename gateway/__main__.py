"""`python -m gateway`: uvicorn (httptools, uvloop) on SHOP_HOST:GATEWAY_PORT.

GATEWAY_PORT=0 takes any free port; with SHOP_READY_FILE set, the JSON
{"service": "gateway", "instance", "addr", "pid"} is written there once serving.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import socket
from collections.abc import Iterator

import uvicorn
import uvloop

from gateway.app import create_app
from gateway.config import GatewaySettings, load_gateway_settings
from services.common.logging import configure_logging
from services.common.readyfile import write_ready_file
from services.common.settings import env_str, load_settings

log = logging.getLogger("shop.gateway")


class _Server(uvicorn.Server):
    """uvicorn re-raises SIGTERM after a graceful stop (exit status -15); shop processes
    exit 0 after a graceful stop, so the signals only ask the server to exit."""

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
    server: uvicorn.Server, settings: GatewaySettings, addr: str, instance: str
) -> None:
    while not server.started:
        if server.should_exit:
            return
        await asyncio.sleep(0.005)
    log.info("gateway serving on http://%s", addr, extra={"addr": addr})
    if settings.ready_file is not None:
        write_ready_file(settings.ready_file, "gateway", instance, addr)


async def serve(settings: GatewaySettings, instance: str) -> None:
    sock = _bind(settings)
    port = sock.getsockname()[1]
    addr = f"{'127.0.0.1' if settings.host in ('', '0.0.0.0', '::') else settings.host}:{port}"
    config = uvicorn.Config(
        create_app(settings),
        http="httptools",
        loop="uvloop",
        lifespan="on",
        access_log=False,
        log_level=env_str("SHOP_LOG_LEVEL", "INFO").lower(),
        timeout_graceful_shutdown=10,
    )
    server = _Server(config)
    announcer = asyncio.create_task(_announce_when_started(server, settings, addr, instance))
    try:
        await server.serve(sockets=[sock])
    finally:
        announcer.cancel()
        sock.close()


def main() -> None:
    process = load_settings("gateway")
    configure_logging(process)
    uvloop.run(serve(load_gateway_settings(), process.instance_id))


if __name__ == "__main__":
    main()
