"""Every environment variable shop reads: one typed table, each with its default and
meaning, and the only code that looks at the environment.

A variable is a `Var` constant named as the variable itself, read with
`SHOP_BREAKER_FAIL_MAX.get()` (typed, the default from here, a malformed value an error
naming the variable), a per-service one with `SERVICE_PORT.get("order")`. In a service
or the gateway only the settings loaders read them (`settings.load_settings`,
`gateway.config.load_gateway_settings`): they gather what the process reads into its one
`Settings`, and the composition root hands the values on. Tools (ops/, bench/) may read
a `Var` where they use it. A new variable is one line below plus its field in the
loader: the README's table (between the `settings` markers) is rendered from this one
(`python -m ops.settingsdoc`), and tests/contract/test_settings.py fails while the two
differ, while code reads `os.environ` anywhere else or a `Var` outside the loaders, or
names a variable this table does not declare.

Read once at start: a process's entry point (`run_service`, the gateway's `main`) calls
`read_once()`, which checks every variable the process may read and binds a snapshot of
the environment for the rest of the process (its tasks inherit it), then loads its
settings from it. Without a snapshot (tests running parts in-process) reads see
`os.environ` as it is now, so `monkeypatch.setenv` keeps working.
"""

from __future__ import annotations

import contextvars
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

T = TypeVar("T")

# Who reads a variable, for the README's table.
EVERY = "every service and the gateway"
SERVICES = "every service"
GATEWAY = "gateway"
RUN = "make run"

_OFF = ("0", "off", "false", "no")

_snapshot: contextvars.ContextVar[Mapping[str, str] | None] = contextvars.ContextVar(
    "shop_environment", default=None)


def _environment() -> Mapping[str, str]:
    bound = _snapshot.get()
    return os.environ if bound is None else bound


def raw_value(name: str) -> str:
    """`name`'s value as set, stripped ("" when unset): settings.env_* use it."""
    return _environment().get(name, "").strip()


@dataclass(frozen=True)
class Var(Generic[T]):
    """One variable. `name` may hold `<SERVICE>` (one variable per service)."""

    name: str
    default: T
    meaning: str
    read_by: str
    parse: Callable[[str], T]
    # The default as the README says it, where the value itself is computed or empty.
    shown: str = ""
    # Set but empty is a value of its own (a rate limit: "" turns it off), not the default.
    keep_empty: bool = False

    def key(self, service: str = "") -> str:
        if "<SERVICE>" not in self.name:
            return self.name
        if not service:
            raise ValueError(f"{self.name} needs the service it is read for")
        return self.name.replace("<SERVICE>", service.upper().replace("-", "_"))

    def raw(self, service: str = "") -> str:
        """The value as set, stripped; "" when unset."""
        return _environment().get(self.key(service), "").strip()

    def get(self, service: str = "") -> T:
        """The typed value, or the default when unset or empty."""
        raw = self.raw(service)
        if not raw and not (self.keep_empty and self.key(service) in _environment()):
            return self.default
        try:
            return self.parse(raw)
        except ValueError as err:
            raise ValueError(f"{self.key(service)} {err}") from None

    @property
    def default_text(self) -> str:
        if self.shown:
            return self.shown
        if isinstance(self.default, bool):
            return "on" if self.default else "off"
        return "" if self.default is None else str(self.default)


def _int(raw: str) -> int:
    try:
        return int(raw)
    except ValueError:
        raise ValueError(f"must be an integer, got {raw!r}") from None


def _float(raw: str) -> float:
    try:
        return float(raw)
    except ValueError:
        raise ValueError(f"must be a number, got {raw!r}") from None


def _flag(raw: str) -> bool:
    return raw.lower() not in _OFF


def _text(raw: str) -> str:
    return raw


def text(name: str, default: str, meaning: str, read_by: str, shown: str = "", *,
         keep_empty: bool = False) -> Var[str]:
    return Var(name, default, meaning, read_by, _text, shown, keep_empty)


def integer(name: str, default: int, meaning: str, read_by: str, shown: str = "") -> Var[int]:
    return Var(name, default, meaning, read_by, _int, shown)


def number(name: str, default: float, meaning: str, read_by: str,
           shown: str = "") -> Var[float]:
    return Var(name, default, meaning, read_by, _float, shown)


