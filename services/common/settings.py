"""Process settings, all from the environment, read once at start-up: `load_settings`
is, with the gateway's `gateway.config.load_gateway_settings`, the only code of the
services and the gateway that reads a variable (tests/contract/test_settings.py)."""

from __future__ import annotations

import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields
from importlib import metadata
from pathlib import Path
from typing import Any, TypeVar, cast
from urllib.parse import urlsplit, urlunsplit

from services.common import envvars
from services.common.config import (
    BreakerConfig,
    DiscoveryConfig,
    MailConfig,
    NatsConfig,
    OrderConfig,
    ServingConfig,
    StockConfig,
    TlsConfig,
    TracingConfig,
    UserConfig,
)

T = TypeVar("T")

# JetStream's duplicate window of the events stream (services.common.bus): a max age
# below it would drop ids the window still needs.
DUPLICATE_WINDOW_S = 120.0

SERVICES: tuple[str, ...] = (
    "user",
    "product",
    "cart",
    "order",
    "payment",
    "inventory",
    "notification",
    "shipping",
)

DEFAULT_PORTS: Mapping[str, int] = {
    **{name: 50051 + i for i, name in enumerate(SERVICES)},
    "gateway": 8080,
}


# Reading a variable: its `Var` in services/common/envvars.py (`SHOP_X.get()`). These
# take a name and a default instead, for code that has not declared its variable there
# yet; tests/contract/test_settings.py fails until it has.


def env_str(name: str, default: str) -> str:
    """The variable's value, or `default` when unset or empty."""
    value = envvars.raw_value(name)
    return value if value else default


def env_int(name: str, default: int) -> int:
    return envvars.integer(name, default, "", "").get()


def env_float(name: str, default: float) -> float:
    return envvars.number(name, default, "", "").get()


@dataclass(frozen=True)
class Settings:
    """Everything one process reads from the environment, read once at its start
    (`load_settings`); the composition root hands each part the values it needs."""

    service: str
    host: str = "127.0.0.1"
    port: int = 0
    data_dir: Path = Path("var")
    nats_url: str = "nats://127.0.0.1:4222"
    log_level: str = "INFO"
    instance_id: str = ""
    ready_file: Path | None = None
    grace_s: float = 10.0
    # A PostgreSQL URL for this service's own database; "" means its SQLite file.
    database_url: str = ""
    db_pool_max: int = envvars.SHOP_DB_POOL_MAX.default
    # The version the instance registers with (SHOP_VERSION, else the package's).
    version: str = "dev"
    # `<SERVICE>_ADDR`: services whose calls all go to one fixed address (no discovery).
    pinned: Mapping[str, str] = field(default_factory=dict)
    # SHOP_TRAFFIC: the per-RPC deadlines and routes; None: proto/traffic.toml.
    traffic_file: Path | None = None
    breaker: BreakerConfig = field(default_factory=BreakerConfig)
    tls: TlsConfig = field(default_factory=TlsConfig)
    nats: NatsConfig = field(default_factory=NatsConfig)
    discovery: DiscoveryConfig = field(default_factory=DiscoveryConfig)
    serving: ServingConfig = field(default_factory=ServingConfig)
    tracing: TracingConfig = field(default_factory=TracingConfig)
    # One service's own settings (the defaults for the others).
    user: UserConfig = field(default_factory=UserConfig)
    order: OrderConfig = field(default_factory=OrderConfig)
    mail: MailConfig = field(default_factory=MailConfig)
    stock: StockConfig = field(default_factory=StockConfig)
    shipping_dispatch_delay_s: float = envvars.SHIPPING_DISPATCH_DELAY_S.default
    product_refresh_s: float = envvars.PRODUCT_REFRESH_S.default

    @property
    def db_path(self) -> Path:
        """One file per service, shared by all of its instances (SQLite)."""
        return self.data_dir / f"{self.service}.db"

    @property
    def identity(self) -> str:
        """Who the process is on the mesh: SHOP_IDENTITY, else its service's name."""
        return self.tls.identity_of(self.service)

    @property
    def nats_identity(self) -> str:
        """Who the process is on NATS: SHOP_NATS_IDENTITY, else its identity."""
        return self.nats.identity or self.identity


