"""The storefront's and console's pages: CSP, cache headers, ETags, gzip, admins only."""

from __future__ import annotations

import gzip
from collections.abc import AsyncIterator

import httpx
import pytest
from starlette.applications import Starlette

from gateway.admin import AdminConsole, admin_routes
from gateway.auth import TokenVerifier
from gateway.testing import TokenMinter
from gateway.web import STATIC_DIR, web_routes


@pytest.fixture
def minter() -> TokenMinter:
    return TokenMinter()


def _client(app: Starlette) -> httpx.AsyncClient:
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://shop.test")


@pytest.fixture
async def client(minter: TokenMinter) -> AsyncIterator[httpx.AsyncClient]:
    async def jwks() -> list[dict[str, str]]:
        return [minter.jwk]

    verifier = TokenVerifier(jwks, issuer="shop-user", audience="shop-api")

    def no_order() -> None:
        raise AssertionError("not called in these tests")

    console = AdminConsole(verifier, no_order, "nats://127.0.0.1:1")  # type: ignore[arg-type]
    app = Starlette(routes=[*web_routes(verifier), *admin_routes(console)])
    async with _client(app) as c:
        yield c


async def test_the_storefront_has_a_strict_csp_and_revalidates(client: httpx.AsyncClient) -> None:
    r = await client.get("/")
    assert r.status_code == 200
    assert r.headers["content-type"].startswith("text/html")
    csp = r.headers["content-security-policy"]
    assert "script-src 'self'" in csp and "style-src 'self'" in csp
    assert "unsafe-inline" not in csp and "unsafe-eval" not in csp
    assert r.headers["cache-control"] == "no-cache"
    assert r.headers["x-content-type-options"] == "nosniff"
    again = await client.get("/", headers={"if-none-match": r.headers["etag"]})
    assert again.status_code == 304 and again.content == b""


async def test_assets_are_cached_and_gzipped(client: httpx.AsyncClient) -> None:
    raw = (STATIC_DIR / "js" / "app.js").read_bytes()
    r = await client.get("/static/js/app.js", headers={"accept-encoding": "gzip"})
    assert r.status_code == 200
    assert r.headers["content-type"].startswith("text/javascript")
    assert "max-age=" in r.headers["cache-control"]
    assert r.headers["content-encoding"] == "gzip"
    assert r.content == raw  # the client unpacked it
    assert int(r.headers["content-length"]) == len(gzip.compress(raw, 9, mtime=0))
    assert (await client.get("/static/nope.js")).status_code == 404
    assert (await client.get("/static/../web.py")).status_code == 404


async def test_no_page_or_inline_code_in_the_static_files() -> None:
    for path in STATIC_DIR.rglob("*.html"):
        text = path.read_text()
        assert "<script>" not in text and " style=" not in text and "onclick=" not in text, path
    # The pages are served by their routes only, which check who asks.
    async with _client(Starlette(routes=web_routes(None))) as c:  # type: ignore[arg-type]
        assert (await c.get("/static/console.html")).status_code == 404


async def test_the_console_page_is_for_admins_only(client: httpx.AsyncClient,
                                                  minter: TokenMinter) -> None:
    r = await client.get("/console")
    assert r.status_code == 401 and "log in with an admin account" in r.text
    assert "private" in r.headers["cache-control"]
    client.cookies.set("shop_token", minter.token("u1", roles=[]))
    r = await client.get("/console")
    assert r.status_code == 403 and "Admins only" in r.text
    client.cookies.set("shop_token", minter.token("u1", roles=["admin"], email="x"))
    r = await client.get("/console")
    assert r.status_code == 200 and 'id="instances-table"' in r.text
    # A forged role claim (signed by another key) is no admin.
    client.cookies.set("shop_token", TokenMinter(kid=minter.kid).token("u1", roles=["admin"]))
    assert (await client.get("/console")).status_code == 401


async def test_admin_routes_refuse_others(client: httpx.AsyncClient,
                                         minter: TokenMinter) -> None:
    paths = [("GET", "/api/admin/instances"), ("GET", "/api/admin/dlq"),
             ("POST", "/api/admin/dlq/3/replay"), ("GET", "/api/admin/events"),
             ("GET", "/api/admin/orders/o1/saga"), ("POST", "/api/admin/orders/o1/retry")]
    shopper = {"authorization": f"Bearer {minter.token('u1')}"}
    for method, path in paths:
        r = await client.request(method, path)
        assert r.status_code == 401, path
        assert r.json()["error"]["status"] == "UNAUTHENTICATED"
        r = await client.request(method, path, headers=shopper)
        assert r.status_code == 403, path
        assert r.json()["error"]["status"] == "PERMISSION_DENIED"


async def test_admin_input_is_checked_before_any_call(client: httpx.AsyncClient,
                                                     minter: TokenMinter) -> None:
    admin = {"authorization": f"Bearer {minter.token('a1', roles=['admin'])}"}
    r = await client.post("/api/admin/dlq/abc/replay", headers=admin)
    assert r.status_code == 400 and "positive number" in r.json()["error"]["message"]
    r = await client.get("/api/admin/events?after=-1", headers=admin)
    assert r.status_code == 400
    # NATS is not there: a clear 503, never a 500.
    r = await client.get("/api/admin/dlq", headers=admin)
    assert r.status_code == 503 and "NATS not reachable" in r.json()["error"]["message"]
