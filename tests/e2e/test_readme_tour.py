"""The README's "Tour" runs for real: every command of it, against a live system.

Convention (also noted in an HTML comment inside the section): every fenced
block opened with ```sh between the "## Tour" heading and the next "## "
heading is a runnable part of the tour; sample outputs live in ```text blocks
and are not run. Blocks run in README order, each as one bash script under
`set -euo pipefail`, from the repository root. Shell variables carry over from
block to block (as in the one terminal a reader uses): after a block succeeds,
the variables it set are saved with `declare -p` and sourced by the next block.

Only addresses and the PKI change: `var/pki/` becomes the test session's PKI
directory, `localhost:8080` becomes the test gateway's host:port and
`localhost:5005N` the address of the service whose default port that is (an
address the test cannot map fails the test, so nothing ever dials a fixed
port). `shopctl` finds the test system through NATS_URL, SHOP_DATA_DIR and
<SERVICE>_ADDR / GATEWAY_ADDR.

Each block must exit 0, and the key outputs of each step must appear (the
order CONFIRMED, the dashboard with recentOrders, the declined order CANCELLED
with its stock released, the saga timelines, ...). A step that disappears from
the README fails the test as well, so it cannot rot silently.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shlex
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from ops.natsd import NatsServer
from ops.otlp import OtlpReceiver
from ops.process import GATEWAY, REPO_ROOT, ServiceProcess, System, env_prefix, start_system
from services.common.settings import DEFAULT_PORTS, SERVICES
from tests.fixtures_services import START_TIMEOUT_S, TEST_ENV
from tests.support.mesh import pki as pki_dir

README = REPO_ROOT / "README.md"
OPERATOR_FLAGS = "-cacert var/pki/ca.pem -cert var/pki/operator.pem -key var/pki/operator.key"
BLOCK_TIMEOUT_S = 60.0
SETTLE_TIMEOUT_S = 30.0

_FENCE = re.compile(r"^```(\S*)\s*$")
_ADDR = re.compile(r"\b(localhost|127\.0\.0\.1):(\d{2,5})\b")
_PROXY_VARS = {"http_proxy", "https_proxy", "all_proxy", "grpc_proxy"}


# --- reading the README ----------------------------------------------------------


def tour_section(text: str) -> str:
    lines = text.splitlines()
    try:
        start = next(i for i, line in enumerate(lines) if line.strip() == "## Tour")
    except StopIteration:
        pytest.fail("README.md has no '## Tour' section")
    end = next((i for i in range(start + 1, len(lines)) if lines[i].startswith("## ")),
               len(lines))
    return "\n".join(lines[start + 1:end])


def sh_blocks(section: str) -> list[str]:
    """The bodies of the ```sh fences, in order."""
    blocks: list[str] = []
    current: list[str] | None = None
    is_sh = False
    for line in section.splitlines():
        fence = _FENCE.match(line.strip())
        if fence and current is None:
            current, is_sh = [], fence.group(1) == "sh"
        elif line.strip() == "```" and current is not None:
            if is_sh:
                blocks.append("\n".join(current))
            current = None
        elif current is not None:
            current.append(line)
    assert current is None, "an unclosed ``` fence in the README tour"
    return blocks


def rewrite_pki(block: str, pki: Path) -> str:
    """`var/pki/` (where `make run` keeps it) becomes the test session's PKI."""
    return block.replace("var/pki/", f"{pki}/")


def rewrite_addresses(block: str, by_port: dict[int, str]) -> str:
    def sub(match: re.Match[str]) -> str:
        port = int(match.group(2))
        if port not in by_port:
            pytest.fail(f"the tour dials {match.group(0)}, which the test cannot map "
                        f"to its own system (known: {sorted(by_port)})")
        return by_port[port]
    return _ADDR.sub(sub, block)


# --- running blocks as one shell session -----------------------------------------


@dataclass
class Ran:
    source: str  # the block as written in the README
    output: str  # stdout + stderr

    def json_lines(self) -> list[Any]:
        """Every output line that is a JSON value (curl answers are one line each)."""
        found: list[Any] = []
        for line in self.output.splitlines():
            line = line.strip()
            if line.startswith(("{", "[")):
                with contextlib.suppress(ValueError):
                    found.append(json.loads(line))
        return found

    def find(self, pred: Callable[[dict[str, Any]], bool], what: str) -> dict[str, Any]:
        for obj in self.json_lines():
            if isinstance(obj, dict) and pred(obj):
                return obj
        pytest.fail(f"no {what} in the output of\n{self.source}\n--- output ---\n{self.output}")


