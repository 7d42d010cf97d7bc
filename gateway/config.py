"""Gateway settings, from the environment (services/common/envvars.py declares each
variable and its default): the gateway's own, and `process`, the settings every process
has (services/common/settings.py: TLS, NATS, breakers, discovery, ...), read once at
start by `load_gateway_settings`."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from gateway.ratelimit import (
    DEFAULT_ANON_LIMIT,
    DEFAULT_LIMIT,
    DEFAULT_LOGIN_EMAIL_LIMIT,
    DEFAULT_LOGIN_LIMIT,
)
from services.common import envvars
from services.common.settings import Settings, load_settings
from services.common.spiffe import GATEWAY


@dataclass(frozen=True, slots=True)
class GatewaySettings:
    host: str = "127.0.0.1"
    port: int = 8080
    # Per user with a valid token.
    rate_limit: str = DEFAULT_LIMIT
    # Per client address, for every request not (yet) known to come from a user; counted
    # before the token is checked.
    anon_rate_limit: str = DEFAULT_ANON_LIMIT
    # POST /api/auth/login, per client address and per email (each attempt costs scrypt).
    login_rate_limit: str = DEFAULT_LOGIN_LIMIT
    login_email_rate_limit: str = DEFAULT_LOGIN_EMAIL_LIMIT
    # Peers whose Forwarded / X-Forwarded-For is believed (addresses or CIDRs, comma-
    # separated); none by default, so the peer address is the client.
    trusted_proxies: str = ""
    jwt_issuer: str = "shop-user"
    jwt_audience: str = "shop-api"
    max_body_bytes: int = 64 * 1024
    # What is left of a body the gateway answered early (a 413, a 401, ...) is read and
    # dropped up to this much and this long, so a client that writes it all before
    # reading gets the answer instead of a connection reset.
    drain_max_bytes: int = 16 * 1024 * 1024
    drain_timeout_s: float = 10.0
    # Budget of one proxied call; CreateOrder runs the whole saga inside it.
    call_timeout_s: float = 10.0
    # Each dashboard part gets this much before its fallback is used: long enough for a
    # healthy system on a loaded box, short enough that a hung part still answers < 1 s.
    dashboard_part_timeout_s: float = 0.6
    # The parts' own breakers (never the services' shared ones): trip after this many
    # consecutive failures, try again after this long.
    dashboard_breaker_fail_max: int = 5
    dashboard_breaker_reset_s: float = 5.0
    jwks_refetch_s: float = 5.0
    token_cache_ttl_s: float = 30.0
    ready_file: Path | None = None
    # What every process reads (TLS, NATS, breakers, discovery, logging, tracing, ...).
    process: Settings = field(default_factory=lambda: Settings(service=GATEWAY))


def load_gateway_settings() -> GatewaySettings:
    """The gateway's settings from the environment; a malformed value raises ValueError
    naming its variable."""
    process = load_settings(GATEWAY)
    return GatewaySettings(
        host=process.host,
        port=envvars.GATEWAY_PORT.get(),
        rate_limit=envvars.GATEWAY_RATE_LIMIT.get(),
        anon_rate_limit=envvars.GATEWAY_ANON_RATE_LIMIT.get(),
        login_rate_limit=envvars.GATEWAY_LOGIN_RATE_LIMIT.get(),
        login_email_rate_limit=envvars.GATEWAY_LOGIN_EMAIL_RATE_LIMIT.get(),
        trusted_proxies=envvars.GATEWAY_TRUSTED_PROXIES.get(),
        jwt_issuer=envvars.SHOP_JWT_ISSUER.get(),
        jwt_audience=envvars.SHOP_JWT_AUDIENCE.get(),
        max_body_bytes=envvars.GATEWAY_MAX_BODY_BYTES.get(),
        drain_max_bytes=envvars.GATEWAY_DRAIN_MAX_BYTES.get(),
        drain_timeout_s=envvars.GATEWAY_DRAIN_TIMEOUT_S.get(),
        call_timeout_s=envvars.GATEWAY_CALL_TIMEOUT_S.get(),
        dashboard_part_timeout_s=envvars.GATEWAY_DASHBOARD_TIMEOUT_S.get(),
        dashboard_breaker_fail_max=envvars.GATEWAY_DASHBOARD_BREAKER_FAIL_MAX.get(),
        dashboard_breaker_reset_s=envvars.GATEWAY_DASHBOARD_BREAKER_RESET_S.get(),
        jwks_refetch_s=envvars.GATEWAY_JWKS_REFETCH_S.get(),
        token_cache_ttl_s=envvars.GATEWAY_TOKEN_CACHE_TTL_S.get(),
        ready_file=process.ready_file,
        process=process,
    )
