"""Bearer token verification with the user service's public keys only.

The algorithm is pinned (EdDSA); exp, iat, iss, aud and sub are required. Keys come from
a JWKS source (the user service's GetJwks), are cached, and are fetched again when a
token names an unknown kid — at most once per `refetch_interval_s`, so a flood of forged
kids cannot turn into a flood of calls. Verified tokens are cached for a short time,
never past their own exp.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import jwt

from gateway.errors import HttpError

log = logging.getLogger("shop.gateway.auth")

ALGORITHM = "EdDSA"
REQUIRED_CLAIMS = ["exp", "iat", "iss", "aud", "sub"]

JwksFetcher = Callable[[], Awaitable[Sequence[Mapping[str, str]]]]


def unauthenticated(message: str) -> HttpError:
    return HttpError(
        401,
        "UNAUTHENTICATED",
        message,
        headers=[(b"www-authenticate", b'Bearer error="invalid_token"')],
    )


def bearer_token(header: str) -> str:
    """The token of an `Authorization: Bearer <token>` header; 401 when missing or other."""
    if not header:
        raise HttpError(
            401,
            "UNAUTHENTICATED",
            "missing Authorization: Bearer token",
            headers=[(b"www-authenticate", b"Bearer")],
        )
    scheme, _, token = header.partition(" ")
    token = token.strip()
    if scheme.lower() != "bearer" or not token:
        raise unauthenticated("Authorization must be 'Bearer <token>'")
    return token


@dataclass(frozen=True, slots=True)
class Identity:
    """Who a verified token speaks for, and the roles the user service signed into it."""

    user_id: str
    roles: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class _Verified:
    identity: Identity
    until: float  # time.time() after which the cache entry is stale


def _roles(claims: Mapping[str, Any]) -> tuple[str, ...]:
    raw = claims.get("roles")
    if not isinstance(raw, list):
        return ()
    return tuple(r for r in raw if isinstance(r, str))


class TokenVerifier:
    def __init__(
        self,
        fetch_jwks: JwksFetcher,
        *,
        issuer: str,
        audience: str,
        refetch_interval_s: float = 5.0,
        cache_size: int = 10_000,
        cache_ttl_s: float = 30.0,
    ) -> None:
        self._fetch_jwks = fetch_jwks
        self.issuer = issuer
        self.audience = audience
        self._refetch_interval_s = refetch_interval_s
        self._cache_size = cache_size
        self._cache_ttl_s = cache_ttl_s
        self._keys: dict[str, Any] = {}
        self._last_fetch = -1e18
        self._fetch_lock = asyncio.Lock()
        # Insertion-ordered, so the oldest entry is evicted first when full.
        self._cache: dict[str, _Verified] = {}

    @property
    def kids(self) -> list[str]:
        return sorted(self._keys)

    async def refresh(self, *, force: bool = False) -> bool:
        """Fetch the JWKS unless one was fetched less than refetch_interval_s ago.

        Returns whether a fetch happened and succeeded. Errors are logged, not raised:
        the keys already known stay in use.
        """
        async with self._fetch_lock:
            now = time.monotonic()
            if not force and now - self._last_fetch < self._refetch_interval_s:
                return False
            self._last_fetch = now
            try:
                jwks = await self._fetch_jwks()
            except Exception as err:
                log.warning("could not fetch the JWKS", extra={"error": str(err)})
                return False
            keys: dict[str, Any] = {}
            for jwk in jwks:
                kid = jwk.get("kid", "")
                if not kid or jwk.get("alg", ALGORITHM) != ALGORITHM:
                    continue
                try:
                    keys[kid] = jwt.PyJWK(dict(jwk), algorithm=ALGORITHM).key
                except jwt.PyJWTError as err:
                    log.warning("skipping an unusable JWK", extra={"kid": kid, "error": str(err)})
            self._keys = keys
            return True

    async def _key_for(self, kid: str) -> Any:
        key = self._keys.get(kid)
        if key is None:
            # With no keys at all (the user service was still starting), fetch at
            # once rather than waiting out the refetch interval.
            await self.refresh(force=not self._keys)
            key = self._keys.get(kid)
        if key is None:
            if not self._keys:
                raise HttpError(
                    503, "UNAVAILABLE", "cannot verify tokens: no signing keys available"
                )
            raise unauthenticated("token signed with an unknown key")
        return key

    def cached(self, token: str) -> str:
        """The user id of a token verified recently (and not expired since), else ""."""
        hit = self._cache.get(token)
        if hit is not None and time.time() < hit.until:
            return hit.identity.user_id
        return ""

    async def verify(self, token: str) -> str:
        """The user id (sub) of a valid token; HttpError 401 otherwise."""
        return (await self.verify_identity(token)).user_id

    async def verify_identity(self, token: str) -> Identity:
        """User id and roles of a valid token; HttpError 401 otherwise."""
        hit = self._cache.get(token)
        if hit is not None:
            if time.time() < hit.until:
                return hit.identity
            self._cache.pop(token, None)
        try:
            header = jwt.get_unverified_header(token)
        except jwt.PyJWTError:
            raise unauthenticated("malformed token") from None
        if header.get("alg") != ALGORITHM:
            raise unauthenticated("token algorithm not accepted")
        kid = header.get("kid")
        if not isinstance(kid, str) or not kid:
            raise unauthenticated("token has no key id")
        key = await self._key_for(kid)
        try:
            claims = jwt.decode(
                token,
                key,
                algorithms=[ALGORITHM],
                audience=self.audience,
                issuer=self.issuer,
                options={"require": REQUIRED_CLAIMS},
            )
        except jwt.ExpiredSignatureError:
            raise unauthenticated("token expired") from None
        except jwt.PyJWTError as err:
            raise unauthenticated(f"invalid token: {err}") from None
        sub = claims.get("sub")
        if not isinstance(sub, str) or not sub:
            raise unauthenticated("token has no subject")
        exp = float(claims["exp"])
        identity = Identity(sub, _roles(claims))
        self._remember(token, _Verified(identity, min(exp, time.time() + self._cache_ttl_s)))
        return identity

    def _remember(self, token: str, verified: _Verified) -> None:
        cache = self._cache
        if len(cache) >= self._cache_size:
            cache.pop(next(iter(cache)))
        cache[token] = verified
