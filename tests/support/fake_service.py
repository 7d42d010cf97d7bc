"""A stand-in for a shop service: grpc health + the ready file, nothing else.

`python -m tests.support.fake_service <name>` follows the same process contract as
`python -m services.<name>` (env <NAME>_PORT, SHOP_HOST, SHOP_READY_FILE,
SHOP_INSTANCE_ID; SIGTERM = graceful stop, exit 0), so the process layer and
shopctl can be tested without the real services. For `gateway` it serves HTTP
GET /healthz instead.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from threading import Thread

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from services.common import authz
from services.common.settings import load_tls_config


def _write_ready(name: str, addr: str) -> None:
    path = os.environ.get("SHOP_READY_FILE")
    if not path:
        return
    tmp = Path(path + ".tmp")
    tmp.write_text(json.dumps({"service": name, "instance": os.environ.get(
        "SHOP_INSTANCE_ID", name), "addr": addr, "pid": os.getpid()}))
    tmp.replace(path)  # atomic: a reader never sees half a file


async def serve_grpc(name: str) -> None:
    host = os.environ.get("SHOP_HOST", "127.0.0.1")
    port = int(os.environ.get(f"{name.upper()}_PORT", "0"))
    server = grpc.aio.server()
    servicer = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(servicer, server)
    # mTLS as `name`, like a service
    bound = authz.listen(server, f"{host}:{port}", name, load_tls_config())
    await server.start()
    for service in ("", f"shop.{name}.v1.{name.capitalize()}Service"):  # as a real one
        await servicer.set(service, health_pb2.HealthCheckResponse.SERVING)
    _write_ready(name, f"{host}:{bound}")
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    await servicer.enter_graceful_shutdown()
    await server.stop(1.0)


class _Healthz(BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        ok = self.path in ("/healthz", "/readyz")
        self.send_response(200 if ok else 404)
        self.end_headers()
        self.wfile.write(b'{"status":"ok"}' if ok else b"{}")

    def log_message(self, format: str, *args: object) -> None:
        pass


def serve_http() -> None:
    host = os.environ.get("SHOP_HOST", "127.0.0.1")
    httpd = ThreadingHTTPServer((host, int(os.environ.get("GATEWAY_PORT", "0"))), _Healthz)
    signal.signal(signal.SIGTERM, lambda *_: Thread(target=httpd.shutdown).start())
    _write_ready("gateway", f"{host}:{httpd.server_address[1]}")
    httpd.serve_forever()


def main() -> None:
    name = sys.argv[1]
    if name == "gateway":
        serve_http()
    else:
        asyncio.run(serve_grpc(name))


if __name__ == "__main__":
    main()