class Session:
    """Runs blocks one after the other, carrying their shell variables over."""

    def __init__(self, workdir: Path, env: dict[str, str]) -> None:
        self.state = workdir / "tour-state.sh"
        self.state.write_text("")
        self.script = workdir / "tour-block.sh"
        self.env = env

    def run(self, source: str, runnable: str) -> Ran:
        state = shlex.quote(str(self.state))
        # The baseline is bash's own variables, taken before anything is sourced,
        # so everything the tour ever set is saved again after each block.
        self.script.write_text(
            "set -euo pipefail\n"
            "__tour_base=\" $(compgen -v | tr '\\n' ' ') \"\n"
            f"source {state}\n"
            f"{runnable}\n"
            "for __tour_v in $(compgen -v); do\n"
            "  case \"$__tour_base\" in *\" $__tour_v \"*) continue;; esac\n"
            "  case \"$__tour_v\" in __tour_*|BASH*|_) continue;; esac\n"
            "  declare -p \"$__tour_v\"\n"
            f"done > {state}.new\n"
            f"mv {state}.new {state}\n")
        try:
            proc = subprocess.run(
                ["bash", str(self.script)], cwd=REPO_ROOT, env=self.env,
                stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                text=True, timeout=BLOCK_TIMEOUT_S)
        except subprocess.TimeoutExpired as exc:
            pytest.fail(f"README tour block timed out after {BLOCK_TIMEOUT_S:.0f}s:\n"
                        f"{source}\n--- output so far ---\n{exc.output}")
        if proc.returncode != 0:
            pytest.fail(f"README tour block exited {proc.returncode}:\n{source}\n"
                        f"--- as run ---\n{runnable}\n--- output ---\n{proc.stdout}")
        return Ran(source, proc.stdout)

    def var(self, name: str) -> str:
        proc = subprocess.run(
            ["bash", "-c", f'source {shlex.quote(str(self.state))}; printf %s "${{{name}:-}}"'],
            env=self.env, capture_output=True, text=True, check=True)
        return proc.stdout


# --- the live system ---------------------------------------------------------------


@dataclass
class Traced:
    """A data dir whose spans land where `make run` keeps them (traces/spans.jsonl), so
    the tour's `shopctl trace` finds them, and the environment that sends them there."""

    root: Path
    env: dict[str, str]


@pytest.fixture(scope="module")
def traced(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Traced]:
    root = tmp_path_factory.mktemp("system")
    receiver = OtlpReceiver(root / "traces" / "spans.jsonl").start()
    try:
        yield Traced(root, {"OTEL_EXPORTER_OTLP_ENDPOINT": receiver.endpoint,
                            "OTEL_EXPORTER_OTLP_PROTOCOL": "http/protobuf",
                            "OTEL_BSP_SCHEDULE_DELAY": "100"})
    finally:
        receiver.stop()


@pytest.fixture(scope="module")
def system(nats_server: NatsServer, traced: Traced,
           module_db_env: dict[str, str]) -> Iterator[System]:
    """All eight services, once on SQLite and once on PostgreSQL: the tour runs on both."""
    sysm = start_system(traced.root, nats_server.url,
                        env={**TEST_ENV, **module_db_env, **traced.env},
                        ready_timeout=START_TIMEOUT_S)
    try:
        yield sysm
    finally:
        sysm.stop()


@pytest.fixture(scope="module")
def gateway(system: System, traced: Traced) -> Iterator[ServiceProcess]:
    """The gateway in front of `system`, its spans sent with the services' ones."""
    proc = ServiceProcess(GATEWAY, data_dir=system.data_dir, nats_url=system.nats_url,
                          env={**TEST_ENV, **system.addr_env(), **traced.env})
    try:
        proc.start().wait_ready(START_TIMEOUT_S)
        yield proc
    finally:
        proc.terminate()


def tour_env(system: System, gateway: ServiceProcess, workdir: Path) -> dict[str, str]:
    drop = {f"{env_prefix(n)}_{s}" for n in (*SERVICES, "gateway") for s in ("ADDR", "PORT")}
    env = {k: v for k, v in os.environ.items()
           if k not in drop and k.lower() not in _PROXY_VARS}
    env.update(system.addr_env())
    env.update(
        NATS_URL=system.nats_url,
        SHOP_DATA_DIR=str(system.data_dir),
        GATEWAY_ADDR=f"{gateway.host}:{gateway.port}",
        HOME=str(workdir),  # nothing of the reader's shell config leaks in
    )
    return env


