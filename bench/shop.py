"""Shop itself under load: start (or attach to) a system, prepare a user, measure.

With SHOP_BENCH_URL set, the running system at that URL is measured instead of a
fresh one; its inventory address comes from INVENTORY_ADDR, else the instances file
`make run` writes under SHOP_DATA_DIR, else the default port, and its processes (for
RSS) from that instances file.
"""

from __future__ import annotations

import json
import os
import threading
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from shop.inventory.v1 import inventory_pb2, inventory_pb2_grpc

from bench import mesh
from bench.procs import rss_kb
from ops.natsd import NatsServer
from ops.otlp import OtlpReceiver
from ops.process import System, start_system
from services.common.settings import DEFAULT_PORTS
from services.common.spiffe import BACKOFFICE

__all__ = ["BENCH_ENV", "PRODUCT_ID", "RssSampler", "ShopTarget", "attach_shop", "start_shop"]

PRODUCT_ID = "espresso-machine"
BENCH_STOCK = 1_000_000_000
# The gateway must never throttle the bench.
BENCH_ENV = {"GATEWAY_RATE_LIMIT": "1000000/second"}
# Traces as a deployment keeps them: a 10 % parent-based ratio (the gateway's root span
# decides for the whole order), exported over OTLP/HTTP to a local receiver that only
# counts them (a collector's work is not shop's).
TRACE_RATIO = 0.1


def sampling_env() -> dict[str, str]:
    """The bench's sampler: parent-based, TRACE_RATIO of the roots."""
    return {"OTEL_TRACES_SAMPLER": "parentbased_traceidratio",
            "OTEL_TRACES_SAMPLER_ARG": str(TRACE_RATIO)}


def tracing_env(endpoint: str) -> dict[str, str]:
    return {"OTEL_EXPORTER_OTLP_ENDPOINT": endpoint,
            "OTEL_EXPORTER_OTLP_PROTOCOL": "http/protobuf", **sampling_env()}
_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))


