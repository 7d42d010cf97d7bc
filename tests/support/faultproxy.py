"""A small TCP fault proxy for fault tests: put it between a caller and a service.

    with FaultProxy("127.0.0.1:50052") as proxy:   # listens on 127.0.0.1:<free port>
        ... point the caller at proxy.addr ...
        proxy.set_mode(Mode.DELAY, delay_ms=300)   # every chunk forwarded 300 ms late
        proxy.set_mode(Mode.DROP)                  # existing and new connections closed
        proxy.set_mode(Mode.BLACKHOLE)             # accepted, never forwarded or answered
        proxy.set_mode(Mode.PASS)
        proxy.stats()                              # connections, HTTP/2 requests, bytes

It runs its own asyncio loop in a daemon thread, so synchronous tests (and async ones on
another loop) can switch modes; `set_mode` returns once the switch took effect (connections
it closes are closed). Leaving BLACKHOLE closes the connections that were held in it: the
bytes they swallowed leave their streams unusable, so callers must reconnect.

The proxy reads the client-to-server bytes as HTTP/2 frames when they start with the
HTTP/2 preface (gRPC over plain TCP does), and counts HEADERS frames: `requests_seen` is
every call that reached the proxy, `requests_forwarded` every call it passed to the target.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import enum
import socket
import ssl
import threading
import time
from collections.abc import Coroutine
from types import TracebackType
from typing import Any, TypeVar

__all__ = ["FaultProxy", "Mode", "ProxyStats", "ProxyTls"]

T = TypeVar("T")

_H2_PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
_H2_HEADERS = 0x1
_CHUNK = 64 * 1024
_CALL_TIMEOUT_S = 10.0


class Mode(enum.Enum):
    PASS = "pass"
    DELAY = "delay"
    DROP = "drop"
    BLACKHOLE = "blackhole"


@dataclasses.dataclass(frozen=True)
class ProxyStats:
    connections: int  # accepted from callers, in any mode
    upstream_connections: int  # opened to the target
    requests_seen: int  # HTTP/2 HEADERS frames from callers, in any mode
    requests_forwarded: int  # ... of those, passed on to the target
    bytes_up: int  # caller -> target, forwarded
    bytes_down: int  # target -> caller, forwarded
    active: int  # connections open now


class _H2Counter:
    """Counts HEADERS frames in one direction of an HTTP/2 connection (incrementally)."""

    def __init__(self) -> None:
        self._buf = b""
        self._preface_done = False
        self._enabled = True

    def feed(self, data: bytes) -> int:
        if not self._enabled:
            return 0
        self._buf += data
        if not self._preface_done:
            if len(self._buf) < len(_H2_PREFACE):
                if not _H2_PREFACE.startswith(self._buf):
                    self._enabled = False  # not HTTP/2: counting off
                return 0
            if not self._buf.startswith(_H2_PREFACE):
                self._enabled = False
                return 0
            self._buf = self._buf[len(_H2_PREFACE):]
            self._preface_done = True
        found = 0
        while len(self._buf) >= 9:
            length = int.from_bytes(self._buf[0:3], "big")
            if len(self._buf) < 9 + length:
                break
            if self._buf[3] == _H2_HEADERS:
                found += 1
            self._buf = self._buf[9 + length:]
        return found


class _Conn:
    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer
        self.held = False  # in blackhole: reads and discards, never forwards
        self.upstream: asyncio.StreamWriter | None = None
        self.tasks: list[asyncio.Task[None]] = []
        self.counter = _H2Counter()

    def abort(self) -> None:
        for w in (self.writer, self.upstream):
            if w is not None:
                with contextlib.suppress(Exception):
                    w.transport.abort()
        for t in self.tasks:
            t.cancel()


@dataclasses.dataclass(frozen=True)
class ProxyTls:
    """TLS on both legs, so the proxy still reads HTTP/2 frames on an mTLS mesh: it
    answers callers with `server` (the target's certificate) and dials the target
    with `client` (the caller's), checking it is `target_name`."""

    server: ssl.SSLContext
    client: ssl.SSLContext
    target_name: str


class FaultProxy:
    def __init__(self, target: str, *, host: str = "127.0.0.1",
                 tls: ProxyTls | None = None) -> None:
        self.tls = tls
        thost, _, tport = target.rpartition(":")
        self.target_host = thost or "127.0.0.1"
        self.target_port = int(tport)
        self.host = host
        self.port = 0
        self._mode = Mode.PASS
        self._delay_s = 0.0
        self._conns: set[_Conn] = set()
        self._counts = {"connections": 0, "upstream": 0, "seen": 0, "forwarded": 0,
                        "up": 0, "down": 0}
        self._lock = threading.Lock()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._server: asyncio.Server | None = None

    # -- public, thread-safe -------------------------------------------------------------

    @property
    def addr(self) -> str:
        return f"{self.host}:{self.port}"

    @property
    def mode(self) -> Mode:
        return self._mode

    def start(self) -> FaultProxy:
        if self._thread is not None:
            return self
        loop = asyncio.new_event_loop()
        self._loop = loop
        self._thread = threading.Thread(target=loop.run_forever, name="faultproxy",
                                        daemon=True)
        self._thread.start()
        self._run(self._listen())
        return self

    def stop(self) -> None:
        loop, thread = self._loop, self._thread
        if loop is None or thread is None:
            return
        with contextlib.suppress(Exception):
            self._run(self._shutdown())
        loop.call_soon_threadsafe(loop.stop)
        thread.join(timeout=5.0)
        if not thread.is_alive():
            loop.close()
        self._loop = None
        self._thread = None

    def set_mode(self, mode: Mode, *, delay_ms: float = 0.0) -> None:
        """Switch now; DROP closes every open connection before this returns."""
        self._run(self._switch(mode, delay_ms / 1000.0))

    def stats(self) -> ProxyStats:
        with self._lock:
            c = dict(self._counts)
        return ProxyStats(connections=c["connections"], upstream_connections=c["upstream"],
                          requests_seen=c["seen"], requests_forwarded=c["forwarded"],
                          bytes_up=c["up"], bytes_down=c["down"], active=len(self._conns))

    def __enter__(self) -> FaultProxy:
        return self.start()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()

    # -- inside the proxy's loop ---------------------------------------------------------

    def _run(self, coro: Coroutine[Any, Any, T]) -> T:
        if self._loop is None:
            coro.close()
            raise RuntimeError("the proxy is not running")
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(_CALL_TIMEOUT_S)

    def _count(self, key: str, n: int = 1) -> None:
        with self._lock:
            self._counts[key] += n

    async def _listen(self) -> None:
        self._server = await asyncio.start_server(
            self._accept, self.host, 0, ssl=self.tls.server if self.tls else None)
        sock: socket.socket = self._server.sockets[0]
        self.port = int(sock.getsockname()[1])

    async def _shutdown(self) -> None:
        if self._server is not None:
            self._server.close()
        for conn in list(self._conns):
            conn.abort()
        self._conns.clear()
        if self._server is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._server.wait_closed(), 2.0)

    async def _switch(self, mode: Mode, delay_s: float) -> None:
        old = self._mode
        self._mode = mode
        self._delay_s = delay_s
        if mode is Mode.DROP:
            victims = list(self._conns)
        elif mode is Mode.BLACKHOLE:
            victims = []
            for conn in self._conns:
                conn.held = True
        else:
            victims = [c for c in self._conns if c.held] if old is Mode.BLACKHOLE else []
        for conn in victims:
            self._conns.discard(conn)
            conn.abort()

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._count("connections")
        if self._mode is Mode.DROP:
            with contextlib.suppress(Exception):
                writer.transport.abort()
            return
        conn = _Conn(reader, writer)
        self._conns.add(conn)
        try:
            if self._mode is Mode.BLACKHOLE:
                conn.held = True
            else:
                try:
                    up_reader, up_writer = await asyncio.open_connection(
                        self.target_host, self.target_port,
                        ssl=self.tls.client if self.tls else None,
                        server_hostname=self.tls.target_name if self.tls else None)
                except OSError:
                    return  # target down: the caller sees its connection closed
                self._count("upstream")
                conn.upstream = up_writer
                conn.tasks.append(asyncio.create_task(self._pump_down(conn, up_reader)))
            await self._pump_up(conn)
        except (asyncio.CancelledError, ConnectionError, OSError):
            pass
        finally:
            self._conns.discard(conn)
            conn.abort()

    async def _pump_up(self, conn: _Conn) -> None:
        """Caller -> target, honouring the mode chunk by chunk (order kept under delay)."""
        queue: asyncio.Queue[tuple[float, bytes] | None] = asyncio.Queue()
        writer_task = asyncio.create_task(self._delayed_writer(conn, queue, up=True))
        conn.tasks.append(writer_task)
        while True:
            data = await conn.reader.read(_CHUNK)
            if not data:
                break
            calls = conn.counter.feed(data)
            if calls:
                self._count("seen", calls)
            if conn.held or conn.upstream is None:
                continue  # blackhole: swallowed
            if calls:
                self._count("forwarded", calls)
            queue.put_nowait((time.monotonic() + self._delay_s, data))
        queue.put_nowait(None)
        with contextlib.suppress(asyncio.CancelledError, ConnectionError, OSError):
            await writer_task

    async def _pump_down(self, conn: _Conn, up_reader: asyncio.StreamReader) -> None:
        """Target -> caller."""
        queue: asyncio.Queue[tuple[float, bytes] | None] = asyncio.Queue()
        writer_task = asyncio.create_task(self._delayed_writer(conn, queue, up=False))
        conn.tasks.append(writer_task)
        try:
            while True:
                data = await up_reader.read(_CHUNK)
                if not data:
                    break
                if conn.held:
                    continue
                queue.put_nowait((time.monotonic() + self._delay_s, data))
        except (ConnectionError, OSError):
            pass
        queue.put_nowait(None)
        with contextlib.suppress(asyncio.CancelledError, ConnectionError, OSError):
            await writer_task
        # The target closed: close the caller's side too.
        conn.abort()

    async def _delayed_writer(self, conn: _Conn,
                              queue: asyncio.Queue[tuple[float, bytes] | None],
                              *, up: bool) -> None:
        while True:
            item = await queue.get()
            if item is None:
                break
            due, data = item
            wait = due - time.monotonic()
            if wait > 0:
                await asyncio.sleep(wait)
            if conn.held:
                continue
            writer = conn.upstream if up else conn.writer
            if writer is None:
                continue
            self._count("up" if up else "down", len(data))  # before the peer can see it
            writer.write(data)
            await writer.drain()
        writer = conn.upstream if up else conn.writer
        if writer is not None and up:
            with contextlib.suppress(Exception):
                writer.write_eof()
