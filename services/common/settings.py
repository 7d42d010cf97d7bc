"""Process settings, all from the environment, read once at start-up."""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

from services.common import envvars

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

    @property
    def db_path(self) -> Path:
        """One file per service, shared by all of its instances (SQLite)."""
        return self.data_dir / f"{self.service}.db"


def load_settings(service: str) -> Settings:
    """Settings for `service` from the environment; creates the data dir."""
    data_dir = Path(envvars.SHOP_DATA_DIR.get())
    data_dir.mkdir(parents=True, exist_ok=True)
    ready = envvars.SHOP_READY_FILE.get()
    port = envvars.SERVICE_PORT.get(service)
    return Settings(
        service=service,
        host=envvars.SHOP_HOST.get(),
        port=DEFAULT_PORTS.get(service, 0) if port is None else port,
        data_dir=data_dir,
        nats_url=envvars.NATS_URL.get(),
        log_level=envvars.SHOP_LOG_LEVEL.get().upper(),
        instance_id=envvars.SHOP_INSTANCE_ID.get() or f"{service}-{uuid.uuid4().hex[:8]}",
        ready_file=Path(ready) if ready else None,
        grace_s=envvars.SHOP_GRACE_S.get(),
        database_url=database_url(service),
    )


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


def downstream_addr(service: str) -> str | None:
    """A fixed address for `service` (`<SERVICE>_ADDR`), overriding discovery."""
    return envvars.SERVICE_ADDR.get(service) or None


def default_addr(service: str) -> str:
    """Where `service` listens when everything runs on one machine with default ports."""
    return f"127.0.0.1:{DEFAULT_PORTS[service]}"


def health_name(service: str) -> str:
    """The grpc.health.v1 service name an instance of `service` reports SERVING under:
    `shop.<svc>.v1.<Svc>Service`. Asking for it (not for "") means another server on a
    reused port is never taken for this service."""
    return f"shop.{service}.v1.{service.capitalize()}Service"