class _Reader:
    """Reads the variables one process reads (`envvars.read_by`); the others keep their
    defaults, so a variable malformed for another process never stops this one."""

    def __init__(self, process: str) -> None:
        self.process = process

    def __call__(self, var: envvars.Var[T]) -> T:
        if envvars.read_by(var, self.process):
            return var.get(self.process)
        return var.default


def _read_any(var: envvars.Var[T]) -> T:
    return var.get()


SectionT = TypeVar("SectionT")


def section(cls: type[SectionT], get: Callable[[envvars.Var[Any]], Any],
            **given: Any) -> SectionT:
    """A config section: each field declared `env(VAR)` read through `get`, the `given`
    ones (values that need more than a read: a clamp, a path, a check) as they are."""
    read = {f.name: get(f.metadata["var"]) for f in fields(cast(Any, cls))
            if "var" in f.metadata and f.name not in given}
    return cast(Callable[..., SectionT], cls)(**read, **given)


def load_settings(service: str) -> Settings:
    """Settings for `service` (or "gateway") from the environment; creates the data dir.
    A malformed value raises ValueError naming its variable."""
    get = _Reader(service)
    data_dir = Path(get(envvars.SHOP_DATA_DIR))
    data_dir.mkdir(parents=True, exist_ok=True)
    ready = get(envvars.SHOP_READY_FILE)
    port = get(envvars.SERVICE_PORT)
    traffic_file = get(envvars.SHOP_TRAFFIC)
    return Settings(
        service=service,
        host=get(envvars.SHOP_HOST),
        port=DEFAULT_PORTS.get(service, 0) if port is None else port,
        data_dir=data_dir,
        nats_url=get(envvars.NATS_URL),
        log_level=get(envvars.SHOP_LOG_LEVEL).upper(),
        instance_id=get(envvars.SHOP_INSTANCE_ID) or f"{service}-{uuid.uuid4().hex[:8]}",
        ready_file=Path(ready) if ready else None,
        grace_s=get(envvars.SHOP_GRACE_S),
        database_url=database_url(service) if envvars.read_by(
            envvars.SHOP_DATABASE_URL, service) else "",
        db_pool_max=get(envvars.SHOP_DB_POOL_MAX),
        version=get(envvars.SHOP_VERSION) or package_version(),
        pinned={name: addr for name in SERVICES
                if (addr := envvars.SERVICE_ADDR.get(name))},
        traffic_file=Path(traffic_file) if traffic_file else None,
        breaker=section(BreakerConfig, get),
        tls=_tls(get),
        nats=_nats(get),
        discovery=section(DiscoveryConfig, get,
                          ttl_s=max(1.0, get(envvars.SHOP_REGISTRY_TTL_S))),
        serving=_serving(get, service),
        tracing=_tracing(get),
        user=section(UserConfig, get, admin_password=get(envvars.SHOP_ADMIN_PASSWORD)),
        order=section(OrderConfig, get),
        mail=section(MailConfig, get),
        stock=section(StockConfig, get),
        shipping_dispatch_delay_s=get(envvars.SHIPPING_DISPATCH_DELAY_S),
        product_refresh_s=get(envvars.PRODUCT_REFRESH_S),
    )


def _tls(get: Callable[[envvars.Var[Any]], Any]) -> TlsConfig:
    explicit = get(envvars.SHOP_PKI_DIR)
    return section(
        TlsConfig, get,
        pki_dir=Path(explicit) if explicit else Path(get(envvars.SHOP_DATA_DIR)) / "pki",
        identity=get(envvars.SHOP_IDENTITY),
    )


def load_tls_config() -> TlsConfig:
    """The TLS settings alone, for tools (shopctl, make run, the tests' own calls)."""
    return _tls(_read_any)


