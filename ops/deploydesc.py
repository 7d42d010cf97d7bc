"""The one description of shop's deployment: processes, ports, probes, calls, settings.

`ops/deploygen.py` renders the Kubernetes manifests (deploy/k8s) and the Compose file
(deploy/compose) from it; tests/contract/test_deploy.py checks it against the code
(services/common/settings.py, the services' downstream clients) and the rendered files
against it. Change the deployment here, then `python -m ops.deploygen`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from services.common.settings import DEFAULT_PORTS, SERVICES

__all__ = [
    "APP",
    "DATA_DIR",
    "DB_PORT",
    "GATEWAY",
    "IMAGE",
    "NAMESPACE",
    "NATS_CLIENT_PORT",
    "NATS_NODES",
    "NATS_ROUTE_PORT",
    "PKI_DIR",
    "PROBE_PORT",
    "PROCESSES",
    "UID",
    "Process",
    "common_env",
    "nats_url",
]

NAMESPACE = "shop"
APP = "shop"
IMAGE = "ghcr.io/example/shop"  # overlays pin the tag (dev: dev, prod: a release)
GATEWAY = "gateway"
UID = 10001  # the image's non-root user
DATA_DIR = "/var/lib/shop"  # an emptyDir: logs, ready files; state lives in PostgreSQL
PKI_DIR = "/etc/shop/pki"  # ca.pem, <identity>.pem/.key from the identity's certificate
KEYS_DIR = f"{DATA_DIR}/keys"  # the user service's JWT signing keys (a Secret)
PROBE_PORT = 8086  # SHOP_PROBE_PORT: plaintext, grpc.health.v1 only (kubelet has no mTLS)
NATS_NODES = 3
NATS_CLIENT_PORT = 4222
NATS_ROUTE_PORT = 6222
NATS_MONITOR_PORT = 8222
NATS_NAME = "shop-nats"  # the Helm release's fullname: pods shop-nats-0..2
DB_NAME = "shop-pg"  # the CloudNativePG Cluster: service shop-pg-rw, secret shop-pg-app
DB_PORT = 5432
DB_USER = "shop"


@dataclass(frozen=True)
class Process:
    """One process of the image: a Deployment in Kubernetes, a service in Compose."""

    name: str
    port: int
    calls: tuple[str, ...] = ()  # services it calls over gRPC (one NetworkPolicy edge each)
    replicas: int = 2  # at least two: a PodDisruptionBudget keeps one
    autoscale: tuple[int, int] | None = None  # (min, max) replicas by CPU: an HPA
    cpu: tuple[str, str] = ("100m", "1")  # request, limit
    memory: tuple[str, str] = ("128Mi", "256Mi")
    env: Mapping[str, str] = field(default_factory=dict)
    extra_ports: Mapping[str, int] = field(default_factory=dict)
    secrets: tuple[str, ...] = ()  # extra Secret mounts: "jwt"
    egress_smtp: bool = False

    @property
    def is_gateway(self) -> bool:
        return self.name == GATEWAY

    @property
    def identity(self) -> str:
        return self.name

    @property
    def module(self) -> str:
        return GATEWAY if self.is_gateway else f"services.{self.name}"


def _svc(name: str, **kw: object) -> Process:
    return Process(name=name, port=DEFAULT_PORTS[name], **kw)  # type: ignore[arg-type]


# Who calls whom: the gateway routes to every service; order runs the saga; cart prices
# items; inventory asks order about the order of a stale reservation. Everyone also
# reaches NATS and PostgreSQL (not listed: every process has them).
PROCESSES: tuple[Process, ...] = (
    _svc("user", autoscale=(2, 6), secrets=("jwt",)),
    _svc("product", autoscale=(2, 6)),
    _svc("cart", calls=("product",), autoscale=(2, 6)),
    _svc("order", calls=("user", "product", "cart", "inventory", "payment", "shipping"),
         autoscale=(2, 8), cpu=("200m", "1"), memory=("192Mi", "384Mi")),
    # Payment and inventory serialize on their rows (a charge per order, a stock row per
    # product): more pods do not add throughput, the database does. Fixed replicas.
    _svc("payment"),
    _svc("inventory", calls=("order",)),
    _svc("notification", extra_ports={"metrics": DEFAULT_PORTS["notification"] + 1000},
         egress_smtp=True),
    _svc("shipping", env={"SHIPPING_DISPATCH_DELAY_S": "2"}),
    Process(name=GATEWAY, port=DEFAULT_PORTS[GATEWAY], calls=SERVICES, autoscale=(2, 10),
            cpu=("200m", "2"), memory=("192Mi", "384Mi"),
            env={"GATEWAY_RATE_LIMIT": "100/second"}),
)


def nats_url(hosts: list[str]) -> str:
    return ",".join(f"nats://{h}:{NATS_CLIENT_PORT}" for h in hosts)


def common_env() -> dict[str, str]:
    """Settings every process gets (the ConfigMap `shop-config`, Compose's x-env)."""
    return {
        "SHOP_HOST": "0.0.0.0",
        "SHOP_DATA_DIR": DATA_DIR,
        "SHOP_PKI_DIR": PKI_DIR,
        "SHOP_MTLS": "on",
        "SHOP_PROBE_PORT": str(PROBE_PORT),
        "SHOP_LOG_LEVEL": "INFO",
        "SHOP_NATS_REPLICAS": str(NATS_NODES),
        # Callers find each other through the headless Services' DNS names.
        **{f"{s.upper()}_ADDR": f"{s}:{DEFAULT_PORTS[s]}" for s in SERVICES},
    }
