"""The typed settings of each area of a process: small frozen values whose defaults are
those of services/common/envvars.py.

`settings.load_settings(service)` makes them from the environment once, at start; the
composition root hands each to the part that needs it (a `BreakerConfig` to the
process's `Breakers`, a `TlsConfig` to its `Transport`, ...). Nothing here reads the
environment: a test or a tool builds them with the values it wants.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from services.common import envvars as v


@dataclass(frozen=True, slots=True)
class BreakerConfig:
    """The breakers of calls to other services (services/common/breakers.py)."""

    fail_max: int = v.SHOP_BREAKER_FAIL_MAX.default
    reset_s: float = v.SHOP_BREAKER_RESET_S.default
    probe_s: float = v.SHOP_BREAKER_PROBE_S.default


@dataclass(frozen=True, slots=True)
class TlsConfig:
    """Mutual TLS on every gRPC hop and NATS (services/common/tls.py)."""

    enabled: bool = v.SHOP_MTLS.default
    pki_dir: Path = Path(v.SHOP_DATA_DIR.default) / "pki"
    reload_s: float = v.SHOP_TLS_RELOAD_S.default
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
    stream_max_age_s: float = v.SHOP_STREAM_MAX_AGE_S.default
    stream_max_bytes: int = v.SHOP_STREAM_MAX_BYTES.default
    # SHOP_INBOX_RETAIN_S: None means the stream's max age plus a margin.
    inbox_retain_s: float | None = None
    relay_lease_s: float = v.SHOP_RELAY_LEASE_S.default


@dataclass(frozen=True, slots=True)
class DiscoveryConfig:
    """The registry in NATS and the discovery of the other instances."""

    enabled: bool = v.SHOP_REGISTRY.default
    ttl_s: float = v.SHOP_REGISTRY_TTL_S.default
    wait_s: float = v.SHOP_DISCOVERY_WAIT_S.default
    health_s: float = v.SHOP_DISCOVERY_HEALTH_S.default
    recheck_s: float = v.SHOP_DISCOVERY_RECHECK_S.default
    check_timeout_s: float = v.SHOP_DISCOVERY_CHECK_TIMEOUT_S.default


@dataclass(frozen=True, slots=True)
class ServingConfig:
    """How a service's gRPC server is reached, guarded and drained."""

    advertise_host: str = ""
    drain_delay_s: float = v.SHOP_DRAIN_DELAY_S.default
    deregister_wait_s: float = v.SHOP_DEREGISTER_WAIT_S.default
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
    token_ttl_s: int = v.SHOP_TOKEN_TTL_S.default
    jwt_issuer: str = v.SHOP_JWT_ISSUER.default
    jwt_audience: str = v.SHOP_JWT_AUDIENCE.default
    scrypt_n: int = v.SHOP_SCRYPT_N.default
    admin_password: str = ""


@dataclass(frozen=True, slots=True)
class OrderConfig:
    step_timeout_s: float = v.SHOP_SAGA_STEP_TIMEOUT_S.default
    reserve_attempts: int = v.SHOP_SAGA_RESERVE_ATTEMPTS.default
    charge_attempts: int = v.SHOP_SAGA_CHARGE_ATTEMPTS.default
    compensation_attempts: int = v.SHOP_SAGA_COMPENSATION_ATTEMPTS.default
    saga_lease_s: float = v.SHOP_SAGA_LEASE_S.default
    saga_budget_s: float = v.SHOP_ORDER_SAGA_BUDGET_S.default


@dataclass(frozen=True, slots=True)
class MailConfig:
    """The notification service's mail variables as set (mailconfig.py parses them)."""

    smtp_url: str = v.SMTP_URL.default
    sender: str = v.SMTP_FROM.default
    timeout_s: float = v.SHOP_MAIL_TIMEOUT_S.default
    backoff_s: float = v.SHOP_MAIL_BACKOFF_S.default
    backoff_cap_s: float = v.SHOP_MAIL_BACKOFF_CAP_S.default
    give_up_s: float = v.SHOP_MAIL_GIVE_UP_S.default
    breaker_fail_max: int = v.SHOP_MAIL_BREAKER_FAIL_MAX.default
    breaker_reset_s: float = v.SHOP_MAIL_BREAKER_RESET_S.default
    concurrency: int = v.SHOP_MAIL_CONCURRENCY.default
    batch: int = v.SHOP_MAIL_BATCH.default


@dataclass(frozen=True, slots=True)
class StockConfig:
    """Inventory: reservations' lifetime and the ledger's snapshots."""

    reservation_ttl_s: float = v.INVENTORY_RESERVATION_TTL_S.default
    snapshot_every: int = v.INVENTORY_SNAPSHOT_EVERY.default


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