def get_json(url: str, token: str) -> tuple[int, Any]:
    req = urllib.request.Request(url, headers={"Authorization": f"Bearer {token}"})
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    try:
        with opener.open(req, timeout=5) as resp:
            return int(resp.status), json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        return exc.code, None


def settle_order(base_url: str, token: str, order_id: str) -> None:
    """What a reader's few seconds between commands give the event consumers:
    the order shipped, its shipment there, all four notifications written."""
    deadline = time.monotonic() + SETTLE_TIMEOUT_S
    want = {"NOTIFICATION_KIND_WELCOME", "NOTIFICATION_KIND_RECEIPT",
            "NOTIFICATION_KIND_ORDER_CONFIRMED", "NOTIFICATION_KIND_SHIPPED"}
    last: Any = None
    while time.monotonic() < deadline:
        _, order = get_json(f"{base_url}/api/orders/{order_id}", token)
        code, _ = get_json(f"{base_url}/api/orders/{order_id}/shipment", token)
        _, notes = get_json(f"{base_url}/api/notifications?unread=true", token)
        kinds = {n["kind"] for n in (notes or {}).get("notifications", [])}
        last = (order, code, kinds)
        if order and order["status"] == "ORDER_STATUS_SHIPPED" and code == 200 \
                and want <= kinds:
            return
        time.sleep(0.1)
    pytest.fail(f"order {order_id} did not settle (shipped, shipment, notifications) "
                f"within {SETTLE_TIMEOUT_S:.0f}s: {last}")


# --- the test ------------------------------------------------------------------------


def block_with(ran: list[Ran], marker: str) -> Ran:
    for r in ran:
        if marker in r.source:
            return r
    pytest.fail(f"the README tour lost a step: no ```sh block contains {marker!r}")