def flag(name: str, default: bool, meaning: str, read_by: str) -> Var[bool]:
    return Var(name, default, meaning, read_by, _flag)


def maybe_integer(name: str, meaning: str, read_by: str, shown: str) -> Var[int | None]:
    """An integer whose default the reader computes (None when unset)."""
    return Var[int | None](name, None, meaning, read_by, _int, shown)


def maybe_number(name: str, meaning: str, read_by: str, shown: str) -> Var[float | None]:
    return Var[float | None](name, None, meaning, read_by, _float, shown)


# --- where a process listens, its files, its identity -------------------------------------

SHOP_HOST = text("SHOP_HOST", "127.0.0.1", "the address to listen on", EVERY)
SERVICE_PORT = maybe_integer("<SERVICE>_PORT", "a service's gRPC port (0: any free port)",
                             SERVICES, "50051 + the service's place (user 50051 ... shipping "
                             "50058)")
GATEWAY_PORT = integer("GATEWAY_PORT", 8080, "the gateway's HTTP port", GATEWAY)
SERVICE_METRICS_PORT = maybe_integer(
    "<SERVICE>_METRICS_PORT", "the `/metrics` port (0: any free port)", SERVICES,
    "the gRPC port + 1000")
SHOP_DATA_DIR = text("SHOP_DATA_DIR", "var",
                     "the data directory: SQLite files, the PKI, `make run`'s logs", EVERY)
SHOP_READY_FILE = text("SHOP_READY_FILE", "",
                       "written once serving: the process's address (how the supervisor "
                       "learns a port 0)", EVERY, "none")
SHOP_INSTANCE_ID = text("SHOP_INSTANCE_ID", "", "this instance's name", EVERY,
                        "`<service>-<random>`")
SHOP_ADVERTISE_HOST = text("SHOP_ADVERTISE_HOST", "",
                           "the name other machines reach this one by (a pod IP)", EVERY,
                           "the listen address")
SHOP_LOG_LEVEL = text("SHOP_LOG_LEVEL", "INFO", "the log level", EVERY)
SHOP_GRACE_S = number("SHOP_GRACE_S", 10.0, "a graceful stop's time for calls in flight",
                      SERVICES)
SHOP_DRAIN_DELAY_S = number("SHOP_DRAIN_DELAY_S", 0.0,
                            "NOT_SERVING this long before the port closes", SERVICES)
SHOP_DEREGISTER_WAIT_S = number("SHOP_DEREGISTER_WAIT_S", 0.25,
                                "after leaving the registry, this long before draining",
                                SERVICES)
SHOP_VERSION = text("SHOP_VERSION", "", "the version an instance registers with (weighted "
                    "routes of `proto/traffic.toml`)", EVERY, "the package's version")

# --- calls between services -----------------------------------------------------------------

SERVICE_ADDR = text("<SERVICE>_ADDR", "", "pins every call to a service to one address "
                    "(no discovery)", EVERY, "unset: discovery, else the default port")
SHOP_BREAKER_FAIL_MAX = integer("SHOP_BREAKER_FAIL_MAX", 5,
                                "failures in a row that open a breaker", EVERY)
SHOP_BREAKER_RESET_S = number("SHOP_BREAKER_RESET_S", 30.0,
                              "an open breaker half-opens after this long (sooner once its "
                              "instance reports SERVING again)", EVERY)
SHOP_BREAKER_PROBE_S = number("SHOP_BREAKER_PROBE_S", 0.25,
                              "an open breaker's health check interval", EVERY)
SHOP_TRAFFIC = text("SHOP_TRAFFIC", "", "per-RPC deadlines and attempts, weighted routes",
                    EVERY, "`proto/traffic.toml`")
SHOP_REGISTRY = flag("SHOP_REGISTRY", True, "register in NATS and discover the others "
                     "(`off`: fixed or default addresses)", EVERY)
SHOP_REGISTRY_TTL_S = number("SHOP_REGISTRY_TTL_S", 10.0,
                             "a registration expires this long after its last refresh",
                             EVERY)
SHOP_DISCOVERY_WAIT_S = number("SHOP_DISCOVERY_WAIT_S", 2.0,
                               "at start, wait this long for the registry's first read",
                               EVERY)
