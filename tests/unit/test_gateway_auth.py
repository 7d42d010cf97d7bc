"""JWT verification: only the user service's public keys, EdDSA pinned, claims required."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import time

import jwt
import pytest

from gateway.auth import TokenVerifier, bearer_token
from gateway.errors import HttpError
from gateway.testing import TokenMinter


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


class Jwks:
    def __init__(self, *minters: TokenMinter) -> None:
        self.minters = list(minters)
        self.fetches = 0

    async def __call__(self) -> list[dict[str, str]]:
        self.fetches += 1
        return [m.jwk for m in self.minters]


@pytest.fixture
def minter() -> TokenMinter:
    return TokenMinter()


@pytest.fixture
def jwks(minter: TokenMinter) -> Jwks:
    return Jwks(minter)


@pytest.fixture
def verifier(jwks: Jwks) -> TokenVerifier:
    return TokenVerifier(jwks, issuer="shop-user", audience="shop-api", refetch_interval_s=60)


async def _rejects(verifier: TokenVerifier, token: str) -> HttpError:
    with pytest.raises(HttpError) as info:
        await verifier.verify(token)
    assert info.value.http_status == 401
    assert info.value.status == "UNAUTHENTICATED"
    body = json.loads(info.value.body())
    assert body["error"]["code"] == 401
    return info.value


async def test_valid_token_gives_its_subject(verifier: TokenVerifier, minter: TokenMinter) -> None:
    assert await verifier.verify(minter.token("u-42")) == "u-42"


async def test_alg_none_is_refused(verifier: TokenVerifier, minter: TokenMinter) -> None:
    header = _b64(json.dumps({"alg": "none", "typ": "JWT", "kid": minter.kid}).encode())
    payload = _b64(json.dumps(minter.claims("u-1")).encode())
    await _rejects(verifier, f"{header}.{payload}.")


async def test_hs256_signed_with_the_public_key_is_refused(
    verifier: TokenVerifier, minter: TokenMinter
) -> None:
    # The classic key-confusion attack: HMAC keyed with the (public) verification key.
    header = _b64(json.dumps({"alg": "HS256", "typ": "JWT", "kid": minter.kid}).encode())
    payload = _b64(json.dumps(minter.claims("u-1")).encode())

    for secret in (minter.public_bytes, minter.jwk["x"].encode()):
        sig = hmac.new(secret, f"{header}.{payload}".encode(), hashlib.sha256).digest()
        await _rejects(verifier, f"{header}.{payload}.{_b64(sig)}")


async def test_expired_is_refused(verifier: TokenVerifier, minter: TokenMinter) -> None:
    err = await _rejects(verifier, minter.token("u-1", ttl_s=-10))
    assert "expired" in err.message


async def test_nbf_in_the_future_is_refused(verifier: TokenVerifier, minter: TokenMinter) -> None:
    await _rejects(verifier, minter.token("u-1", nbf=int(time.time()) + 600))


async def test_wrong_audience_is_refused(verifier: TokenVerifier, minter: TokenMinter) -> None:
    await _rejects(verifier, minter.token("u-1", aud="someone-else"))


async def test_wrong_issuer_is_refused(verifier: TokenVerifier, minter: TokenMinter) -> None:
    await _rejects(verifier, minter.token("u-1", iss="evil"))


@pytest.mark.parametrize("claim", ["exp", "iat", "iss", "aud", "sub"])
async def test_missing_required_claim_is_refused(
    verifier: TokenVerifier, minter: TokenMinter, claim: str
) -> None:
    claims = minter.claims("u-1")
    del claims[claim]
    token = jwt.encode(claims, minter.key, algorithm="EdDSA", headers={"kid": minter.kid})
    await _rejects(verifier, token)


async def test_tampered_payload_is_refused(verifier: TokenVerifier, minter: TokenMinter) -> None:
    header, _, sig = minter.token("u-1").split(".")
    forged = _b64(json.dumps(minter.claims("admin")).encode())
    await _rejects(verifier, f"{header}.{forged}.{sig}")


async def test_unknown_kid_is_refused_and_refetch_is_rate_limited(
    verifier: TokenVerifier, jwks: Jwks
) -> None:
    stranger = TokenMinter()
    await verifier.refresh(force=True)
    before = jwks.fetches
    await _rejects(verifier, stranger.token("u-1"))
    await _rejects(verifier, stranger.token("u-2"))
    # Within the refetch interval, forged kids do not turn into JWKS calls.
    assert jwks.fetches == before


async def test_rotated_key_is_picked_up_on_unknown_kid(minter: TokenMinter) -> None:
    jwks = Jwks(minter)
    verifier = TokenVerifier(jwks, issuer="shop-user", audience="shop-api", refetch_interval_s=0)
    await verifier.refresh(force=True)
    rotated = TokenMinter()
    jwks.minters.append(rotated)
    assert await verifier.verify(rotated.token("u-9")) == "u-9"


async def test_token_signed_by_another_key_with_a_known_kid_is_refused(
    verifier: TokenVerifier, minter: TokenMinter
) -> None:
    impostor = TokenMinter(kid=minter.kid)
    await _rejects(verifier, impostor.token("u-1"))


@pytest.mark.parametrize("garbage", ["", "x", "a.b.c", "....", "eyJhbGciOiJFZERTQSJ9.e30."])
async def test_garbage_is_refused(verifier: TokenVerifier, garbage: str) -> None:
    await _rejects(verifier, garbage)


async def test_cache_never_outlives_exp(minter: TokenMinter) -> None:
    verifier = TokenVerifier(
        Jwks(minter), issuer="shop-user", audience="shop-api", cache_ttl_s=3600
    )
    token = minter.token("u-1", ttl_s=1)
    assert await verifier.verify(token) == "u-1"
    await asyncio.sleep(2.1)  # exp has second resolution
    await _rejects(verifier, token)


async def test_no_keys_at_all_is_503_not_401() -> None:
    async def broken() -> list[dict[str, str]]:
        raise ConnectionError("user service down")

    verifier = TokenVerifier(broken, issuer="shop-user", audience="shop-api")
    with pytest.raises(HttpError) as info:
        await verifier.verify(TokenMinter().token("u-1"))
    assert info.value.http_status == 503


@pytest.mark.parametrize("header", ["", "Basic abc", "Bearer", "Bearer   "])
def test_bearer_header_must_be_present_and_well_formed(header: str) -> None:
    with pytest.raises(HttpError) as info:
        bearer_token(header)
    assert info.value.http_status == 401


def test_bearer_header_gives_the_token() -> None:
    assert bearer_token("Bearer abc.def.ghi") == "abc.def.ghi"


async def test_roles_come_from_the_signed_token(verifier: TokenVerifier,
                                                minter: TokenMinter) -> None:
    identity = await verifier.verify_identity(minter.token("u-1", roles=["admin"]))
    assert identity.user_id == "u-1" and identity.roles == ("admin",)
    assert (await verifier.verify_identity(minter.token("u-2"))).roles == ()
    # A malformed claim grants nothing.
    assert (await verifier.verify_identity(minter.token("u-3", roles="admin"))).roles == ()
    assert (await verifier.verify_identity(minter.token("u-4", roles=["admin", 7]))).roles == (
        "admin",)
