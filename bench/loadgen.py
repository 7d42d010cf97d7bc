"""Our own HTTP/1.1 keep-alive load client, used when `wrk` is not installed.

`python -m bench.loadgen --url URL ...` runs in its own process (uvloop, one asyncio
Protocol per connection, one request in flight per connection, no pipelining) and
prints one JSON line: the Measured record of the timed window. Being Python, it needs
roughly a core of its own at 10k+ requests/s, so on a small box it caps the figures it
reports; the ratios stay fair because raw baselines and shop share the same client.
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import json
import sys
import time
from collections import Counter
from urllib.parse import urlsplit

import uvloop

from bench.stats import Measured, percentile

__all__ = ["main"]


class _Load:
    def __init__(self, request: bytes, ok_status: int, ok_body: bytes) -> None:
        self.request = request
        self.ok_status = ok_status
        self.ok_body = ok_body
        self.matched = 0
        self.running = True
        self.measuring = False
        self.latencies: list[float] = []
        self.statuses: Counter[int] = Counter()
        self.errors = 0

    def record(self, status: int, seconds: float, body: bytes) -> None:
        if self.measuring:
            self.latencies.append(seconds)
            self.statuses[status] += 1
            good = (status == self.ok_status if self.ok_status else 200 <= status < 400)
            if good and (not self.ok_body or self.ok_body in body):
                self.matched += 1


class _Conn(asyncio.Protocol):
    def __init__(self, load: _Load, closed: asyncio.Future[None]) -> None:
        self.load = load
        self.closed = closed
        self.buf = b""
        self.need: int | None = None
        self.chunked = False
        self.status = 0
        self.t0 = 0.0
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  # uvloop's is no subclass
        self._send()

    def _send(self) -> None:
        assert self.transport is not None
        self.t0 = time.perf_counter()
        self.transport.write(self.load.request)

    def data_received(self, data: bytes) -> None:
        self.buf += data
        while True:
            if self.need is None:
                end = self.buf.find(b"\r\n\r\n")
                if end < 0:
                    return
                head = self.buf[:end].lower()
                self.status = int(head[9:12])
                self.chunked = b"transfer-encoding: chunked" in head
                length = 0
                pos = head.find(b"content-length:")
                if pos >= 0:
                    eol = head.find(b"\r\n", pos)
                    length = int(head[pos + 15:eol if eol >= 0 else len(head)])
                self.buf = self.buf[end + 4:]
                self.need = -1 if self.chunked else length
            if self.need == -1:
                stop = self.buf.find(b"0\r\n\r\n")
                if stop < 0:
                    return
                body, self.buf = self.buf[:stop], self.buf[stop + 5:]
            else:
                if len(self.buf) < self.need:
                    return
                body, self.buf = self.buf[:self.need], self.buf[self.need:]
            self.need = None
            self.load.record(self.status, time.perf_counter() - self.t0, body)
            if not self.load.running:
                assert self.transport is not None
                self.transport.close()
                return
            self._send()

    def connection_lost(self, exc: Exception | None) -> None:
        if self.load.running:
            self.load.errors += 1
        if not self.closed.done():
            self.closed.set_result(None)


async def _conn_loop(load: _Load, host: str, port: int) -> None:
    loop = asyncio.get_running_loop()
    while load.running:
        closed: asyncio.Future[None] = loop.create_future()
        try:
            await loop.create_connection(functools.partial(_Conn, load, closed), host, port)
        except OSError:
            load.errors += 1
            await asyncio.sleep(0.05)
            continue
        await closed


async def run(url: str, *, method: str, body: bytes, headers: list[str], connections: int,
              warmup_s: float, seconds: float, ok_status: int = 0,
              ok_body: bytes = b"") -> Measured:
    parts = urlsplit(url)
    host, port = parts.hostname or "127.0.0.1", parts.port or 80
    path = parts.path + (f"?{parts.query}" if parts.query else "")
    lines = [f"{method} {path} HTTP/1.1", f"Host: {host}:{port}"]
    lines += headers
    if body:
        lines.append(f"Content-Length: {len(body)}")
    request = ("\r\n".join(lines) + "\r\n\r\n").encode() + body
    load = _Load(request, ok_status, ok_body)
    tasks = [asyncio.create_task(_conn_loop(load, host, port)) for _ in range(connections)]
    await asyncio.sleep(warmup_s)
    load.measuring = True
    t0 = time.perf_counter()
    await asyncio.sleep(seconds)
    load.measuring = False
    elapsed = time.perf_counter() - t0
    load.running = False
    _, pending = await asyncio.wait(tasks, timeout=5.0)
    for task in pending:
        task.cancel()
    ok = load.matched
    ms = [s * 1000.0 for s in load.latencies]
    return Measured(
        rps=ok / elapsed if elapsed else 0.0, p50_ms=percentile(ms, 50), p99_ms=percentile(ms, 99),
        ok=ok, errors=load.errors + len(load.latencies) - ok, seconds=elapsed,
        tool="python-asyncio", extra={"statuses": {str(k): v for k, v in load.statuses.items()}})


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.loadgen")
    parser.add_argument("--url", required=True)
    parser.add_argument("--method", default="GET")
    parser.add_argument("--body", default="")
    parser.add_argument("--header", action="append", default=[])
    parser.add_argument("--connections", type=int, default=64)
    parser.add_argument("--warmup", type=float, default=1.0)
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--ok-status", type=int, default=0, help="0: any 2xx/3xx")
    parser.add_argument("--ok-body", default="", help="text a success must contain")
    args = parser.parse_args(argv)
    result = uvloop.run(run(args.url, method=args.method, body=args.body.encode(),
                            headers=args.header, connections=args.connections,
                            warmup_s=args.warmup, seconds=args.seconds,
                            ok_status=args.ok_status, ok_body=args.ok_body.encode()))
    sys.stdout.write(json.dumps(result.to_json()) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
