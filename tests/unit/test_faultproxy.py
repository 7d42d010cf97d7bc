"""The test fault proxy itself: each mode, switched at run time, and its counters."""

from __future__ import annotations

import socket
import socketserver
import threading
import time
from collections.abc import Iterator
from concurrent import futures

import grpc
import pytest
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from tests.support.faultproxy import FaultProxy, Mode


class _Echo(socketserver.BaseRequestHandler):
    def handle(self) -> None:
        sock: socket.socket = self.request
        while True:
            data = sock.recv(65536)
            if not data:
                return
            sock.sendall(data)


class _EchoServer(socketserver.ThreadingTCPServer):
    daemon_threads = True
    allow_reuse_address = True


@pytest.fixture
def echo() -> Iterator[str]:
    server = _EchoServer(("127.0.0.1", 0), _Echo)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05},
                              daemon=True)
    thread.start()
    try:
        yield f"127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


@pytest.fixture
def proxy(echo: str) -> Iterator[FaultProxy]:
    with FaultProxy(echo) as p:
        yield p


def _connect(proxy: FaultProxy, timeout: float = 2.0) -> socket.socket:
    return socket.create_connection(("127.0.0.1", proxy.port), timeout=timeout)


def _roundtrip(sock: socket.socket, payload: bytes) -> bytes:
    sock.sendall(payload)
    got = b""
    while len(got) < len(payload):
        chunk = sock.recv(65536)
        if not chunk:
            break
        got += chunk
    return got


def _closed(sock: socket.socket) -> bool:
    """True when the peer closed (EOF or reset) within the socket's timeout."""
    try:
        return sock.recv(1) == b""
    except ConnectionError:
        return True
    except TimeoutError:
        return False


def test_pass_forwards_both_ways_and_counts(proxy: FaultProxy) -> None:
    assert proxy.port > 0
    with _connect(proxy) as sock:
        assert _roundtrip(sock, b"hello") == b"hello"
        assert _roundtrip(sock, b"x" * 100_000) == b"x" * 100_000
    stats = proxy.stats()
    assert stats.connections == 1 and stats.upstream_connections == 1
    assert stats.bytes_up == stats.bytes_down == 100_005


def test_delay_holds_each_chunk_back(proxy: FaultProxy) -> None:
    with _connect(proxy) as sock:
        t0 = time.monotonic()
        assert _roundtrip(sock, b"ping") == b"ping"
        fast = time.monotonic() - t0
        proxy.set_mode(Mode.DELAY, delay_ms=150)
        t0 = time.monotonic()
        assert _roundtrip(sock, b"ping") == b"ping"  # existing connection is delayed too
        slow = time.monotonic() - t0
        proxy.set_mode(Mode.PASS)
        t0 = time.monotonic()
        assert _roundtrip(sock, b"ping") == b"ping"
        back = time.monotonic() - t0
    assert fast < 0.1 and back < 0.1
    assert 0.3 <= slow < 1.5  # both directions: 2 x 150 ms


def test_drop_closes_existing_and_new_connections(proxy: FaultProxy) -> None:
    with _connect(proxy) as sock:
        assert _roundtrip(sock, b"a") == b"a"
        proxy.set_mode(Mode.DROP)
        assert _closed(sock)
    with _connect(proxy) as sock:  # the accept works, then the proxy hangs up
        assert _closed(sock)
    proxy.set_mode(Mode.PASS)
    with _connect(proxy) as sock:
        assert _roundtrip(sock, b"b") == b"b"
    assert proxy.stats().connections == 3


def test_blackhole_accepts_but_never_answers(proxy: FaultProxy) -> None:
    with _connect(proxy, timeout=0.3) as old:
        assert _roundtrip(old, b"a") == b"a"
        proxy.set_mode(Mode.BLACKHOLE)
        before = proxy.stats()
        with _connect(proxy, timeout=0.3) as new:
            for sock in (old, new):
                sock.sendall(b"anyone?")
                with pytest.raises(TimeoutError):
                    sock.recv(10)
        after = proxy.stats()
        assert after.bytes_up == before.bytes_up  # nothing forwarded
        assert after.upstream_connections == before.upstream_connections
        proxy.set_mode(Mode.PASS)  # held connections are closed: their streams are broken
        assert _closed(old)
    with _connect(proxy) as sock:
        assert _roundtrip(sock, b"ok") == b"ok"


def test_target_down_closes_the_callers_connection() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with FaultProxy(f"127.0.0.1:{port}") as p, _connect(p) as sock:
        assert _closed(sock)


def test_counts_grpc_calls_seen_and_forwarded() -> None:
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    health_pb2_grpc.add_HealthServicer_to_server(health.HealthServicer(), server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        with FaultProxy(f"127.0.0.1:{port}") as p, grpc.insecure_channel(p.addr) as chan:
            stub = health_pb2_grpc.HealthStub(chan)
            for _ in range(3):
                stub.Check(health_pb2.HealthCheckRequest(), timeout=2)
            s = p.stats()
            assert (s.requests_seen, s.requests_forwarded) == (3, 3)
            p.set_mode(Mode.BLACKHOLE)
            with pytest.raises(grpc.RpcError) as err:
                stub.Check(health_pb2.HealthCheckRequest(), timeout=0.3)
            assert err.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
            s = p.stats()
            assert s.requests_forwarded == 3 and s.requests_seen == 4
            p.set_mode(Mode.PASS)
            deadline = time.monotonic() + 5
            while True:  # the channel reconnects after the held connection is closed
                try:
                    stub.Check(health_pb2.HealthCheckRequest(), timeout=1)
                    break
                except grpc.RpcError:
                    assert time.monotonic() < deadline
                    time.sleep(0.05)
            assert p.stats().requests_forwarded >= 4
    finally:
        server.stop(None)
