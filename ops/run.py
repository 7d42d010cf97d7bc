"""`make run`: embedded NATS, the eight services and the gateway, supervised.

Unless SMTP_URL names a real relay, a local mail catcher (ops/mailcatcher.py) runs on
127.0.0.1:MAILCATCHER_PORT (1025) under the same supervisor, and the notification service
delivers its mails there: one .eml file each under <data dir>/mail/.

Everything starts in parallel (NATS too: the services connect to it in the
background) and is waited for together; a child that dies is
restarted with exponential back-off (as Kubernetes would); Ctrl-C or SIGTERM
stops the gateway, then the services, then NATS, and exits 0.
Supervisor lines go to stdout; each process logs to <data dir>/logs/<instance>.log.

DB=postgres (`make run DB=postgres`): the services keep their data in PostgreSQL, one
database each: an embedded server under <data dir>/pg (started first, stopped last), or
the server SHOP_DATABASE_URL names. No SQLite file is opened then.
"""

from __future__ import annotations

import json
import os
import signal
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import FrameType

from ops.mailcatcher import DEFAULT_PORT as DEFAULT_MAIL_PORT
from ops.mailcatcher import CatcherProcess
from ops.natscluster import DEFAULT_ROUTE_PORT, NatsCluster, cluster_size, embedded_nats
from ops.natsd import NatsServer
from ops.otlp import OtlpReceiver
from ops.pgserve import EmbeddedPostgres
from ops.prefork import Prefork
from ops.process import (
    GATEWAY,
    REPO_ROOT,
    ServiceProcess,
    StartError,
    System,
    env_prefix,
    free_port,
    http_ok,
    port_in_use,
    precompile,
    start_system,
    wait_all_ready,
)
from services.common import envvars
from services.common.pki import ensure_pki
from services.common.settings import DEFAULT_PORTS, SERVICES, load_tls_config
from services.common.spiffe import OPERATOR

__all__ = [
    "BACKOFF_CAP_S",
    "BACKOFF_START_S",
    "STABLE_AFTER_S",
    "Supervisor",
    "instances_file",
    "main",
    "parse_scale",
    "resolve_ports",
    "write_instances",
]

BACKOFF_START_S = 0.5
BACKOFF_CAP_S = 10.0
STABLE_AFTER_S = 30.0  # up this long: the next crash starts the back-off afresh
DEFAULT_NATS_PORT = 4222
PKI_CHECK_S = 60.0  # how often certificates past half their life are renewed


def mtls_enabled() -> bool:
    return load_tls_config().enabled


def pki_dir() -> Path:
    return load_tls_config().pki_dir


def _pki_flags() -> str:
    pki = pki_dir()
    if not pki.is_absolute():
        pki = Path(os.path.relpath(pki.resolve()))
    return f"-cacert {pki}/ca.pem -cert {pki}/{OPERATOR}.pem -key {pki}/{OPERATOR}.key"


def prepare_pki() -> list[str]:
    """Create the development CA and certificates (or renew the aging ones), or say
    loudly that everything runs in plaintext. Returns the identities (re)issued."""
    if not mtls_enabled():
        log("WARNING: SHOP_MTLS=off: every gRPC hop and NATS are PLAINTEXT and "
            "unauthenticated, the call policy is not enforced; for experiments only")
        return []
    issued = ensure_pki(pki_dir())
    if issued:
        log(f"certificates issued under {pki_dir()}: {', '.join(issued)}")
    return issued


def log(msg: str) -> None:
    print(f"{time.strftime('%H:%M:%S')} supervisor: {msg}", flush=True)


def registry_enabled() -> bool:
    """SHOP_REGISTRY as every process reads it (`DiscoveryConfig.enabled`)."""
    return envvars.SHOP_REGISTRY.get()