SHOP_DISCOVERY_HEALTH_S = number("SHOP_DISCOVERY_HEALTH_S", 5.0,
                                 "discovery's health check of each instance, every", EVERY)
SHOP_DISCOVERY_RECHECK_S = number("SHOP_DISCOVERY_RECHECK_S", 0.25,
                                  "an instance marked down is checked again every", EVERY)
SHOP_DISCOVERY_CHECK_TIMEOUT_S = number("SHOP_DISCOVERY_CHECK_TIMEOUT_S", 0.5,
                                        "one health check's deadline", EVERY)

# --- zero trust -----------------------------------------------------------------------------

SHOP_MTLS = flag("SHOP_MTLS", True, "mutual TLS on every hop and NATS (`off`: plaintext, "
                 "for experiments only)", EVERY)
SHOP_PKI_DIR = text("SHOP_PKI_DIR", "", "`ca.pem`, `<identity>.pem`/`.key`", EVERY,
                    "`$SHOP_DATA_DIR/pki`")
SHOP_TLS_RELOAD_S = number("SHOP_TLS_RELOAD_S", 1.0,
                           "certificate files are looked at again after", EVERY)
SHOP_IDENTITY = text("SHOP_IDENTITY", "", "the process's identity", EVERY,
                     "the service's name, `gateway`, `operator`")
SHOP_NATS_IDENTITY = text("SHOP_NATS_IDENTITY", "", "the identity NATS is connected as",
                          EVERY, "the process identity")
SHOP_CALL_POLICY = text("SHOP_CALL_POLICY", "", "who may call which RPC", SERVICES,
                        "`proto/call_policy.toml`")
SHOP_PROBE_PORT = text("SHOP_PROBE_PORT", "",
                       "a plaintext health-only port for Kubernetes probes", SERVICES, "none")
SERVICE_PROBE_PORT = text("<SERVICE>_PROBE_PORT", "", "the same, for one service",
                          SERVICES, "`SHOP_PROBE_PORT`")

# --- NATS -----------------------------------------------------------------------------------

NATS_URL = text("NATS_URL", "nats://127.0.0.1:4222",
                "NATS servers, comma-separated (for `make run`: an external NATS instead "
                "of the embedded one)", EVERY)
SHOP_NATS_REPLICAS = maybe_integer("SHOP_NATS_REPLICAS", "replicas of the streams and the "
                                   "registry bucket (1 to 5)", EVERY,
                                   "min(3, servers in `NATS_URL`)")
SHOP_STREAM_MAX_AGE_S = number("SHOP_STREAM_MAX_AGE_S", 7 * 24 * 3600.0,
                               "the events stream keeps an event this long (0: for ever)",
                               SERVICES, "604800 (a week)")
SHOP_STREAM_MAX_BYTES = integer("SHOP_STREAM_MAX_BYTES", 1024**3,
                                "the events stream's size limit (0: none)", SERVICES,
                                "1073741824 (1 GiB)")
SHOP_INBOX_RETAIN_S = maybe_number("SHOP_INBOX_RETAIN_S", "inbox rows are kept this long",
                                   SERVICES, "the stream's max age + 3600")
SHOP_RELAY_LEASE_S = number("SHOP_RELAY_LEASE_S", 5.0,
                            "the outbox relay's lease (one relay per database)", SERVICES)

# --- tracing (OpenTelemetry's own names; its SDK reads the others itself, such as
# OTEL_TRACES_SAMPLER and OTEL_RESOURCE_ATTRIBUTES: docs/tracing.md) ---------------------

OTEL_SDK_DISABLED = text("OTEL_SDK_DISABLED", "", "`true`: no tracing (and no local span "
                         "receiver in `make run`)", EVERY, "false")
OTEL_SERVICE_NAME = text("OTEL_SERVICE_NAME", "", "the traces' service name", EVERY,
                         "`shop-<service>`")

OTEL_EXPORTER_OTLP_ENDPOINT = text("OTEL_EXPORTER_OTLP_ENDPOINT", "",
                                   "where spans go (none: tracing off)", EVERY, "none")
