"""Process settings, all from the environment, read once at start-up."""

from __future__ import annotations

import os
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

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


def env_str(name: str, default: str) -> str:
    """The variable's value, or `default` when unset or empty."""
    value = os.environ.get(name, "")
    return value if value else default


def env_int(name: str, default: int) -> int:
    raw = os.environ.get(name, "").strip()
    if not raw:
        return default
    try:
        return int(raw)
    except ValueError:
        raise ValueError(f"{name} must be an integer, got {raw!r}") from None


def env_float(name: str, default: float) -> float:
    raw = os.environ.get(name, "").strip()
    if not raw:
        return default
    try:
        return float(raw)
    except ValueError:
        raise ValueError(f"{name} must be a number, got {raw!r}") from None


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


def _env_prefix(service: str) -> str:
    return service.upper().replace("-", "_")


def load_settings(service: str) -> Settings:
    """Settings for `service` from the environment; creates the data dir."""
    data_dir = Path(env_str("SHOP_DATA_DIR", "var"))
    data_dir.mkdir(parents=True, exist_ok=True)
    ready = os.environ.get("SHOP_READY_FILE", "")
    return Settings(
        service=service,
        host=env_str("SHOP_HOST", "127.0.0.1"),
        port=env_int(f"{_env_prefix(service)}_PORT", DEFAULT_PORTS.get(service, 0)),
        data_dir=data_dir,
        nats_url=env_str("NATS_URL", "nats://127.0.0.1:4222"),
        log_level=env_str("SHOP_LOG_LEVEL", "INFO").upper(),
        instance_id=env_str("SHOP_INSTANCE_ID", f"{service}-{uuid.uuid4().hex[:8]}"),
        ready_file=Path(ready) if ready else None,
        grace_s=env_float("SHOP_GRACE_S", 10.0),
        database_url=database_url(service),
    )


def database_url(service: str) -> str:
    """`<SERVICE>_DATABASE_URL`, else `SHOP_DATABASE_URL` with the database `shop_<service>`
    put in (a server URL: `postgresql://user[:pw]@host[:port]/`, `?host=/socket/dir` kept),
    else "" (SQLite)."""
    own = os.environ.get(f"{_env_prefix(service)}_DATABASE_URL", "").strip()
    if own:
        return _checked(f"{_env_prefix(service)}_DATABASE_URL", own)
    server = os.environ.get("SHOP_DATABASE_URL", "").strip()
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
    value = os.environ.get(f"{_env_prefix(service)}_ADDR", "").strip()
    return value or None


def default_addr(service: str) -> str:
    """Where `service` listens when everything runs on one machine with default ports."""
    return f"127.0.0.1:{DEFAULT_PORTS[service]}"


def health_name(service: str) -> str:
    """The grpc.health.v1 service name an instance of `service` reports SERVING under:
    `shop.<svc>.v1.<Svc>Service`. Asking for it (not for "") means another server on a
    reused port is never taken for this service."""
    return f"shop.{service}.v1.{service.capitalize()}Service"
