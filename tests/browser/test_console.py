"""The operator console in Chromium: admins only; instances, a saga, dead letters, events."""

from __future__ import annotations

import asyncio
import json
import re
import time
import urllib.request
import uuid
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import nats
from playwright.sync_api import expect
from shop.user.v1 import user_pb2

from ops.process import System
from services.common import dlq
from services.common.outbox import new_envelope
from services.common.settings import SERVICES
from tests.browser.conftest import (
    ADMIN_PASSWORD,
    WAIT_MS,
    login_in_browser,
    rest,
    shopper,
)
from tests.support.mesh import nats_auth

ADMIN = "admin@shop.local"


def open_console(tab: Any) -> None:
    login_in_browser(tab, ADMIN, ADMIN_PASSWORD)
    tab.page.get_by_role("link", name="Console").click()
    expect(tab.page.get_by_role("heading", name="Instances")).to_be_visible()


def place_order(base_url: str) -> tuple[str, str]:
    """A shopper's confirmed order through REST: (order id, its request id)."""
    _, _, token = shopper(base_url)
    rid = f"console-{uuid.uuid4().hex[:12]}"
    req = urllib.request.Request(
        base_url + "/api/orders", method="POST",
        data=json.dumps({"items": [{"productId": "novel-dune", "quantity": 1}],
                         "cardToken": "tok_visa"}).encode(),
        headers={"content-type": "application/json", "authorization": f"Bearer {token}",
                 "x-request-id": rid})
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    with opener.open(req, timeout=15) as resp:
        assert resp.status == 201
        return json.loads(resp.read())["id"], rid


def put_dead_letter(nats_url: str, correlation_id: str) -> None:
    """A user.created event dead-lettered by the notification consumer, as the consumer
    does it when a handler keeps failing (the real writer, services.common.dlq)."""
    user = user_pb2.User(id=uuid.uuid4().hex, email=f"dl-{uuid.uuid4().hex[:8]}@example.com",
                         name="Dead Letter")
    env = new_envelope("user.created", user_pb2.UserCreated(user=user), source="user",
                       aggregate_id=user.id, correlation_id=correlation_id, traceparent="")

    async def write() -> None:
        nc = await nats.connect(nats_url, **nats_auth().options())
        try:
            await dlq.dead_letter(nc.jetstream(timeout=5), consumer="notification",
                                  subject="user.created", data=env.SerializeToString(),
                                  reason="handler failed 5 times (test)", event_id=env.id,
                                  stream_seq=10_000_000 + time.time_ns() % 1_000_000,
                                  correlation_id=correlation_id)
        finally:
            await nc.close()

    # Playwright's sync API keeps an event loop running in this thread: use another one.
    with ThreadPoolExecutor(1) as pool:
        pool.submit(asyncio.run, write()).result(timeout=30)


def test_an_admin_sees_every_instance(new_tab: Any) -> None:
    tab = new_tab(width=1280)
    tab.expected = ["status of 401 (Unauthorized)"]  # /console before logging in
    page = tab.page
    # Straight to /console: asked to log in, and back on the console after it.
    tab.goto("/console")
    page.get_by_role("link", name="log in with an admin account").click()
    page.get_by_label("Email").fill(ADMIN)
    page.get_by_label("Password").fill(ADMIN_PASSWORD)
    page.get_by_role("button", name="Log in").click()
    expect(page.get_by_role("heading", name="Instances")).to_be_visible()
    assert page.url.endswith("/console")
    rows = tab.page.locator("#instances-table tbody tr")
    for name in (*SERVICES, "gateway"):
        row = rows.filter(has=tab.page.locator(f"td:text-is('{name}')"))
        expect(row).to_have_count(1, timeout=WAIT_MS)
        expect(row.locator("td").nth(3)).to_have_text("SERVING")
    gateway_breakers = rows.filter(has_text="gateway").locator("td").nth(5)
    expect(gateway_breakers).to_contain_text(re.compile(r"closed: .*\border\b"))
    tab.shot("console-instances")