OTEL_EXPORTER_OTLP_TRACES_ENDPOINT = text("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "",
                                          "the same, for traces only", EVERY,
                                          "`OTEL_EXPORTER_OTLP_ENDPOINT`")
OTEL_EXPORTER_OTLP_PROTOCOL = text("OTEL_EXPORTER_OTLP_PROTOCOL", "",
                                   "`http/protobuf` or `grpc`", EVERY, "http/protobuf")
OTEL_EXPORTER_OTLP_TRACES_PROTOCOL = text("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", "",
                                          "the same, for traces only", EVERY,
                                          "`OTEL_EXPORTER_OTLP_PROTOCOL`")

# --- tokens and users -----------------------------------------------------------------------

SHOP_JWT_ISSUER = text("SHOP_JWT_ISSUER", "shop-user", "tokens' issuer", "user, gateway")
SHOP_JWT_AUDIENCE = text("SHOP_JWT_AUDIENCE", "shop-api", "tokens' audience", "user, gateway")
SHOP_TOKEN_TTL_S = integer("SHOP_TOKEN_TTL_S", 3600, "a token's lifetime", "user")
SHOP_SCRYPT_N = integer("SHOP_SCRYPT_N", 2**17, "scrypt's cost (lower it only for tests)",
                        "user", "131072 (2^17)")
SHOP_ADMIN_PASSWORD = text("SHOP_ADMIN_PASSWORD", "", "the admin account's password on its "
                           "first start", "user", "a random one in `var/admin-password`")

# --- the order saga, shipping, inventory, product -------------------------------------------

SHOP_SAGA_STEP_TIMEOUT_S = number("SHOP_SAGA_STEP_TIMEOUT_S", 3.0,
                                  "one saga step's call deadline", "order")
SHOP_SAGA_RESERVE_ATTEMPTS = integer("SHOP_SAGA_RESERVE_ATTEMPTS", 8,
                                     "attempts of an unknown reserve", "order")
SHOP_SAGA_CHARGE_ATTEMPTS = integer("SHOP_SAGA_CHARGE_ATTEMPTS", 8,
                                    "attempts of an unknown charge", "order")
SHOP_SAGA_COMPENSATION_ATTEMPTS = integer("SHOP_SAGA_COMPENSATION_ATTEMPTS", 8,
                                          "attempts of an unknown compensation", "order")
SHOP_SAGA_LEASE_S = number("SHOP_SAGA_LEASE_S", 10.0, "an instance's lease on a saga", "order")
SHOP_ORDER_SAGA_BUDGET_S = number("SHOP_ORDER_SAGA_BUDGET_S", 5.0,
                                  "CreateOrder waits this long for the saga", "order")
SHIPPING_DISPATCH_DELAY_S = number("SHIPPING_DISPATCH_DELAY_S", 2.0,
                                   "a confirmed order ships after", "shipping")
INVENTORY_RESERVATION_TTL_S = number("INVENTORY_RESERVATION_TTL_S", 900.0,
                                     "a reservation still held after this is settled by "
                                     "its order: committed if confirmed, released if "
                                     "cancelled or unknown (0: never)", "inventory")
PRODUCT_REFRESH_S = number("PRODUCT_REFRESH_S", 1.0,
                           "the catalogue cache is refreshed every", "product")
INVENTORY_SNAPSHOT_EVERY = integer("INVENTORY_SNAPSHOT_EVERY", 100,
                                   "a snapshot of a product's stock stream every so many "
                                   "events (0: none)", "inventory")

# --- storage ---------------------------------------------------------------------------------

SHOP_DATABASE_URL = text("SHOP_DATABASE_URL", "",
                         "a PostgreSQL server (`postgresql://user[:pw]@host[:port]/`): each "
                         "service gets its database `shop_<service>` there", SERVICES,
                         "none: SQLite files under the data directory")
SERVICE_DATABASE_URL = text("<SERVICE>_DATABASE_URL", "",
                            "one service's own database URL (over SHOP_DATABASE_URL)",
                            SERVICES, "none")
SHOP_DB_POOL_MAX = integer("SHOP_DB_POOL_MAX", 6,
                           "PostgreSQL connections per process at most", SERVICES)
DB = text("DB", "sqlite", "`make run` / `make bench`: `sqlite` or `postgres` (an embedded "
          "PostgreSQL under `var/pg`, or SHOP_DATABASE_URL's server)", RUN)

