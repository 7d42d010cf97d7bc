"""The typed settings of each area of a process: small frozen values whose defaults are
those of services/common/envvars.py.

`settings.load_settings(service)` makes them from the environment once, at start; the
composition root hands each to the part that needs it (a `BreakerConfig` to the
process's `Breakers`, a `TlsConfig` to its `Transport`, ...). Nothing here reads the
environment: a test or a tool builds them with the values it wants.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

from services.common import envvars as v

T = TypeVar("T")


def env(var: v.Var[T]) -> T:
    """A field read from `var` at start (`settings.load_settings`), `var`'s default
    otherwise: each variable is named once, here."""
    return field(default=var.default, metadata={"var": var})


@dataclass(frozen=True, slots=True)
class BreakerConfig:
    """The breakers of calls to other services (services/common/breakers.py)."""

    fail_max: int = env(v.SHOP_BREAKER_FAIL_MAX)
    reset_s: float = env(v.SHOP_BREAKER_RESET_S)
    probe_s: float = env(v.SHOP_BREAKER_PROBE_S)


@dataclass(frozen=True, slots=True)
class TlsConfig:
    """Mutual TLS on every gRPC hop and NATS (services/common/tls.py)."""

    enabled: bool = env(v.SHOP_MTLS)
    pki_dir: Path = Path(v.SHOP_DATA_DIR.default) / "pki"
    reload_s: float = env(v.SHOP_TLS_RELOAD_S)
    # SHOP_IDENTITY: wins over what the entry point claims ("" : the claim).
    identity: str = ""

    def identity_of(self, claimed: str) -> str:
        """The identity a process claiming `claimed` calls as."""
        return self.identity or claimed


@dataclass(frozen=True, slots=True)
class NatsConfig:
    """The NATS connection, the events stream's limits, the relay and the inboxes."""

    # SHOP_NATS_IDENTITY: the identity NATS is connected as ("" : the process identity).
    identity: str = ""
    # SHOP_NATS_REPLICAS: 0 means min(3, servers named in `url`).
    replicas: int = 0
    stream_max_age_s: float = env(v.SHOP_STREAM_MAX_AGE_S)
    stream_max_bytes: int = env(v.SHOP_STREAM_MAX_BYTES)
    # SHOP_INBOX_RETAIN_S: None means the stream's max age plus a margin.
    inbox_retain_s: float | None = None
    relay_lease_s: float = env(v.SHOP_RELAY_LEASE_S)


@dataclass(frozen=True, slots=True)
class DiscoveryConfig:
    """The registry in NATS and the discovery of the other instances."""

    enabled: bool = env(v.SHOP_REGISTRY)
    ttl_s: float = env(v.SHOP_REGISTRY_TTL_S)
    wait_s: float = env(v.SHOP_DISCOVERY_WAIT_S)
    health_s: float = env(v.SHOP_DISCOVERY_HEALTH_S)
    recheck_s: float = env(v.SHOP_DISCOVERY_RECHECK_S)
    check_timeout_s: float = env(v.SHOP_DISCOVERY_CHECK_TIMEOUT_S)


@dataclass(frozen=True, slots=True)
class ServingConfig:
    """How a service's gRPC server is reached, guarded and drained."""

    advertise_host: str = ""
    drain_delay_s: float = env(v.SHOP_DRAIN_DELAY_S)
    deregister_wait_s: float = env(v.SHOP_DEREGISTER_WAIT_S)
    # A plaintext health-only port for Kubernetes probes; None: none.
    probe_port: int | None = None
    # The `/metrics` port; None: the gRPC port + 1000.
    metrics_port: int | None = None
    # The call policy file; None: proto/call_policy.toml.
    call_policy: Path | None = None


@dataclass(frozen=True, slots=True)
class TracingConfig:
    """OpenTelemetry (its SDK reads the rest of its variables itself)."""

    disabled: bool = False
    # OTEL_SERVICE_NAME is set: the SDK names the service, not shop.
    service_named: bool = False
    endpoint: str = ""
    protocol: str = "http/protobuf"


@dataclass(frozen=True, slots=True)
class UserConfig:
    token_ttl_s: int = env(v.SHOP_TOKEN_TTL_S)
    jwt_issuer: str = env(v.SHOP_JWT_ISSUER)
    jwt_audience: str = env(v.SHOP_JWT_AUDIENCE)
    scrypt_n: int = env(v.SHOP_SCRYPT_N)
    admin_password: str = ""


@dataclass(frozen=True, slots=True)
class OrderConfig:
    step_timeout_s: float = env(v.SHOP_SAGA_STEP_TIMEOUT_S)
    reserve_attempts: int = env(v.SHOP_SAGA_RESERVE_ATTEMPTS)
    charge_attempts: int = env(v.SHOP_SAGA_CHARGE_ATTEMPTS)
    compensation_attempts: int = env(v.SHOP_SAGA_COMPENSATION_ATTEMPTS)
    saga_lease_s: float = env(v.SHOP_SAGA_LEASE_S)
    saga_budget_s: float = env(v.SHOP_ORDER_SAGA_BUDGET_S)


@dataclass(frozen=True, slots=True)
class MailConfig:
    """The notification service's mail variables as set (mailconfig.py parses them)."""

    smtp_url: str = env(v.SMTP_URL)
    sender: str = env(v.SMTP_FROM)
    timeout_s: float = env(v.SHOP_MAIL_TIMEOUT_S)
    backoff_s: float = env(v.SHOP_MAIL_BACKOFF_S)
    backoff_cap_s: float = env(v.SHOP_MAIL_BACKOFF_CAP_S)
    give_up_s: float = env(v.SHOP_MAIL_GIVE_UP_S)
    breaker_fail_max: int = env(v.SHOP_MAIL_BREAKER_FAIL_MAX)
    breaker_reset_s: float = env(v.SHOP_MAIL_BREAKER_RESET_S)
    concurrency: int = env(v.SHOP_MAIL_CONCURRENCY)
    batch: int = env(v.SHOP_MAIL_BATCH)


@dataclass(frozen=True, slots=True)
class StockConfig:
    """Inventory: reservations' lifetime and the ledger's snapshots."""

    reservation_ttl_s: float = env(v.INVENTORY_RESERVATION_TTL_S)
    snapshot_every: int = env(v.INVENTORY_SNAPSHOT_EVERY)


__all__ = [
    "BreakerConfig",
    "DiscoveryConfig",
    "MailConfig",
    "NatsConfig",
    "OrderConfig",
    "ServingConfig",
    "StockConfig",
    "TlsConfig",
    "TracingConfig",
    "UserConfig",
]
