"""Browser tests: Python Playwright driving Debian's Chromium against a live shop.

One live system per module (NATS, the eight services and the gateway, real processes on
free ports) and one Chromium per module; every test gets a fresh browser context. The
browser's console and page errors are collected per page and must stay empty.
Screenshots go to var/screenshots/ (git-ignored).
"""

from __future__ import annotations

import json
import os
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import pytest

from ops.process import System, http_ok, start_system
from tests.fixtures_services import TEST_ENV

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
SCREENSHOTS = Path(__file__).resolve().parents[2] / "var" / "screenshots"
ADMIN_PASSWORD = "admin-" + uuid.uuid4().hex[:12]
# Long enough to see a confirmed order before it leaves, short enough for a test.
DISPATCH_DELAY_S = "3"
# Playwright waits (ms): generous, the box is shared.
WAIT_MS = 20_000


class _HasUrl(Protocol):
    @property
    def url(self) -> str: ...


@pytest.fixture(scope="module")
def live(nats_server: _HasUrl, tmp_path_factory: pytest.TempPathFactory) -> Iterator[System]:
    """The whole shop with its gateway, for one module."""
    env = {**TEST_ENV, "SHOP_LOG_LEVEL": "INFO", "SHOP_ADMIN_PASSWORD": ADMIN_PASSWORD,
           "SHIPPING_DISPATCH_DELAY_S": DISPATCH_DELAY_S}
    sysm = start_system(tmp_path_factory.mktemp("browser"), nats_server.url, env=env,
                        with_gateway=True, ready_timeout=60.0)
    try:
        # Started together, the gateway may be up before a service it routes to: wait
        # until its /readyz reaches every one (polled slowly: a failed probe counts
        # against its breaker of that service).
        deadline = time.monotonic() + 60.0
        while not http_ok(f"{sysm.base_url}/readyz"):
            if time.monotonic() > deadline:
                pytest.fail("gateway /readyz not ready within 60 s")
            time.sleep(0.5)
        yield sysm
    finally:
        sysm.stop()


@pytest.fixture(scope="module")
def base_url(live: System) -> str:
    return live.base_url


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    if not os.access(CHROMIUM, os.X_OK):
        pytest.fail(f"{CHROMIUM} is missing: `make test` installs Debian's chromium "
                    "(apt-get install -y chromium) as root; install it, then run again")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        chromium = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS,
                                      headless=True)
        try:
            yield chromium
        finally:
            chromium.close()


@dataclass
class Tab:
    """A page in a fresh context, with what its console said."""

    page: Any
    base_url: str
    errors: list[str] = field(default_factory=list)
    # Parts of console messages this test expects (Chromium logs each 4xx of a fetch).
    expected: list[str] = field(default_factory=list)

    def goto(self, path: str) -> None:
        self.page.goto(self.base_url + path)

    def shot(self, name: str) -> Path:
        SCREENSHOTS.mkdir(parents=True, exist_ok=True)
        path = SCREENSHOTS / f"{name}.png"
        self.page.screenshot(path=str(path), full_page=True)
        return path


def _shipment_not_yet_made(error: str) -> bool:
    """A just-confirmed order's shipment is made when shipping consumes order.confirmed:
    until then the order page's poll of it is a 404, which the page shows as "preparing"."""
    return "status of 404" in error and error.endswith("/shipment]")


@pytest.fixture
def new_tab(browser: Any, base_url: str) -> Iterator[Any]:
    """`new_tab(width=...)` -> a Tab in a new context; its console must stay clean
    (unless the test says which errors it expects, in `tab.expected`)."""
    contexts: list[Any] = []
    tabs: list[Tab] = []

    def make(width: int = 1100, height: int = 800) -> Tab:
        ctx = browser.new_context(viewport={"width": width, "height": height})
        ctx.set_default_timeout(WAIT_MS)
        contexts.append(ctx)
        page = ctx.new_page()
        tab = Tab(page, base_url)
        page.on("console", lambda m: tab.errors.append(
                f"console {m.type}: {m.text} [{m.location.get('url', '')}]")
                if m.type in ("error", "warning") else None)
        page.on("pageerror", lambda e: tab.errors.append(f"page error: {e}"))
        tabs.append(tab)
        return tab

    try:
        yield make
    finally:
        for ctx in contexts:
            ctx.close()
    for tab in tabs:
        unexpected = [e for e in tab.errors if not any(x in e for x in tab.expected)
                      and not _shipment_not_yet_made(e)]
        assert not unexpected, f"browser console errors: {unexpected}"


# --- the REST side of a test: arranging and checking through the public API ----------------

def rest(base_url: str, method: str, path: str, body: Any = None,
         token: str = "") -> tuple[int, Any]:
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(base_url + path, data=data, method=method)
    req.add_header("content-type", "application/json")
    if token:
        req.add_header("authorization", f"Bearer {token}")
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    try:
        with opener.open(req, timeout=15) as resp:
            raw = resp.read()
            return resp.status, json.loads(raw) if raw else None
    except urllib.error.HTTPError as err:
        raw = err.read()
        return err.code, json.loads(raw) if raw else None


def shopper(base_url: str) -> tuple[str, str, str]:
    """A new registered user: (email, password, token)."""
    email = f"shopper-{uuid.uuid4().hex[:10]}@example.com"
    password = "correct-horse-1"
    status, _ = rest(base_url, "POST", "/api/users",
                     {"email": email, "name": "Test Shopper", "password": password})
    assert status == 201
    status, tok = rest(base_url, "POST", "/api/auth/login", {"email": email, "password": password})
    assert status == 200
    return email, password, tok["accessToken"]


def login_in_browser(tab: Tab, email: str, password: str) -> None:
    tab.goto("/#/login")
    tab.page.get_by_label("Email").fill(email)
    tab.page.get_by_label("Password").fill(password)
    tab.page.get_by_role("button", name="Log in").click()
    tab.page.get_by_role("button", name="Log out").wait_for()
