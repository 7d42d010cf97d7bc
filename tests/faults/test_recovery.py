"""Recovery in seconds: after kill -9 of the payment service and its restart on the same
port (as `make run`'s supervisor does, about a second later), the gateway uses it again
within about a second of it reporting SERVING, although its breaker for the payment
service opened while it was down and the reset timeout is the seed default of 30 s.

The breaker's health watch does it: while open it checks the instance's health every
0.25 s and half-opens the breaker once it reports SERVING after it was seen down.
"""

from __future__ import annotations

import time
import uuid

import httpx
import pytest

from tests.fixtures_services import ServiceFactory

pytestmark = pytest.mark.timeout(120)

RESET_S = 30.0  # the seed default, stated so the test does not depend on the environment
RECOVERY_BOUND_S = 3.0  # "about 2 s" on a loaded machine: a tenth of the reset timeout


def _register(api: httpx.Client) -> dict[str, str]:
    email = f"recovery-{uuid.uuid4().hex[:8]}@example.com"
    r = api.post("/api/users", json={"email": email, "name": "Rita", "password": "s3cret-pass"})
    assert r.status_code == 201, r.text
    login = api.post("/api/auth/login", json={"email": email, "password": "s3cret-pass"})
    assert login.status_code == 200, login.text
    return {"Authorization": f"Bearer {login.json()['accessToken']}"}


def test_restarted_payment_is_used_again_within_seconds(services: ServiceFactory) -> None:
    _, payment = services.start_many("user", "payment")
    gateway = services.start("gateway", SHOP_BREAKER_FAIL_MAX="5",
                             SHOP_BREAKER_RESET_S=str(RESET_S))
    url = f"/api/payments/{uuid.uuid4().hex}"  # a payment that does not exist: 404
    with httpx.Client(base_url=gateway.base_url, timeout=10.0) as api:
        headers = _register(api)
        assert api.get(url, headers=headers).status_code == 404

        payment.kill()
        killed_at = time.monotonic()
        opened = False
        while not opened:  # the gateway's breaker for the payment service opens
            r = api.get(url, headers=headers)
            assert r.status_code == 503, r.text
            opened = "circuit open" in r.text
            assert time.monotonic() - killed_at < 10.0, "the breaker never opened"
        time.sleep(max(0.0, killed_at + 1.0 - time.monotonic()))  # the supervisor's pause
        payment.start()
        while payment.health(timeout=0.2) != "SERVING":
            assert time.monotonic() - killed_at < 60.0, payment.log_tail()
            time.sleep(0.02)
        serving_at = time.monotonic()
        while True:
            r = api.get(url, headers=headers)
            if r.status_code != 503:
                break
            assert time.monotonic() - serving_at < RESET_S / 2, "still 503: waited out?"
            time.sleep(0.05)
        recovery = time.monotonic() - serving_at
        print(f"\nrecovery after restart: {recovery:.2f} s after SERVING "
              f"({serving_at - killed_at:.2f} s from kill to SERVING)")
        assert r.status_code == 404, r.text
        assert recovery < RECOVERY_BOUND_S, f"used again {recovery:.2f} s after SERVING"
        for _ in range(5):  # closed: every call goes through
            assert api.get(url, headers=headers).status_code == 404