def test_an_admin_opens_a_saga_timeline_and_sees_its_events(
        new_tab: Any, base_url: str) -> None:
    order_id, rid = place_order(base_url)
    tab = new_tab(width=1280)
    open_console(tab)
    page = tab.page
    page.get_by_label("Order id").fill(order_id)
    page.get_by_role("button", name="Show timeline").click()
    expect(page.locator("#saga-status")).to_have_text(re.compile("^(CONFIRMED|SHIPPED)$"))
    steps = page.locator("#saga-table tbody tr")
    for step in ("reserve_stock", "charge", "confirm"):
        expect(steps.filter(has_text=step).first).to_be_visible()
    # No retry offered for a saga that needs none.
    expect(page.get_by_role("button", name="Retry saga")).to_have_count(0)
    # The live tail names the order's events with the request id that caused them.
    tail = page.locator("#events-table tbody tr[data-subject='order.created']")
    expect(tail.filter(has_text=rid)).to_have_count(1, timeout=WAIT_MS)
    tab.shot("console-saga")
    # From the tail to the saga: the event's order opens its timeline.
    page.get_by_label("Order id").fill("")
    page.locator("#saga-result").evaluate("n => n.replaceChildren()")
    tail.filter(has_text=rid).get_by_role("button", name=f"Saga of order {order_id}").click()
    expect(page.locator("#saga-table tbody tr").filter(has_text="charge")).to_have_count(1)
    expect(page.get_by_label("Order id")).to_have_value(order_id)


def test_an_admin_reads_a_products_stock_history(new_tab: Any, base_url: str) -> None:
    order_id, _ = place_order(base_url)
    tab = new_tab(width=1280)
    tab.expected = ["status of 404 (Not Found)"]  # the stock before the product had any
    open_console(tab)
    page = tab.page
    page.get_by_label("Product id").fill("novel-dune")
    page.get_by_role("button", name="Show stock").click()
    expect(page.locator("#stock-level")).to_contain_text(re.compile(r"\d+ available, 0 reserved"))
    rows = page.locator("#stock-table tbody tr")
    # The order's two events, newest first: its units committed after they were reserved.
    mine = rows.filter(has_text=order_id)
    expect(mine.locator("td:nth-child(3)")).to_have_text(["committed", "reserved"])
    # Newest first, a page at a time: down to the stream's first event, the stock set.
    older = page.get_by_role("button", name="Older events")
    while older.is_visible():
        shown = rows.count()
        older.click()
        expect(rows).not_to_have_count(shown)
    expect(rows.last).to_contain_text("stock set")
    versions = [int(v or 0) for v in rows.evaluate_all(
        "rs => rs.map(r => r.getAttribute('data-version'))")]
    assert versions == list(range(len(versions), 0, -1)), versions
    tab.shot("console-stock")
    page.get_by_label("As of (optional, your time)").fill("2001-01-01T00:00:00")
    page.get_by_role("button", name="Show stock").click()
    expect(page.locator("#stock-result")).to_have_text("No stock for novel-dune at that time.")


def test_an_admin_replays_a_dead_letter(new_tab: Any, live: System, base_url: str) -> None:
    rid = f"dlq-{uuid.uuid4().hex[:12]}"
    put_dead_letter(live.nats_url, rid)
    tab = new_tab(width=1280)
    open_console(tab)
    page = tab.page
    letter = page.locator("#dlq-table tbody tr", has_text="handler failed 5 times (test)")
    expect(letter).to_have_count(1)
    tab.shot("console-dead-letters")
    letter.get_by_role("button", name="Replay").click()
    expect(letter).to_have_count(0)
    # Replayed: back on its subject (the tail sees it), and gone from the DLQ.
    replayed = page.locator("#events-table tbody tr[data-subject='user.created']", has_text=rid)
    expect(replayed).to_have_count(1, timeout=WAIT_MS)
    _, token = rest(base_url, "POST", "/api/auth/login",
                    {"email": ADMIN, "password": ADMIN_PASSWORD})
    _, letters = rest(base_url, "GET", "/api/admin/dlq", token=token["accessToken"])
    assert all(d["correlationId"] != rid for d in letters["deadLetters"])


def test_a_non_admin_cannot_open_the_console(new_tab: Any, base_url: str) -> None:
    email, password, token = shopper(base_url)
    tab = new_tab()
    # The refusals below are answers this test asks for.
    tab.expected = ["status of 403 (Forbidden)", "status of 401 (Unauthorized)"]
    page = tab.page
    tab.goto("/console")
    expect(page.locator("#console-refused")).to_contain_text("log in with an admin account")
    login_in_browser(tab, email, password)
    expect(page.get_by_role("link", name="Console")).to_be_hidden()
    response = page.goto(base_url + "/console")
    assert response is not None and response.status == 403
    expect(page.locator("#console-refused")).to_contain_text("Admins only")
    expect(page.locator("#instances-table")).to_have_count(0)
    tab.shot("console-refused")
    for method, path in (("GET", "/api/admin/instances"), ("GET", "/api/admin/dlq"),
                         ("POST", "/api/admin/dlq/1/replay"),
                         ("GET", "/api/admin/events")):
        status, body = rest(base_url, method, path, {} if method == "POST" else None,
                            token=token)
        assert status == 403, (path, body)
        assert body["error"]["status"] == "PERMISSION_DENIED"
        status, _ = rest(base_url, method, path, {} if method == "POST" else None)
        assert status == 401, path