def _nats(get: Callable[[envvars.Var[Any]], Any]) -> NatsConfig:
    replicas = get(envvars.SHOP_NATS_REPLICAS) or 0
    if not 0 <= replicas <= 5:
        raise ValueError(f"SHOP_NATS_REPLICAS must be 1 to 5 (JetStream's limit), "
                         f"got {envvars.SHOP_NATS_REPLICAS.raw()!r}")
    age = get(envvars.SHOP_STREAM_MAX_AGE_S)
    if age < 0:
        raise ValueError(f"SHOP_STREAM_MAX_AGE_S must be >= 0, got {age}")
    if 0 < age < DUPLICATE_WINDOW_S:
        raise ValueError(f"SHOP_STREAM_MAX_AGE_S must be 0 or at least the duplicate "
                         f"window ({DUPLICATE_WINDOW_S:g} s), got {age:g}")
    size = get(envvars.SHOP_STREAM_MAX_BYTES)
    if size < 0:
        raise ValueError(f"SHOP_STREAM_MAX_BYTES must be >= 0, got {size}")
    return section(NatsConfig, get, identity=get(envvars.SHOP_NATS_IDENTITY),
                   replicas=replicas, stream_max_age_s=age, stream_max_bytes=size,
                   inbox_retain_s=get(envvars.SHOP_INBOX_RETAIN_S))


def load_nats_config() -> NatsConfig:
    """The NATS settings alone, for tools."""
    return _nats(_read_any)


def _serving(get: Callable[[envvars.Var[Any]], Any], service: str) -> ServingConfig:
    probe: str = get(envvars.SERVICE_PROBE_PORT) or get(envvars.SHOP_PROBE_PORT)
    if probe and not probe.isdigit():
        raise ValueError(f"probe port must be a port number, got {probe!r}")
    policy = get(envvars.SHOP_CALL_POLICY)
    return section(
        ServingConfig, get,
        advertise_host=get(envvars.SHOP_ADVERTISE_HOST),
        probe_port=int(probe) if probe else None,
        metrics_port=get(envvars.SERVICE_METRICS_PORT),
        call_policy=Path(policy) if policy else None,
    )


def _tracing(get: Callable[[envvars.Var[Any]], Any]) -> TracingConfig:
    def first(*names: envvars.Var[str]) -> str:
        for var in names:
            value: str = get(var)
            if value:
                return value
        return ""

    return TracingConfig(
        disabled=get(envvars.OTEL_SDK_DISABLED).lower() == "true",
        service_named=bool(get(envvars.OTEL_SERVICE_NAME)),
        endpoint=first(envvars.OTEL_EXPORTER_OTLP_TRACES_ENDPOINT,
                       envvars.OTEL_EXPORTER_OTLP_ENDPOINT),
        protocol=first(envvars.OTEL_EXPORTER_OTLP_TRACES_PROTOCOL,
                       envvars.OTEL_EXPORTER_OTLP_PROTOCOL) or "http/protobuf",
    )


def package_version() -> str:
    try:
        return metadata.version("shop")
    except metadata.PackageNotFoundError:
        return "dev"


def database_url(service: str) -> str:
    """`<SERVICE>_DATABASE_URL`, else `SHOP_DATABASE_URL` with the database `shop_<service>`
    put in (a server URL: `postgresql://user[:pw]@host[:port]/`, `?host=/socket/dir` kept),
    else "" (SQLite)."""
    own = envvars.SERVICE_DATABASE_URL.get(service)
    if own:
        return _checked(envvars.SERVICE_DATABASE_URL.key(service), own)
    server = envvars.SHOP_DATABASE_URL.get()
    if not server:
        return ""
    parts = urlsplit(_checked("SHOP_DATABASE_URL", server))
    name = "shop_" + service.replace("-", "_")
    return urlunsplit((parts.scheme, parts.netloc, "/" + name, parts.query, parts.fragment))


def _checked(name: str, url: str) -> str:
    if urlsplit(url).scheme not in ("postgresql", "postgres"):
        raise ValueError(f"{name} must be a postgresql:// URL, got scheme "
                         f"{urlsplit(url).scheme!r}")
    return url


def default_addr(service: str) -> str:
    """Where `service` listens when everything runs on one machine with default ports."""
    return f"127.0.0.1:{DEFAULT_PORTS[service]}"


def health_name(service: str) -> str:
    """The grpc.health.v1 service name an instance of `service` reports SERVING under:
    `shop.<svc>.v1.<Svc>Service`. Asking for it (not for "") means another server on a
    reused port is never taken for this service."""
    return f"shop.{service}.v1.{service.capitalize()}Service"