# --- mail (notification) --------------------------------------------------------------------

SMTP_URL = text("SMTP_URL", "smtp://127.0.0.1:1025",
                "the relay: `smtps://` for TLS, `smtp+starttls://` or `?starttls=1` for "
                "STARTTLS, `user:password@` to log in, `off` for none (a private CA: "
                "`SSL_CERT_FILE`)", "notification")
SMTP_FROM = text("SMTP_FROM", "shop <no-reply@shop.local>", "the mails' sender",
                 "notification")
SHOP_MAIL_TIMEOUT_S = number("SHOP_MAIL_TIMEOUT_S", 10.0, "one send attempt's deadline",
                             "notification")
SHOP_MAIL_BACKOFF_S = number("SHOP_MAIL_BACKOFF_S", 1.0, "the first retry's back-off",
                             "notification")
SHOP_MAIL_BACKOFF_CAP_S = number("SHOP_MAIL_BACKOFF_CAP_S", 60.0, "the longest back-off",
                                 "notification")
SHOP_MAIL_GIVE_UP_S = number("SHOP_MAIL_GIVE_UP_S", 24 * 3600.0,
                             "a mail not sent by then is FAILED", "notification", "86400")
SHOP_MAIL_BREAKER_FAIL_MAX = integer("SHOP_MAIL_BREAKER_FAIL_MAX", 5,
                                     "failures in a row that open the SMTP breaker",
                                     "notification")
SHOP_MAIL_BREAKER_RESET_S = number("SHOP_MAIL_BREAKER_RESET_S", 15.0,
                                   "the SMTP breaker half-opens after", "notification")
SHOP_MAIL_CONCURRENCY = integer("SHOP_MAIL_CONCURRENCY", 4, "SMTP connections at once",
                                "notification")
SHOP_MAIL_BATCH = integer("SHOP_MAIL_BATCH", 32, "mails claimed per round", "notification")

# --- the gateway ------------------------------------------------------------------------------

# Rate limits: `100/second`, ...; set but empty (or `off`) turns one off.
GATEWAY_RATE_LIMIT = text("GATEWAY_RATE_LIMIT", "10000/second",
                          "per user with a valid token", GATEWAY, keep_empty=True)
GATEWAY_ANON_RATE_LIMIT = text("GATEWAY_ANON_RATE_LIMIT", "200/second",
                               "per client address before any token check", GATEWAY,
                               keep_empty=True)
GATEWAY_LOGIN_RATE_LIMIT = text("GATEWAY_LOGIN_RATE_LIMIT", "60/minute",
                                "logins per client address", GATEWAY, keep_empty=True)
GATEWAY_LOGIN_EMAIL_RATE_LIMIT = text("GATEWAY_LOGIN_EMAIL_RATE_LIMIT", "10/minute",
                                      "logins per email", GATEWAY, keep_empty=True)
GATEWAY_TRUSTED_PROXIES = text("GATEWAY_TRUSTED_PROXIES", "", "addresses/CIDRs whose "
                               "`Forwarded`/`X-Forwarded-For` is believed", GATEWAY, "none")
GATEWAY_MAX_BODY_BYTES = integer("GATEWAY_MAX_BODY_BYTES", 64 * 1024,
                                 "a request body's limit (413 past it)", GATEWAY)
GATEWAY_DRAIN_MAX_BYTES = integer("GATEWAY_DRAIN_MAX_BYTES", 16 * 1024 * 1024,
                                  "what is read and dropped of a body answered early",
                                  GATEWAY, "16777216 (16 MiB)")
GATEWAY_DRAIN_TIMEOUT_S = number("GATEWAY_DRAIN_TIMEOUT_S", 10.0,
                                 "how long such a body is read", GATEWAY)
GATEWAY_CALL_TIMEOUT_S = number("GATEWAY_CALL_TIMEOUT_S", 10.0,
                                "one proxied call's budget (CreateOrder's whole saga)",
                                GATEWAY)
GATEWAY_DASHBOARD_TIMEOUT_S = number("GATEWAY_DASHBOARD_TIMEOUT_S", 0.6,
                                     "each dashboard part's deadline", GATEWAY)
