"""Access tokens: the Ed25519 signing keys under the data dir, JWT minting, the JWKS.

Keys live in `<data_dir>/keys/user-ed25519-<generation>.pem` (PKCS#8, mode 0600). Every
instance of the user service loads all of them: the newest generation signs, all are
published in the JWKS, so a rotation (a new, higher generation) never invalidates tokens
signed by an older key. A new key is written to a private temp file and hard-linked to
its final name: the link fails if the name exists, so when instances race on first start
exactly one key wins and the losers load it.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import json
import logging
import os
import re
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from services.common.config import UserConfig

__all__ = ["ALGORITHM", "KeyRing", "SigningKey", "TokenSettings", "claims_for", "kid_of"]

log = logging.getLogger("shop.user.tokens")

ALGORITHM = "EdDSA"
TOKEN_TYPE = "Bearer"
_KEY_FILE = re.compile(r"^user-ed25519-(\d{4,})\.pem$")


@dataclass(frozen=True, slots=True)
class TokenSettings:
    ttl_s: int = 3600
    issuer: str = "shop-user"
    audience: str = "shop-api"

    @classmethod
    def of(cls, config: UserConfig) -> TokenSettings:
        """The user service's SHOP_TOKEN_TTL_S, SHOP_JWT_ISSUER and SHOP_JWT_AUDIENCE."""
        ttl = config.token_ttl_s
        if ttl <= 0:
            raise ValueError(f"SHOP_TOKEN_TTL_S must be positive, got {ttl}")
        return cls(ttl_s=ttl, issuer=config.jwt_issuer, audience=config.jwt_audience)


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _raw_public(key: Ed25519PrivateKey) -> bytes:
    return key.public_key().public_bytes(serialization.Encoding.Raw,
                                         serialization.PublicFormat.Raw)


def kid_of(public_raw: bytes) -> str:
    """RFC 7638 thumbprint of the public JWK, shortened: stable for a key across
    instances and restarts, and different for every key."""
    canonical = json.dumps({"crv": "Ed25519", "kty": "OKP", "x": _b64url(public_raw)},
                           separators=(",", ":"), sort_keys=True)
    return _b64url(hashlib.sha256(canonical.encode("ascii")).digest())[:16]


@dataclass(frozen=True, slots=True)
class SigningKey:
    generation: int
    kid: str
    private_key: Ed25519PrivateKey

    @classmethod
    def from_private(cls, generation: int, key: Ed25519PrivateKey) -> SigningKey:
        return cls(generation, kid_of(_raw_public(key)), key)

    def jwk(self) -> dict[str, str]:
        return {"kty": "OKP", "crv": "Ed25519", "x": _b64url(_raw_public(self.private_key)),
                "kid": self.kid, "alg": ALGORITHM, "use": "sig"}


def claims_for(user_id: str, email: str, *, now: int, settings: TokenSettings,
               jti: str, roles: tuple[str, ...] = ()) -> dict[str, Any]:
    return {
        "sub": user_id,
        "email": email,
        # Read by the gateway for /console and /api/admin/*; always present, often [].
        "roles": list(roles),
        "iss": settings.issuer,
        "aud": settings.audience,
        "iat": now,
        "nbf": now,
        "exp": now + settings.ttl_s,
        "jti": jti,
    }


class KeyRing:
    """The loaded keys of one keys directory; `current` signs."""

    def __init__(self, keys: list[SigningKey], settings: TokenSettings,
                 keys_dir: Path | None = None) -> None:
        if not keys:
            raise ValueError("a KeyRing needs at least one key")
        self.keys = sorted(keys, key=lambda k: k.generation)
        self.settings = settings
        self.keys_dir = keys_dir

    @property
    def current(self) -> SigningKey:
        return self.keys[-1]

    @classmethod
    def load_or_create(cls, keys_dir: Path, settings: TokenSettings) -> KeyRing:
        """Load every key in `keys_dir`, making the first one if there is none."""
        keys = load_keys(keys_dir)
        if not keys:
            create_key(keys_dir, generation=1)
            keys = load_keys(keys_dir)
        return cls(keys, settings, keys_dir)

    def reload(self) -> bool:
        """Pick up keys added since the start (a rotation done by an operator or another
        instance): they are published at once and the newest signs. True if changed."""
        if self.keys_dir is None:
            return False
        keys = sorted(load_keys(self.keys_dir), key=lambda k: k.generation)
        if not keys or [k.kid for k in keys] == [k.kid for k in self.keys]:
            return False
        self.keys = keys
        log.info("signing keys reloaded", extra={"kids": [k.kid for k in keys]})
        return True

    def mint(self, user_id: str, email: str, *, now: float | None = None,
             roles: tuple[str, ...] = ()) -> str:
        issued = int(time.time() if now is None else now)
        claims = claims_for(user_id, email, now=issued, settings=self.settings,
                            jti=uuid.uuid4().hex, roles=roles)
        key = self.current
        return jwt.encode(claims, key.private_key, algorithm=ALGORITHM,
                          headers={"kid": key.kid})

    def jwks(self) -> list[dict[str, str]]:
        return [k.jwk() for k in reversed(self.keys)]  # newest first


def load_keys(keys_dir: Path) -> list[SigningKey]:
    """Every key file in the directory. A file that is not an Ed25519 key fails the start:
    serving with a key missing would reject valid tokens in silence."""
    keys: list[SigningKey] = []
    if not keys_dir.is_dir():
        return keys
    for path in sorted(keys_dir.iterdir()):
        match = _KEY_FILE.match(path.name)
        if match is None:
            continue
        key = serialization.load_pem_private_key(path.read_bytes(), password=None)
        if not isinstance(key, Ed25519PrivateKey):
            raise ValueError(f"{path} is not an Ed25519 private key")
        keys.append(SigningKey.from_private(int(match.group(1)), key))
    return keys


def key_path(keys_dir: Path, generation: int) -> Path:
    return keys_dir / f"user-ed25519-{generation:04d}.pem"


def create_key(keys_dir: Path, *, generation: int) -> bool:
    """Write a new key as `generation`; False when another instance made it first."""
    keys_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    pem = Ed25519PrivateKey.generate().private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption())
    tmp = keys_dir / f".tmp-{os.getpid()}-{uuid.uuid4().hex}.pem"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(pem)
            f.flush()
            os.fsync(f.fileno())
        try:
            # Atomic and exclusive: readers never see a half-written key file.
            os.link(tmp, key_path(keys_dir, generation))
        except FileExistsError:
            return False
        log.info("made a new signing key", extra={"generation": generation})
        return True
    finally:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
