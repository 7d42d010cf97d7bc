"""`python -m gateway` as a real process on loopback: whose limits a request counts
against, and a body over the limit answered so that a client writing it all can read it.

Every downstream is down (nothing listens on 127.0.0.1:9), which is enough: the limits
are applied before anything is called, so a request either reaches the (dead) downstream
and gets 503, or is refused by the gateway itself with 401, 413 or 429.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx

from services.common.settings import SERVICES

REPO = Path(__file__).resolve().parents[2]


@contextmanager
def _gateway(tmp_path: Path, **env: str) -> Iterator[httpx.Client]:
    ready = tmp_path / "gateway.ready.json"
    full_env = {
        **os.environ,
        "GATEWAY_PORT": "0",
        "SHOP_READY_FILE": str(ready),
        "SHOP_DATA_DIR": str(tmp_path / "data"),
        "SHOP_REGISTRY": "off",
        **{f"{s.upper()}_ADDR": "127.0.0.1:9" for s in SERVICES},
        **env,
    }
    proc = subprocess.Popen(
        [sys.executable, "-m", "gateway"],
        cwd=REPO,
        env=full_env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 30
        while not ready.exists():
            assert proc.poll() is None, "the gateway exited"
            assert time.monotonic() < deadline, "gateway never became ready"
            time.sleep(0.05)
        addr = json.loads(ready.read_text())["addr"]
        with httpx.Client(base_url=f"http://{addr}", timeout=10) as client:
            yield client
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def _login(client: httpx.Client, email: str, **headers: str) -> httpx.Response:
    return client.post(
        "/api/auth/login", json={"email": email, "password": "guess-123"}, headers=headers
    )


def test_rotating_x_forwarded_for_from_loopback_does_not_escape_the_login_limit(
    tmp_path: Path,
) -> None:
    with _gateway(tmp_path, GATEWAY_LOGIN_RATE_LIMIT="3/minute") as client:
        answers = [
            _login(client, f"victim-{i}@example.com", **{"X-Forwarded-For": f"203.0.113.{i}"})
            for i in range(1, 6)
        ]
        forwarded = [
            _login(client, f"other-{i}@example.com", Forwarded=f"for=198.51.100.{i}")
            for i in range(1, 3)
        ]
    statuses = [r.status_code for r in answers + forwarded]
    # The first three reach the (dead) user service; the rest are the same client.
    assert statuses == [503, 503, 503, 429, 429, 429, 429], statuses
    limited = answers[3]
    assert int(limited.headers["retry-after"]) >= 1
    assert limited.json()["error"]["status"] == "RESOURCE_EXHAUSTED"
    assert "per client address" in limited.json()["error"]["message"]


def test_a_trusted_proxy_names_the_client(tmp_path: Path) -> None:
    with _gateway(
        tmp_path, GATEWAY_LOGIN_RATE_LIMIT="2/minute", GATEWAY_TRUSTED_PROXIES="127.0.0.1"
    ) as client:
        one = [_login(client, "a@example.com", **{"X-Forwarded-For": "203.0.113.7"})
               for _ in range(3)]
        # What a client wrote itself is on the left of what the proxy appended.
        spoofed = _login(client, "b@example.com", **{"X-Forwarded-For": "1.2.3.4, 203.0.113.7"})
        other = _login(client, "c@example.com", **{"X-Forwarded-For": "203.0.113.8"})
    assert [r.status_code for r in one] == [503, 503, 429]
    assert spoofed.status_code == 429
    assert other.status_code == 503


def test_a_flood_of_bad_tokens_is_limited_before_the_token_check(tmp_path: Path) -> None:
    with _gateway(tmp_path, GATEWAY_ANON_RATE_LIMIT="5/minute") as client:
        statuses = [
            client.get("/api/orders", headers={"Authorization": f"Bearer bad.token.{i}"})
            for i in range(8)
        ]
    assert [r.status_code for r in statuses] == [401] * 5 + [429] * 3
    assert all(int(r.headers["retry-after"]) >= 1 for r in statuses[5:])


FIVE_MB = 5 * 1024 * 1024


def _raw_exchange(client: httpx.Client, head: bytes, payload: bytes, *,
                  until_eof: bool = False) -> bytes:
    """Write the request whole, only then read: the answer's head and body (or all the
    connection carries until the server closes it)."""
    url = client.base_url
    with socket.create_connection((str(url.host), int(url.port or 80)), timeout=30) as sock:
        sock.sendall(head + payload)
        answer = b""
        while True:
            chunk = sock.recv(65536)
            if not chunk:
                return answer
            answer += chunk
            if not until_eof and b"\r\n\r\n" in answer:
                head_part, _, rest = answer.partition(b"\r\n\r\n")
                length = next(int(line.split(b":", 1)[1]) for line in head_part.split(b"\r\n")
                              if line.lower().startswith(b"content-length:"))
                if len(rest) >= length:
                    return answer


def _chunked(body: bytes) -> bytes:
    step = 65536
    parts = [b"%x\r\n%s\r\n" % (len(body[i:i + step]), body[i:i + step])
             for i in range(0, len(body), step)]
    return b"".join(parts) + b"0\r\n\r\n"


def _status_and_error(answer: bytes) -> tuple[int, dict[str, object]]:
    head, _, body = answer.partition(b"\r\n\r\n")
    status = int(head.split(b" ", 2)[1])
    return status, json.loads(body)["error"]


def test_a_client_that_writes_a_5_mb_body_before_reading_gets_the_413(tmp_path: Path) -> None:
    body = b'{"email": "' + b"x" * FIVE_MB + b'"}'
    with _gateway(tmp_path) as client:
        answers = {
            "length": _raw_exchange(client, (
                b"POST /api/users HTTP/1.1\r\nHost: gw\r\nConnection: close\r\n"
                b"Content-Type: application/json\r\nContent-Length: %d\r\n\r\n" % len(body)
            ), body),
            "chunked": _raw_exchange(client, (
                b"POST /api/users HTTP/1.1\r\nHost: gw\r\nConnection: close\r\n"
                b"Content-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n"
            ), _chunked(body)),
            # Refused before the body is even looked at: the same holds for a 401.
            "no token": _raw_exchange(client, (
                b"POST /api/orders HTTP/1.1\r\nHost: gw\r\nConnection: close\r\n"
                b"Content-Type: application/json\r\nContent-Length: %d\r\n\r\n" % len(body)
            ), body),
        }
        # Kept alive: the connection serves the next request after the drained body.
        two = _raw_exchange(client, (
            b"POST /api/users HTTP/1.1\r\nHost: gw\r\n"
            b"Content-Type: application/json\r\nContent-Length: %d\r\n\r\n" % len(body)
        ), body + b"GET /nowhere HTTP/1.1\r\nHost: gw\r\nConnection: close\r\n\r\n",
            until_eof=True)
    for what in ("length", "chunked"):
        status, error = _status_and_error(answers[what])
        assert status == 413, what
        assert error["code"] == 413 and "65536 bytes" in str(error["message"]), what
    assert _status_and_error(answers["no token"])[0] == 401
    assert two.startswith(b"HTTP/1.1 413"), two[:100]
    assert two.count(b"HTTP/1.1 ") == 2 and b"HTTP/1.1 404" in two, two[:400]