def parse_scale(text: str) -> dict[str, int]:
    """`"payment=2 order=2"` -> {"payment": 2, "order": 2}; commas also separate."""
    scale: dict[str, int] = {}
    for item in text.replace(",", " ").split():
        name, sep, count = item.partition("=")
        if not sep or name not in SERVICES or not count.isdigit() or int(count) < 1:
            raise ValueError(f"SCALE: bad entry {item!r} (want <service>=<n>, n >= 1, "
                             f"service one of {', '.join(SERVICES)})")
        scale[name] = int(count)
    return scale


def resolve_ports(environ: Mapping[str, str]) -> dict[str, int]:
    """Port of each service's first instance and of the gateway: `<NAME>_PORT`,
    else the fixed default; 0 means any free port (picked now, so addresses are
    known before anything starts)."""
    ports: dict[str, int] = {}
    for name in (*SERVICES, GATEWAY):
        raw = environ.get(f"{env_prefix(name)}_PORT", "").strip()
        if raw and not raw.isdigit():
            raise ValueError(f"{env_prefix(name)}_PORT must be a port number, got {raw!r}")
        port = int(raw) if raw else DEFAULT_PORTS[name]
        ports[name] = port or free_port(avoid=set(ports.values()))
    return ports


def instances_file(data_dir: Path) -> Path:
    return data_dir / "run" / "instances.json"


def write_instances(system: System, nats_pid: int | None = None,
                    catcher: CatcherProcess | None = None) -> None:
    """What shopctl reads to find the running instances (until the NATS KV
    registry replaces it). Written atomically, so a reader never sees half."""
    path = instances_file(system.data_dir)
    path.parent.mkdir(parents=True, exist_ok=True)
    doc = {
        "supervisor_pid": os.getpid(),
        "nats_url": system.nats_url,
        "nats_pid": nats_pid,  # None: an external NATS, not ours
        "instances": [
            {"service": p.name, "instance": p.instance, "addr": p.addr, "pid": p.pid,
             "log": str(p.log_path)}
            for p in system.all()
        ],
    }
    if catcher is not None:
        doc["mailcatcher"] = {"addr": catcher.addr, "pid": catcher.pid,
                              "mail_dir": str(catcher.mail_dir)}
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(doc, indent=2))
    tmp.replace(path)


@dataclass
class _Watch:
    """Restart bookkeeping for one process."""

    proc: ServiceProcess
    delay: float = BACKOFF_START_S
    started_at: float = 0.0
    restart_at: float | None = None  # set while waiting out the back-off
    healthy: bool = True


class Supervisor:
    """Restarts a crashed child with back-off: 0.5 s doubling to a 10 s cap,
    reset once it has stayed up 30 s."""

    def __init__(self, system: System, extra: Sequence[ServiceProcess] = ()) -> None:
        self.system = system
        now = time.monotonic()
        self.watches = [_Watch(p, started_at=now) for p in (*system.all(), *extra)]

    def tick(self, now: float) -> bool:
        """One pass over every child; True when a pid changed."""
        changed = False
        for w in self.watches:
            proc = w.proc
            if w.restart_at is not None:
                if now >= w.restart_at:
                    w.restart_at = None
                    proc.restarts += 1
                    proc.start()
                    w.started_at, w.healthy = now, False
                    log(f"restarted {proc.instance} on {proc.addr} "
                        f"(pid {proc.pid}, restart #{proc.restarts})")
                    changed = True
                continue
            code = proc.returncode
            if code is not None:
                why = f"killed by {_signame(-code)}" if code < 0 else f"exit code {code}"
                log(f"{proc.instance} (pid {proc.pid}) died unexpectedly ({why}); "
                    f"restarting in {w.delay:g} s; log: {proc.log_path}")
                w.restart_at = now + w.delay
                w.delay = min(w.delay * 2, BACKOFF_CAP_S)
                continue
            if not w.healthy:
                try:
                    w.healthy = proc.poll_ready(check_timeout=0.2)
                except StartError:
                    continue  # died meanwhile: the next tick schedules the restart
                if w.healthy:
                    log(f"{proc.instance} is healthy again on {proc.addr} (pid {proc.pid})")
            if now - w.started_at >= STABLE_AFTER_S:
                w.delay = BACKOFF_START_S
        return changed