GATEWAY_DASHBOARD_BREAKER_FAIL_MAX = integer("GATEWAY_DASHBOARD_BREAKER_FAIL_MAX", 5,
                                             "a dashboard part's breaker opens after",
                                             GATEWAY)
GATEWAY_DASHBOARD_BREAKER_RESET_S = number("GATEWAY_DASHBOARD_BREAKER_RESET_S", 5.0,
                                           "and half-opens after", GATEWAY)
GATEWAY_JWKS_REFETCH_S = number("GATEWAY_JWKS_REFETCH_S", 5.0,
                                "an unknown key id fetches the JWKS at most every", GATEWAY)
GATEWAY_TOKEN_CACHE_TTL_S = number("GATEWAY_TOKEN_CACHE_TTL_S", 30.0,
                                   "a verified token is remembered for", GATEWAY)

# --- make run (ops/run.py: the supervisor reads these itself) -------------------------------

NATS_PORT = integer("NATS_PORT", 4222, "the embedded NATS's port", RUN)
NATS_CLUSTER = integer("NATS_CLUSTER", 1, "3: a clustered JetStream of three nodes", RUN)
NATS_ROUTE_PORT = integer("NATS_ROUTE_PORT", 6222, "the cluster's first route port", RUN)
SCALE = text("SCALE", "", "instances per service (e.g. `payment=2 order=2`)", RUN, "one each")
MAILCATCHER_PORT = integer("MAILCATCHER_PORT", 1025, "the local SMTP catcher's port "
                           "(when `SMTP_URL` is unset)", RUN)
SHOP_START_TIMEOUT_S = number("SHOP_START_TIMEOUT_S", 60.0,
                              "every process must be healthy within", RUN)

# --- make bench (bench/ reads these itself) -------------------------------------------------

BENCH = "make bench"
SHOP_BENCH_SECONDS = number("SHOP_BENCH_SECONDS", 5.0, "each scenario's measured window", BENCH)
SHOP_BENCH_OUT = text("SHOP_BENCH_OUT", "", "where the figures are written", BENCH,
                      "`var/bench/latest.json`")
SHOP_BENCH_URL = text("SHOP_BENCH_URL", "", "a running gateway to measure instead of "
                      "starting one", BENCH, "none")
SHOP_BENCH_LOADER = text("SHOP_BENCH_LOADER", "", "`wrk` or `python`: the HTTP load "
                         "generator", BENCH, "wrk when installed")
SHOP_BENCH_PROFILE = flag("SHOP_BENCH_PROFILE", False, "py-spy flame graphs of the order "
                          "scenario per process, and one order's traced timeline "
                          "(`make bench PROFILE=1`)", BENCH)

VARIABLES: tuple[Var[Any], ...] = tuple(
    v for v in list(globals().values()) if isinstance(v, Var))


def declared(name: str) -> Var[Any] | None:
    """The Var of `name` ("SHOP_MTLS", "ORDER_PORT" for `<SERVICE>_PORT`), or None."""
    for var in VARIABLES:
        if var.name == name:
            return var
    for var in VARIABLES:
        if "<SERVICE>" in var.name:
            head, tail = var.name.split("<SERVICE>")
            if name.startswith(head) and name.endswith(tail):
                middle = name[len(head):len(name) - len(tail)]
                if middle and middle.replace("_", "").isalpha() and middle.isupper():
                    return var
    return None


def read_by(var: Var[Any], process: str) -> bool:
    """Whether `process` (a service's name, or "gateway") reads `var`."""
    if var.read_by == EVERY:
        return True
    if var.read_by == SERVICES:
        return process != GATEWAY
    return process in (part.strip() for part in var.read_by.split(","))


def read_once(process: str) -> None:
    """Check every variable `process` (a service's name, or "gateway") reads, then bind a
    snapshot of the environment for the rest of the current context (the process's main
    task, and every task it starts)."""
    env = dict(os.environ)
    token = _snapshot.set(env)
    try:
        for var in VARIABLES:
            if read_by(var, process):
                var.get(process)
    except ValueError:
        _snapshot.reset(token)
        raise


def snapshot() -> Mapping[str, str]:
    """The environment as the process reads it (children get it, plus their own)."""
    return dict(_environment())
