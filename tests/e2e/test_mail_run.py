"""`make run` with its mail catcher: a new user and an order end up as readable .eml
files (welcome, receipt, tracking), `shopctl mail list|show` reads them, the REST
resource says SENT, and the supervisor restarts a killed catcher."""

from __future__ import annotations

import json
import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from ops.mailcatcher import MailDir
from tests.e2e.test_make_run import START_TIMEOUT_S, ShopRun, pid_gone, shopctl

pytestmark = pytest.mark.timeout(240)

PASSWORD = "correct-horse-9"


@pytest.fixture
def shop_run(tmp_path: Path) -> Iterator[ShopRun]:
    run = ShopRun(tmp_path / "var")
    try:
        yield run
    finally:
        run.cleanup()


def _wait_mails(maildir: MailDir, subjects: set[str], timeout_s: float = 60.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not subjects <= {m.subject for m in maildir.list()}:
        assert time.monotonic() < deadline, (
            f"mails {sorted(subjects)} not all caught; have "
            f"{sorted(m.subject for m in maildir.list())}")
        time.sleep(0.1)


def _signup_and_order(base: str) -> tuple[str, str]:
    """(bearer token, order id) of a new user who ordered one item."""
    with httpx.Client(base_url=base, timeout=30, trust_env=False) as http:
        user = {"email": "mail@example.com", "name": "Mia", "password": PASSWORD}
        assert http.post("/api/users", json=user).status_code == 201
        login = http.post("/api/auth/login", json={"email": user["email"],
                                                   "password": PASSWORD})
        assert login.status_code == 200, login.text
        token = str(login.json()["accessToken"])
        body = {"items": [{"productId": "yoga-mat", "quantity": 1}], "cardToken": "tok_visa"}
        deadline = time.monotonic() + 15
        while True:
            order = http.post("/api/orders", headers={"Authorization": f"Bearer {token}"},
                              json=body)
            # The gateway may not hold the user service's signing keys yet.
            if order.status_code != 503 or time.monotonic() > deadline:
                break
            time.sleep(0.5)
        assert order.status_code in (201, 202), order.text
        return token, str(order.json()["id"])


def _notifications(base: str, token: str) -> list[dict[str, Any]]:
    with httpx.Client(base_url=base, timeout=30, trust_env=False) as http:
        got = http.get("/api/notifications", headers={"Authorization": f"Bearer {token}"})
        assert got.status_code == 200, got.text
        return list(got.json()["notifications"])


def test_make_run_catches_the_mails_and_shopctl_reads_them(shop_run: ShopRun) -> None:
    shop_run.wait_for("processes healthy in", START_TIMEOUT_S)
    mail_dir = shop_run.data_dir.resolve() / "mail"
    port = shop_run.ports["mailcatcher"]
    assert f"mail: caught on smtp://127.0.0.1:{port}, one .eml per mail in {mail_dir}/" \
        in shop_run.output
    maildir = MailDir(mail_dir)
    base = f"http://127.0.0.1:{shop_run.ports['gateway']}"
    token, order_id = _signup_and_order(base)
    _wait_mails(maildir, {"Welcome to shop, Mia", f"Receipt for order {order_id}",
                          f"Order {order_id} shipped"})

    listed = shopctl(shop_run, "mail", "list")
    assert listed.returncode == 0, listed.stderr
    assert "Welcome to shop, Mia" in listed.stdout
    assert f"Order {order_id} shipped" in listed.stdout
    assert "Mia <mail@example.com>" in listed.stdout

    # The REST resource shows the delivery; the notification id finds its mail.
    by_kind = {n["kind"]: n for n in _notifications(base, token)}
    shipped = by_kind["NOTIFICATION_KIND_SHIPPED"]
    with httpx.Client(base_url=base, timeout=30, trust_env=False) as http:
        deadline = time.monotonic() + 30
        while True:
            one = http.get(f"/api/notifications/{shipped['id']}",
                           headers={"Authorization": f"Bearer {token}"})
            assert one.status_code == 200, one.text
            if one.json()["delivery"] == "DELIVERY_STATUS_SENT" \
                    or time.monotonic() > deadline:
                break
            time.sleep(0.1)
    assert one.json()["delivery"] == "DELIVERY_STATUS_SENT", one.json()
    assert one.json()["deliveryError"] == ""
    show = shopctl(shop_run, "mail", "show", shipped["id"])
    assert show.returncode == 0, show.stderr
    assert f"Subject: Order {order_id} shipped" in show.stdout
    assert f"Message-ID: <notification-{shipped['id']}@shop.local>" in show.stdout
    assert "Tracking number:" in show.stdout
    missing = shopctl(shop_run, "mail", "show", "no-such-mail")
    assert missing.returncode == 1 and "no mail" in missing.stderr

    # The catcher is supervised like the services.
    doc = json.loads((shop_run.data_dir / "run" / "instances.json").read_text())
    pid = int(doc["mailcatcher"]["pid"])
    os.kill(pid, signal.SIGKILL)
    shop_run.wait_for("restarted mailcatcher-1", 20)
    shop_run.wait_for("mailcatcher-1 is healthy again", 30)
    doc = json.loads((shop_run.data_dir / "run" / "instances.json").read_text())
    new_pid = int(doc["mailcatcher"]["pid"])
    assert shop_run.interrupt() == 0, shop_run.output
    deadline = time.monotonic() + 10
    while not pid_gone(new_pid) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert pid_gone(new_pid), "mail catcher left running"
