"""Client addresses from trusted proxies only, and the order and keys of the limits."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from shop.user.v1 import user_pb2

from gateway.app import create_app
from gateway.clientaddr import ClientAddress, parse_networks
from gateway.config import GatewaySettings, load_gateway_settings
from gateway.testing import FakeCaller, TokenMinter, running
from services.common.settings import SERVICES


def test_parse_networks_takes_addresses_and_cidrs_and_names_a_bad_entry() -> None:
    nets = parse_networks(" 10.0.0.0/8, 127.0.0.1 ,::1,")
    assert [str(n) for n in nets] == ["10.0.0.0/8", "127.0.0.1/32", "::1/128"]
    assert parse_networks("") == ()
    with pytest.raises(ValueError, match=r"proxy\.example"):
        parse_networks("10.0.0.1, proxy.example")


@pytest.mark.parametrize(
    ("peer", "forwarded", "xff", "client"),
    [
        # Not from a trusted proxy: the headers are the client's own words.
        ("203.0.113.5", "", "1.1.1.1", "203.0.113.5"),
        ("203.0.113.5", "for=1.1.1.1", "", "203.0.113.5"),
        # From the proxy: the rightmost address that is not a proxy.
        ("10.0.0.2", "", "198.51.100.1", "198.51.100.1"),
        ("10.0.0.2", "", "6.6.6.6, 198.51.100.1", "198.51.100.1"),
        ("10.0.0.2", "", "6.6.6.6, 198.51.100.1, 10.0.0.3", "198.51.100.1"),
        ("10.0.0.2", 'for="[2001:db8::1]:4711"', "", "2001:db8::1"),
        ("10.0.0.2", "for=6.6.6.6, for=198.51.100.2:80;proto=http", "", "198.51.100.2"),
        # Forwarded wins over X-Forwarded-For when both are sent.
        ("10.0.0.2", "for=198.51.100.3", "198.51.100.4", "198.51.100.3"),
        # Garbage or "unknown" next to the proxies: the last proxy is the client.
        ("10.0.0.2", "", "not-an-ip", "10.0.0.2"),
        ("10.0.0.2", "for=unknown", "", "10.0.0.2"),
        ("10.0.0.2", "", "10.0.0.9", "10.0.0.9"),
        ("10.0.0.2", "", "", "10.0.0.2"),
    ],
)
def test_the_client_address(peer: str, forwarded: str, xff: str, client: str) -> None:
    resolver = ClientAddress(parse_networks("10.0.0.0/24"))
    assert resolver.resolve(peer, forwarded, xff) == client


def test_no_trusted_proxy_by_default() -> None:
    assert load_gateway_settings().trusted_proxies == ""
    assert ClientAddress().resolve("127.0.0.1", "for=1.2.3.4", "1.2.3.4") == "127.0.0.1"


async def _client(minter: TokenMinter, fakes: dict[str, FakeCaller],
                  **overrides: object) -> AsyncIterator[httpx.AsyncClient]:
    app = create_app(GatewaySettings(**overrides),  # type: ignore[arg-type]
                     upstreams=dict(fakes), health=dict(fakes))
    async with running(app):
        transport = httpx.ASGITransport(app=app, client=("10.0.0.1", 1234))
        async with httpx.AsyncClient(transport=transport, base_url="http://gw") as client:
            yield client


def _fakes(minter: TokenMinter) -> dict[str, FakeCaller]:
    fakes = {name: FakeCaller(name) for name in SERVICES}
    fakes["user"].handlers["GetJwks"] = lambda _: user_pb2.GetJwksResponse(
        keys=[user_pb2.Jwk(**minter.jwk)]
    )
    fakes["user"].handlers["Login"] = lambda r: user_pb2.LoginResponse(
        access_token="t", token_type="Bearer", expires_in=60
    )
    fakes["user"].handlers["GetUser"] = lambda r: user_pb2.GetUserResponse(
        user=user_pb2.User(id="u-1", email="a@example.com", name="A")
    )
    return fakes


async def test_login_is_limited_per_email_whatever_its_case() -> None:
    minter = TokenMinter()
    fakes = _fakes(minter)
    async for client in _client(minter, fakes, login_email_rate_limit="2/minute",
                                trusted_proxies="10.0.0.1"):
        sent = []
        for i, email in enumerate(["ann@example.com", " ANN@example.com", "Ann@Example.com"]):
            # Each from another client address: the email's own limit still holds.
            sent.append(await client.post(
                "/api/auth/login", json={"email": email, "password": "pw-123456"},
                headers={"X-Forwarded-For": f"198.51.100.{i}"}))
        other = await client.post("/api/auth/login",
                                  json={"email": "bob@example.com", "password": "pw-123456"})
    assert [r.status_code for r in sent] == [200, 200, 429]
    assert "per email" in sent[2].json()["error"]["message"]
    assert int(sent[2].headers["retry-after"]) >= 1
    assert other.status_code == 200
    # The refused attempt never reached the user service (no scrypt for it).
    assert [c.method for c in fakes["user"].calls].count("Login") == 3


async def test_a_known_user_is_limited_as_that_user_not_by_address() -> None:
    minter = TokenMinter()
    fakes = _fakes(minter)
    async for client in _client(minter, fakes, anon_rate_limit="2/minute"):
        auth = {"Authorization": f"Bearer {minter.token('u-1')}"}
        known = [await client.get("/api/users/me", headers=auth) for _ in range(5)]
        anonymous = [await client.get("/api/users/me") for _ in range(2)]
    # Only the first request (its token not yet verified) counted against the address.
    assert [r.status_code for r in known] == [200] * 5
    assert [r.status_code for r in anonymous] == [401, 429]


async def test_a_bad_token_on_a_public_route_is_ignored_but_counted() -> None:
    minter = TokenMinter()
    fakes = _fakes(minter)
    def create_user(r: Any) -> user_pb2.CreateUserResponse:  # a CreateUserRequest
        return user_pb2.CreateUserResponse(user=user_pb2.User(id="u-2", email=r.email,
                                                              name=r.name))

    fakes["user"].handlers["CreateUser"] = create_user
    async for client in _client(minter, fakes, anon_rate_limit="2/minute"):
        body = {"email": "c@example.com", "name": "C", "password": "pw-123456"}
        bad = {"Authorization": "Bearer not-a-token"}
        answers = [await client.post("/api/users", json=body, headers=bad) for _ in range(3)]
        # A good token on a public route: counted as its user (not refused with the
        # address's exhausted limit), but the call still goes downstream without a caller.
        good = {"Authorization": f"Bearer {minter.token('u-9')}"}
        known = await client.post("/api/users", json=body, headers=good)
    assert [r.status_code for r in answers] == [201, 201, 429]
    assert known.status_code == 429  # its first use is not yet known good: the address
    async for client in _client(minter, fakes, anon_rate_limit="1/minute"):
        token = {"Authorization": f"Bearer {minter.token('u-9')}"}
        assert (await client.get("/api/users/me", headers=token)).status_code == 200
        again = await client.post("/api/users", json=body, headers=token)
    assert again.status_code == 201
    assert fakes["user"].calls[-1].method == "CreateUser"
    assert fakes["user"].calls[-1].user_id == ""