@dataclass
class ShopTarget:
    base_url: str
    inventory_addr: str
    pids: dict[str, int] = field(default_factory=dict)
    stop: Callable[[], None] = lambda: None
    # Service instance -> its /metrics URL (none when attached: the counts are optional).
    metrics: dict[str, str] = field(default_factory=dict)
    token: str = ""
    # Text a fully healthy dashboard answer contains (not degraded).
    dashboard_ok: str = ""
    # What the set-up ran into (reported with the results: owners may want to know).
    notes: list[str] = field(default_factory=list)

    @property
    def auth(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"}


def start_shop(data_dir: Path, *, timeout_s: float = 60.0,
               env: dict[str, str] | None = None) -> ShopTarget:
    """NATS plus every service and the gateway on free ports under `data_dir`; `env` is
    given to every process (e.g. SHOP_DATABASE_URL: the services on PostgreSQL)."""
    mesh.prepare_pki(data_dir)
    traces = OtlpReceiver(keep=False).start()
    nats = NatsServer(data_dir / "nats").start()
    try:
        system = start_system(data_dir, nats.url, with_gateway=True,
                              env={**BENCH_ENV, **tracing_env(traces.endpoint), **(env or {})},
                              ready_timeout=timeout_s)
    except BaseException:
        nats.stop()
        traces.stop()
        raise

    def stop() -> None:
        try:
            system.stop()
        finally:
            nats.stop()
            traces.stop()

    pids = _system_pids(system)
    pids["nats"] = nats.pid
    metrics = {p.instance: p.metrics_url for p in system.all()
               if not p.is_gateway and p.metrics_url}
    return ShopTarget(system.base_url, system.addr("inventory"), pids, stop, metrics, notes=[
        f"traces: {TRACE_RATIO:.0%} of requests sampled (parent-based ratio) and exported "
        "over OTLP/HTTP to a local receiver, mTLS on every hop, as a deployment runs"])


def _system_pids(system: System) -> dict[str, int]:
    return {p.instance: p.pid for p in system.all() if p.pid is not None}


def attach_shop(base_url: str) -> ShopTarget:
    data_dir = Path(os.environ.get("SHOP_DATA_DIR") or "var")
    pids: dict[str, int] = {}
    inventory = os.environ.get("INVENTORY_ADDR", "")
    try:
        doc = json.loads((data_dir / "run" / "instances.json").read_text())
        for inst in doc.get("instances", []):
            pids[str(inst["instance"])] = int(inst["pid"])
            if not inventory and inst.get("service") == "inventory":
                inventory = str(inst["addr"])
    except (OSError, ValueError, KeyError, TypeError):
        pass
    nats = _find_nats(data_dir)
    if nats:
        pids["nats"] = nats
    return ShopTarget(base_url.rstrip("/"),
                      inventory or f"127.0.0.1:{DEFAULT_PORTS['inventory']}", pids)


def _find_nats(data_dir: Path) -> int | None:
    conf = str((data_dir / "nats" / "nats.conf").resolve())
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmd = (entry / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if cmd and cmd[0].endswith(b"nats-server") and conf.encode() in cmd:
            return int(entry.name)
    return None


def _http(method: str, url: str, body: dict[str, Any] | None = None,
          headers: dict[str, str] | None = None) -> tuple[int, bytes]:
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(url, data=data, method=method, headers={
        "Content-Type": "application/json", **(headers or {})})
    try:
        with _OPENER.open(req, timeout=15.0) as resp:
            return int(resp.status), bytes(resp.read())
    except urllib.error.HTTPError as e:
        return int(e.code), bytes(e.read())


# A breaker opened by start-up races resets after 30 s (the default reset timeout).
_SETTLE_S = 40.0


def _http_settled(target: ShopTarget, method: str, path: str,
                  body: dict[str, Any] | None = None, headers: dict[str, str] | None = None
                  ) -> tuple[int, bytes]:
    """`_http`, retried (1 s apart, so as not to feed an open breaker) while a
    just-started system still answers 503."""
    t0 = time.monotonic()
    refused = False
    while True:
        status, data = _http(method, f"{target.base_url}{path}", body, headers)
        waited = time.monotonic() - t0
        if status != 503 or waited > _SETTLE_S:
            if refused:
                target.notes.append(f"{method} {path} answered 503 for {waited:.1f} s after "
                                    f"the system was ready: {data[:160]!r}")
            return status, data
        refused = True
        time.sleep(1.0)


def wait_ready(target: ShopTarget, before: str = "the set-up") -> None:
    """Until GET /readyz is 200 (every downstream reachable, no breaker open);
    `ops.process` only waits for the gateway's liveness."""
    t0 = time.monotonic()
    status, body = 0, b""
    status_seen = ""
    while time.monotonic() - t0 < _SETTLE_S:
        status, body = _http("GET", f"{target.base_url}/readyz")
        if status != 200 and not status_seen:
            status_seen = f"{status} {body[:200].decode(errors='replace')}"
        if status == 200:
            waited = time.monotonic() - t0
            if waited > 1.0:
                target.notes.append(f"before {before}: waited {waited:.1f} s for /readyz "
                                    f"(was {status_seen or status})")
            return
        time.sleep(0.5)
    raise RuntimeError(f"/readyz not 200 within {_SETTLE_S:g} s: {status} {body[:300]!r}")


def prepare(target: ShopTarget, *, orders: int = 5) -> None:
    """A user with a token, stock that cannot run out, and a few orders for the dashboard."""
    wait_ready(target)
    email = f"bench-{uuid.uuid4().hex[:12]}@example.com"
    password = "bench-password-1"
    status, body = _http_settled(target, "POST", "/api/users",
                                 {"email": email, "name": "Bench", "password": password})
    if status != 201:
        raise RuntimeError(f"create user: {status} {body[:300]!r}")
    status, body = _http_settled(target, "POST", "/api/auth/login",
                                 {"email": email, "password": password})
    if status != 200:
        raise RuntimeError(f"login: {status} {body[:300]!r}")
    target.token = json.loads(body)["accessToken"]
    with mesh.sync_channel(target.inventory_addr, "inventory", BACKOFFICE,
                           [("grpc.enable_http_proxy", 0)]) as channel:
        inventory_pb2_grpc.InventoryServiceStub(channel).SetStock(
            inventory_pb2.SetStockRequest(product_id=PRODUCT_ID, available=BENCH_STOCK),
            timeout=10.0)
    for _ in range(orders):
        status, body = _http_settled(target, "POST", "/api/orders", order_body(), target.auth)
        if status != 201:
            raise RuntimeError(f"order: {status} {body[:300]!r}")
    status, body = _http("GET", f"{target.base_url}/api/dashboard", headers=target.auth)
    if status != 200:
        raise RuntimeError(f"dashboard: {status} {body[:300]!r}")
    text = body.decode()
    target.dashboard_ok = next((t for t in ('"degraded":[]', '"degraded": []') if t in text), "")
    if not target.dashboard_ok:
        raise RuntimeError(f"dashboard degraded while idle: {text[:300]}")


def order_body() -> dict[str, Any]:
    return {"items": [{"productId": PRODUCT_ID, "quantity": 1}], "cardToken": "tok_visa"}


def pss_kb(pid: int) -> int | None:
    """Proportional set size (shared pages split between their users), kB."""
    try:
        for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
            if line.startswith("Pss:"):
                return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        return None
    return None


def rss_snapshot(pids: dict[str, int]) -> dict[str, float]:
    out: dict[str, float] = {}
    for name, pid in pids.items():
        kb = rss_kb(pid)
        if kb is not None:
            out[name] = round(kb / 1024, 1)
    return out


class RssSampler:
    """Peak RSS of each process, sampled from /proc in a thread while load runs."""

    def __init__(self, pids: dict[str, int], every_s: float = 0.25) -> None:
        self.pids = pids
        self.every_s = every_s
        self.peak: dict[str, float] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="rss-sampler", daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            for name, mb in rss_snapshot(self.pids).items():
                self.peak[name] = max(mb, self.peak.get(name, 0.0))
            self._stop.wait(self.every_s)

    def __enter__(self) -> RssSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(5.0)


def wait_quiet(seconds: float) -> None:
    """Let background work (event consumers after a load) settle before the next figure."""
    time.sleep(seconds)