def _signame(num: int) -> str:
    try:
        return signal.Signals(num).name
    except ValueError:
        return f"signal {num}"


READYZ_WAIT_S = 20.0


def wait_gateway_ready(gateway: ServiceProcess, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while not http_ok(f"{gateway.base_url}/readyz", 1.0):
        if time.monotonic() >= deadline:
            log(f"gateway /readyz still not ready after {timeout_s:.0f} s: "
                "some service is unreachable from it (see `curl .../readyz`)")
            return
        # Not faster: each failed probe counts against the gateway's breaker of that service.
        time.sleep(0.5)


def print_table(system: System, nats_url: str, elapsed: float,
                catcher: CatcherProcess | None = None) -> None:
    rows = [("NAME", "INSTANCE", "ADDRESS", "PID", "HEALTH")]
    rows.append(("nats", "nats", nats_url, "", "OK"))
    extra = [catcher] if catcher is not None else []
    for p in (*system.all(), *extra):
        # The status each one's readiness probe saw a moment ago: checking all of them
        # again here would only delay the table.
        rows.append((p.name, p.instance, p.addr, str(p.pid), p.status))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    print()
    for row in rows:
        print("  " + "  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)))
    bindir = Path(sys.executable).parent
    order = system["order"].addr.replace("127.0.0.1", "localhost")
    gw = system.base_url.replace("127.0.0.1", "localhost")
    print(f"\n  all {len(system.all())} processes healthy in {elapsed:.2f} s")
    scaled = [f"{n} x{len(system.instances(n))}" for n in system if len(system.instances(n)) > 1]
    if scaled:
        how = ("spread through the registry" if registry_enabled()
               else "pinned to the first instance (SHOP_REGISTRY=off)")
        print(f"  scaled: {', '.join(scaled)}; calls {how}")
    print(f"  logs: {system.data_dir / 'logs'}/<instance>.log; NATS: {system.data_dir / 'nats'}")
    if catcher is not None:
        print(f"  mail: caught on {catcher.smtp_url}, one .eml per mail in {catcher.mail_dir}/ "
              f"(read them with shopctl mail list)")
    else:
        print("  mail: sent to the relay in SMTP_URL")
    print_web(gw, system.data_dir, started=time.time() - elapsed)
    print("\n  try:")
    if mtls_enabled():
        pki = _pki_flags()
        print(f"    {bindir / 'grpcurl'} {pki} {order} list")
    else:
        print(f"    {bindir / 'grpcurl'} -plaintext {order} list")
    print(f"    curl -s {gw}/api/products")
    print(f"    curl -s {gw}/readyz")
    print(f"    {bindir / 'shopctl'} status")
    if catcher is not None:
        print(f"    {bindir / 'shopctl'} mail list")
    print("\n  Ctrl-C stops everything.\n", flush=True)


# services.user.admin.PASSWORD_FILE, without importing the user service here.
ADMIN_PASSWORD_FILE = "admin-password"


def print_web(gw: str, data_dir: Path, *, started: float) -> None:
    """Where the storefront and the console are, and the admin's password: shown once,
    when the user service made it during this start; after that, where it is kept."""
    print(f"  storefront: {gw}/")
    print(f"  console:    {gw}/console  (admin@shop.local)")
    path = data_dir / ADMIN_PASSWORD_FILE
    if os.environ.get("SHOP_ADMIN_PASSWORD"):
        print("  admin password: from SHOP_ADMIN_PASSWORD (as set on the first start)")
    elif path.exists() and path.stat().st_mtime >= started - 1.0:
        print(f"  admin password: {path.read_text().strip()}  (shown once; kept in {path})")
    else:
        print(f"  admin password: in {path}")


class _Stop(Exception):
    """Raised by the signal handler while starting, to abort the start-up."""


def _tracing_elsewhere() -> bool:
    if os.environ.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        return True
    return any(os.environ.get(n, "").strip() for n in ("OTEL_EXPORTER_OTLP_ENDPOINT",
                                                     "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"))


def main() -> int:
    data_dir = Path(os.environ.get("SHOP_DATA_DIR") or "var").resolve()
    try:
        scale = parse_scale(os.environ.get("SCALE", ""))
        ports = resolve_ports(os.environ)
        nats_port = int(os.environ.get("NATS_PORT") or DEFAULT_NATS_PORT) or free_port(
            avoid=set(ports.values()))
        nats_nodes = cluster_size(os.environ.get("NATS_CLUSTER", ""))
        route_port = int(os.environ.get("NATS_ROUTE_PORT") or DEFAULT_ROUTE_PORT)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    backend = (os.environ.get("DB") or "sqlite").strip().lower()
    if backend not in ("sqlite", "postgres"):
        print(f"error: DB must be sqlite or postgres, got {backend!r}", file=sys.stderr)
        return 2
    external_nats = os.environ.get("NATS_URL", "").strip()
    wanted = dict(ports)
    if not external_nats:
        for i in range(nats_nodes):
            wanted[f"nats-{i + 1}" if nats_nodes > 1 else "nats"] = nats_port + i
            if nats_nodes > 1:
                wanted[f"nats-{i + 1} routes"] = route_port + i
    catcher: CatcherProcess | None = None
    if not os.environ.get("SMTP_URL", "").strip():  # no real relay named: catch locally
        try:
            mail_port = int(os.environ.get("MAILCATCHER_PORT") or DEFAULT_MAIL_PORT)
        except ValueError:
            print("error: MAILCATCHER_PORT must be a port number", file=sys.stderr)
            return 2
        catcher = CatcherProcess(data_dir=data_dir, port=mail_port)
        wanted["mailcatcher"] = catcher.port
    taken = [f"{port} ({name})" for name, port in wanted.items() if port_in_use(port)]
    if taken:
        print(f"error: port already in use: {', '.join(taken)}; is shop already running? "
              "Stop it, or choose other ports with <SERVICE>_PORT / GATEWAY_PORT / NATS_PORT / "
              "MAILCATCHER_PORT.",
              file=sys.stderr)
        return 1

    # The services' shared imports run once, in this parent, while the PKI, NATS and
    # the rest start; each service is then forked from it (ops.prefork).
    prefork = Prefork(data_dir / "logs" / "prefork.log", REPO_ROOT).start()
    try:
        os.environ.setdefault("SHOP_DATA_DIR", str(data_dir))  # pki_dir() for us and children
        prepare_pki()
    except (OSError, ValueError) as exc:
        prefork.close()
        print(f"error: cannot prepare the PKI: {exc}", file=sys.stderr)
        return 1

    stopping = False
    starting = True

    def on_signal(signum: int, _frame: FrameType | None) -> None:
        nonlocal stopping
        stopping = True
        if starting:
            raise _Stop

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)

    nats: NatsServer | NatsCluster | None = None
    pg: EmbeddedPostgres | None = None
    system: System | None = None
    # No collector named: spans go to a local receiver that keeps them for shopctl trace.
    traces = None if _tracing_elsewhere() else OtlpReceiver(data_dir / "traces" / "spans.jsonl")
    t0 = time.monotonic()
    try:
        db_env: dict[str, str] = {}
        if backend == "postgres":
            server_url = os.environ.get("SHOP_DATABASE_URL", "").strip()
            if server_url:
                log("using the PostgreSQL server of SHOP_DATABASE_URL")
            else:
                pg = EmbeddedPostgres(data_dir / "pg").start()
                server_url = pg.server_url
                log(f"PostgreSQL up under {pg.data_dir} (pid {pg.pid}) "
                    f"in {time.monotonic() - t0:.2f} s")
            db_env["SHOP_DATABASE_URL"] = server_url
        # NATS first (a Go binary, ready in a fraction of the services' start), but
        # not waited for before spawning them: their NATS links connect in the
        # background and retry, so NATS becomes ready while they import.
        if external_nats:
            nats_url = external_nats
            log(f"using external NATS at {nats_url}")
        else:
            log(f"starting NATS (JetStream) on port {nats_port}")
            nats = embedded_nats(data_dir / "nats", port=nats_port, nodes=nats_nodes,
                                 route_port=route_port).spawn()
            nats_url = nats.url
        precompile()
        log("starting the services and the gateway; waiting until each reports healthy")
        timeout = float(os.environ.get("SHOP_START_TIMEOUT_S") or 60)
        mail_env = {}
        if traces is not None:
            mail_env["OTEL_EXPORTER_OTLP_ENDPOINT"] = traces.start().endpoint
            mail_env["OTEL_EXPORTER_OTLP_PROTOCOL"] = "http/protobuf"
            log(f"traces kept in {traces.store} (shopctl trace ORDER_ID)")
        if catcher is not None:
            catcher.start()
            mail_env["SMTP_URL"] = catcher.smtp_url
        # The processes register in NATS (unless SHOP_REGISTRY=off): a scaled service
        # is then found through the registry, not pinned to its first instance.
        system = start_system(data_dir, nats_url, ports=ports, scale=scale,
                              with_gateway=True, ready_timeout=timeout, wait=False,
                              discovery=registry_enabled(), env={**mail_env, **db_env},
                              forker=prefork)
        if nats is not None:
            nats.wait_ready()
            what = (f"cluster of {nats_nodes} (pids {' '.join(map(str, nats.pids))})"
                    if isinstance(nats, NatsCluster) else f"(pid {nats.pid})")
            log(f"NATS (JetStream) up on {nats_url} {what} "
                f"in {time.monotonic() - t0:.2f} s")
        extra = [catcher] if catcher is not None else []
        wait_all_ready([*system.all(), *extra], max(1.0, timeout - (time.monotonic() - t0)))
        if system.gateway is not None:
            # The gateway dialled services that were still starting: "healthy" waits until
            # its /readyz reaches every one, so a first request finds its channels connected.
            wait_gateway_ready(system.gateway, READYZ_WAIT_S)
        starting = False
        nats_pid = nats.pid if nats is not None else None
        write_instances(system, nats_pid, catcher)
        print_table(system, nats_url, time.monotonic() - t0, catcher)
        supervisor = Supervisor(system, extra)
        pki_check = time.monotonic() + PKI_CHECK_S
        while not stopping:
            now = time.monotonic()
            if supervisor.tick(now):
                write_instances(system, nats_pid, catcher)
            if now >= pki_check:
                pki_check = now + PKI_CHECK_S
                # The processes pick renewed files up themselves; nats-server on SIGHUP.
                if prepare_pki() and nats is not None:
                    nats.reload()
            if isinstance(nats, NatsCluster):
                for name in nats.revive(time.monotonic()):
                    log(f"NATS node {name} died; started it again on its store")
            time.sleep(0.1)
        log("stopping: gateway, services, then NATS, the mail catcher"
            + (" and PostgreSQL" if pg else ""))
        return 0
    except _Stop:
        log("interrupted while starting; stopping what was started")
        return 0
    except (StartError, OSError, TimeoutError, RuntimeError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    finally:
        starting = False  # a second Ctrl-C now must not abort the clean-up
        if system is not None:
            for name in system.stop():
                log(f"{name} did not stop within its grace period; killed it (see its log)")
            instances_file(data_dir).unlink(missing_ok=True)
        prefork.close()
        if nats is not None:
            nats.stop()
        if catcher is not None:
            catcher.terminate()
        if traces is not None and traces.started:
            traces.stop()
        if pg is not None:
            pg.stop()
        log("stopped")


if __name__ == "__main__":
    sys.exit(main())
