"""One order's request id in the log of every service it touched, the consumers included:
through gRPC (metadata), through events (correlation id) and through the events a handler
or a background dispatcher emits later (order.shipped)."""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from ops.process import ServiceProcess, System

WITHIN_S = 30.0


@pytest.fixture(scope="module")
def api(gateway: ServiceProcess) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=gateway.base_url, timeout=15.0) as client:
        yield client


def _lines(path: Path, request_id: str) -> list[dict[str, Any]]:
    """The JSON log lines of one process that carry `request_id`."""
    out: list[dict[str, Any]] = []
    for raw in path.read_text(errors="replace").splitlines():
        if request_id not in raw:
            continue
        try:
            entry = json.loads(raw)
        except ValueError:
            continue
        if entry.get("request_id") == request_id:
            out.append(entry)
    return out


def _handled(lines: list[dict[str, Any]], subject: str) -> bool:
    return any(e.get("msg") == "event handled" and e.get("subject") == subject
               for e in lines)


def test_request_id_reaches_every_service_of_an_order(api: httpx.Client,
                                                      system: System) -> None:
    email = f"trace-{uuid.uuid4().hex[:8]}@example.com"
    assert api.post("/api/users", json={"email": email, "name": "Tess",
                                        "password": "s3cret-pass"}).status_code == 201
    login = api.post("/api/auth/login", json={"email": email, "password": "s3cret-pass"})
    headers = {"Authorization": f"Bearer {login.json()['accessToken']}"}
    product = api.get("/api/products").json()["products"][0]
    assert api.post("/api/cart/items", json={"productId": product["id"], "quantity": 1},
                    headers=headers).status_code == 200

    rid = f"corr-{uuid.uuid4().hex}"
    body = {"items": [{"productId": product["id"], "quantity": 1}], "cardToken": "tok_visa"}
    r = api.post("/api/orders", json=body, headers={**headers, "X-Request-Id": rid})
    assert r.status_code in (201, 202), r.text
    assert r.headers["x-request-id"] == rid

    # Each service's log must show the id; the consumers on the lines of their handlers.
    expect: dict[str, Callable[[list[dict[str, Any]]], bool]] = {
        "order": lambda ls: bool(ls) and _handled(ls, "order.shipped"),
        "inventory": bool,
        "payment": bool,
        "shipping": lambda ls: _handled(ls, "order.confirmed"),
        "cart": lambda ls: _handled(ls, "order.confirmed"),
        # order.shipped comes from shipping's dispatcher, long after its handler ran.
        "notification": lambda ls: (_handled(ls, "order.confirmed")
                                    and _handled(ls, "order.shipped")),
    }
    deadline = time.monotonic() + WITHIN_S
    missing = list(expect)
    while missing and time.monotonic() < deadline:
        missing = [name for name in missing
                   if not expect[name](_lines(system[name].log_path, rid))]
        if missing:
            time.sleep(0.2)
    assert not missing, (f"request id {rid} not (or not on the handlers' lines) in the logs"
                         f" of {missing}")
