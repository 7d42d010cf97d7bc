"""The inventory's ledger on REST: the stock at a past time and a product's history, through
the real gateway in front of the real inventory and user services."""

from __future__ import annotations

import datetime as dt
import time
import uuid
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from ops.natsd import NatsServer
from tests.fixtures_services import ServiceFactory

pytestmark = pytest.mark.timeout(120)


@pytest.fixture(scope="module")
def api(nats_server: NatsServer,
        tmp_path_factory: pytest.TempPathFactory) -> Iterator[httpx.Client]:
    factory = ServiceFactory(tmp_path_factory.mktemp("inventory-rest"), nats_server.url)
    try:
        factory.start_many("user", "inventory")
        gateway = factory.start("gateway")
        with httpx.Client(base_url=gateway.base_url, timeout=15.0) as client:
            yield client
    finally:
        factory.stop_all()


def _signed_in(api: httpx.Client) -> dict[str, str]:
    email = f"stock-{uuid.uuid4().hex[:8]}@example.com"
    r = api.post("/api/users", json={"email": email, "name": "Sam", "password": "s3cret-pass"})
    assert r.status_code == 201, r.text
    login = api.post("/api/auth/login", json={"email": email, "password": "s3cret-pass"})
    assert login.status_code == 200, login.text
    return {"Authorization": f"Bearer {login.json()['accessToken']}"}


def _iso(at: float) -> str:
    return dt.datetime.fromtimestamp(at, dt.UTC).isoformat().replace("+00:00", "Z")


def _error(r: httpx.Response) -> dict[str, Any]:
    body: dict[str, Any] = r.json()["error"]
    return body


def test_stock_as_of_and_history_paging(api: httpx.Client) -> None:
    # The demo catalogue's stock is the stream's first event: a product with history.
    now = api.get("/api/inventory/headphones")
    assert now.status_code == 200, now.text
    stock = now.json()
    then = api.get("/api/inventory/headphones", params={"asOf": _iso(time.time())})
    assert then.status_code == 200, then.text
    assert then.json() == stock
    early = api.get("/api/inventory/headphones", params={"asOf": "2001-01-01T00:00:00Z"})
    assert early.status_code == 404 and "no stock yet" in _error(early)["message"]

    headers = _signed_in(api)
    page = api.get("/api/inventory/headphones/history", params={"pageSize": 1},
                   headers=headers)
    assert page.status_code == 200, page.text
    body = page.json()
    assert body["nextPageToken"] == ""  # one event only: seeded stock
    (first,) = body["events"]
    assert first["type"] == "STOCK_EVENT_TYPE_STOCK_SET"
    assert first["version"] == "1"  # int64 as a string, as proto3 JSON has it
    assert first["stock"]["available"] == stock["available"]
    assert first["createTime"].endswith("Z")


def test_history_needs_a_signed_in_caller(api: httpx.Client) -> None:
    r = api.get("/api/inventory/headphones/history")
    assert r.status_code == 401, r.text


@pytest.mark.parametrize(("path", "params", "needs_token", "message"), [
    ("/api/inventory/headphones", {"asOf": "yesterday"}, False, "RFC 3339"),
    ("/api/inventory/headphones/history", {"pageToken": "junk"}, True,
     "page_token is not valid"),
    ("/api/inventory/headphones/history", {"pageSize": "-1"}, True, "pageSize"),
    ("/api/inventory/headphones/history", {"pageSize": "lots"}, True, "pageSize"),
])
def test_bad_as_of_or_page_input_is_400_with_a_clear_message(
        api: httpx.Client, path: str, params: dict[str, str], needs_token: bool,
        message: str) -> None:
    headers = _signed_in(api) if needs_token else {}
    before = api.get("/api/inventory/headphones").json()
    r = api.get(path, params=params, headers=headers)
    assert r.status_code == 400, r.text
    assert message in _error(r)["message"]
    assert api.get("/api/inventory/headphones").json() == before