def test_readme_tour(system: System, gateway: ServiceProcess, tmp_path: Path) -> None:
    blocks = sh_blocks(tour_section(README.read_text()))
    assert blocks, "the README tour has no ```sh blocks"

    gw = f"{gateway.host}:{gateway.port}"
    by_port = {DEFAULT_PORTS[name]: system.addr(name) for name in SERVICES}
    by_port[DEFAULT_PORTS["gateway"]] = gw
    session = Session(tmp_path, tour_env(system, gateway, tmp_path))

    ran: list[Ran] = []
    settled = False
    for block in blocks:
        runnable = rewrite_pki(rewrite_addresses(block, by_port), pki_dir())
        assert "localhost:" not in runnable, runnable
        ran.append(session.run(block, runnable))
        order_id = session.var("ORDER_ID")
        if order_id and not settled:
            settle_order(gateway.base_url, session.var("TOKEN"), order_id)
            settled = True

    # Nothing but the declined order answers with an error body.
    for r in ran:
        if "tok_chargeDeclined" not in r.source:
            assert '{"error":' not in r.output, f"{r.source}\n--- output ---\n{r.output}"

    token, order_id, declined_id = (session.var(n) for n in ("TOKEN", "ORDER_ID", "DECLINED_ID"))
    assert token.count(".") == 2, f"TOKEN is not a JWT: {token!r}"
    assert order_id and declined_id and order_id != declined_id, (order_id, declined_id)

    # gRPC with grpcurl
    out = block_with(ran, f"grpcurl {OPERATOR_FLAGS} localhost:50054 list").output
    assert "shop.order.v1.OrderService" in out and "grpc.health.v1.Health" in out, out
    out = block_with(ran, "describe shop.order.v1.OrderService").output
    assert "rpc CreateOrder" in out and 'post:"/api/orders"' in out, out
    out = block_with(ran, "grpc.health.v1.Health/Check").output
    assert '"status": "SERVING"' in out, out
    # The operator may look, not call: the policy refuses it GetProduct.
    out = block_with(ran, "ProductService/GetProduct").output
    assert "Code: PermissionDenied" in out, out
    assert "caller 'operator' may not call /shop.product.v1.ProductService/GetProduct" in out
    assert '"price_cents"' not in out, out

    # register and log in
    r = block_with(ran, "http://localhost:8080/api/users")
    user = r.find(lambda o: o.get("email") == "ada@example.com", "created user")
    assert user["id"] and user["createTime"], user
    r = block_with(ran, "/api/auth/login")
    r.find(lambda o: o.get("alg") == "EdDSA" and bool(o.get("kid")), "EdDSA token header")

    # browse
    r = block_with(ran, "/api/products?pageSize=3")
    r.find(lambda o: len(o.get("products", [])) == 3 and bool(o.get("nextPageToken")),
           "page of 3 products")
    r = block_with(ran, "/api/products/espresso-machine")
    r.find(lambda o: o.get("id") == "espresso-machine" and o.get("priceCents") == "24900",
           "espresso-machine product")
    r = block_with(ran, "/api/inventory/espresso-machine")
    r.find(lambda o: o.get("productId") == "espresso-machine" and o.get("available") == 50,
           "espresso-machine stock")

    # cart and order
    r = block_with(ran, "/api/cart/items")
    r.find(lambda o: o.get("totalCents") == "42700" and len(o.get("items", [])) == 2, "cart")
    r = block_with(ran, '"cardToken":"tok_visa"')
    order = r.find(lambda o: o.get("id") == order_id, "created order")
    assert order["status"] == "ORDER_STATUS_CONFIRMED", order
    assert order["totalCents"] == "42700" and order["fromCart"] is True, order

    # what the events did
    r = block_with(ran, "/api/orders/$ORDER_ID/shipment")
    listed = r.find(lambda o: "orders" in o, "order list")
    assert listed["orders"][0]["id"] == order_id, listed
    assert listed["orders"][0]["status"] == "ORDER_STATUS_SHIPPED", listed
    shipment = r.find(lambda o: o.get("orderId") == order_id, "shipment")
    assert shipment["trackingNumber"], shipment
    for kind in ("WELCOME", "RECEIPT", "ORDER_CONFIRMED", "SHIPPED"):
        assert f"NOTIFICATION_KIND_{kind} |" in r.output, r.output
    r = block_with(ran, "/api/dashboard")
    dash = r.find(lambda o: "recentOrders" in o, "dashboard")
    assert dash["user"]["email"] == "ada@example.com", dash
    assert [o["id"] for o in dash["recentOrders"]] == [order_id], dash
    assert dash["unreadNotifications"] >= 4 and dash["degraded"] == [], dash

    # the declined card
    r = block_with(ran, "tok_chargeDeclined")
    err = r.find(lambda o: "error" in o, "error body")["error"]
    assert err["code"] == 400 and err["status"] == "FAILED_PRECONDITION", err
    assert "declined" in err["message"], err
    assert "\n400\n" in f"\n{r.output}", r.output
    r.find(lambda o: o.get("productId") == "headphones" and o.get("available") == 30
           and o.get("reserved") == 0, "headphones stock, released")
    _, declined = get_json(f"{gateway.base_url}/api/orders/{declined_id}", token)
    assert declined["status"] == "ORDER_STATUS_CANCELLED", declined

    # shopctl
    out = block_with(ran, "shopctl status").output
    for name in (*SERVICES, "gateway"):
        assert re.search(rf"^{name}\s+\S+\s+\S+\s+SERVING\b", out, re.M), out
    tree = block_with(ran, "shopctl trace $ORDER_ID").output
    for part in ("POST /api/orders", "saga reserve_stock", "saga charge",
                 "process order.confirmed  [shop-shipping consumer]"):
        assert part in tree, tree
    out = block_with(ran, "shopctl saga $ORDER_ID").output
    assert f"order {order_id}: ORDER_STATUS_SHIPPED" in out, out
    assert re.search(r"reserve_stock\s+succeeded.*\n.*charge\s+succeeded.*\n.*confirm\s+succeeded",
                     out), out
    assert f"order {declined_id}: ORDER_STATUS_CANCELLED" in out, out
    assert re.search(r"charge\s+refused\s+1\s+card declined.*\n.*release_stock\s+succeeded",
                     out), out
    out = block_with(ran, "shopctl dlq list").output
    assert "no dead letters" in out, out

    # the stock ledger: a past level, a history page, a clean verify
    r = block_with(ran, "shopctl inventory rebuild --verify")
    r.find(lambda o: o.get("productId") == "headphones" and "available" in o,
           "headphones stock as of a time")
    page = r.find(lambda o: "events" in o, "a page of headphones' history")
    versions = [int(e["version"]) for e in page["events"]]
    assert len(versions) == 2 and versions[0] > versions[1] and page["nextPageToken"], page
    assert r.output.rstrip().endswith("no difference"), r.output

    # the API description
    out = block_with(ran, "/openapi.json").output
    assert re.search(r"^shop REST API - \d+ paths$", out, re.M), out
    assert "/docs: 200 text/html" in out, out
