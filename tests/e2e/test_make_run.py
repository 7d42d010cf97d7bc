"""`make run` smoke tests: `python -m ops.run` as a real subprocess, every port free
(never the fixed ones), its own data dir; the real services, NATS and gateway."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from ops.process import REPO_ROOT, free_port, grpc_health, http_ok
from services.common.settings import SERVICES

START_TIMEOUT_S = 90.0


def pid_gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    # A zombie (already dead, not yet reaped by init) counts as gone.
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0] == "Z"
    except OSError:
        return True


class ShopRun:
    """One `python -m ops.run`, its stdout collected line by line."""

    def __init__(self, data_dir: Path, extra_env: dict[str, str] | None = None) -> None:
        self.data_dir = data_dir
        self.ports = {name: free_port() for name in (*SERVICES, "gateway", "nats",
                                                    "mailcatcher")}
        env = {k: v for k, v in os.environ.items() if k not in ("NATS_URL", "SCALE")}
        env.update({f"{n.upper()}_PORT": str(p) for n, p in self.ports.items()})
        # Free ports for /metrics too: gRPC port + 1000 could be a port another test picked.
        env.update({f"{n.upper()}_METRICS_PORT": "0" for n in SERVICES})
        env.update(SHOP_DATA_DIR=str(data_dir), PYTHONUNBUFFERED="1", SHOP_GRACE_S="3")
        env.update(extra_env or {})
        self.lines: list[str] = []
        self.t0 = time.monotonic()
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "ops.run"], cwd=REPO_ROOT, env=env,
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
            start_new_session=True,  # our SIGINT stands for the terminal's Ctrl-C
        )
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.append(line.rstrip("\n"))

    @property
    def output(self) -> str:
        return "\n".join(self.lines)

    def wait_for(self, text: str, timeout: float) -> float:
        """Seconds since start when `text` first appeared in the output."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if text in self.output:
                return time.monotonic() - self.t0
            if self.proc.poll() is not None:
                time.sleep(0.2)  # let the reader drain the pipe
                if text in self.output:
                    return time.monotonic() - self.t0
                pytest.fail(f"ops.run exited {self.proc.returncode} before {text!r}:\n"
                            f"{self.output}")
            time.sleep(0.05)
        pytest.fail(f"{text!r} not seen within {timeout}s:\n{self.output}")

    def instances(self) -> dict[str, Any]:
        doc: dict[str, Any] = json.loads((self.data_dir / "run" / "instances.json").read_text())
        return doc

    def all_pids(self) -> list[int]:
        doc = self.instances()
        pids = [int(i["pid"]) for i in doc["instances"]]
        return pids + ([int(doc["nats_pid"])] if doc.get("nats_pid") else [])

    def interrupt(self, timeout: float = 60.0) -> int:
        self.proc.send_signal(signal.SIGINT)
        return self.proc.wait(timeout)

    def cleanup(self) -> None:
        """Whatever the test did: nothing of this run survives it."""
        pids: list[int] = []
        with contextlib.suppress(OSError, ValueError, KeyError):
            pids = self.all_pids()
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        for pid in pids:
            if not pid_gone(pid):
                os.kill(pid, signal.SIGKILL)
        # The reader ends with the pipe; then the pipe is closed here, not left to the GC.
        self._reader.join(5)
        if self.proc.stdout is not None:
            self.proc.stdout.close()


@pytest.fixture
def shop_run(tmp_path: Path) -> Iterator[ShopRun]:
    run = ShopRun(tmp_path / "var")
    try:
        yield run
    finally:
        run.cleanup()


def test_make_run_starts_everything_healthy_and_stops_clean(shop_run: ShopRun) -> None:
    elapsed = shop_run.wait_for("processes healthy in", START_TIMEOUT_S)
    print(f"\nops.run: start -> every process healthy in {elapsed:.2f} s "
          f"(goal < 3 s with deps installed)")
    doc = shop_run.instances()
    by_name = {i["service"]: i for i in doc["instances"]}
    assert set(by_name) == {*SERVICES, "gateway"}
    for name in SERVICES:
        addr = by_name[name]["addr"]
        assert addr.endswith(f":{shop_run.ports[name]}"), (name, addr)
        assert grpc_health(addr, timeout=2.0, server=name) == "SERVING", name
        assert addr in shop_run.output  # the table names it
    gw_port = shop_run.ports["gateway"]
    assert http_ok(f"http://127.0.0.1:{gw_port}/healthz", 2.0)
    assert doc["nats_url"].endswith(f":{shop_run.ports['nats']}")
    assert "grpcurl" in shop_run.output and "shopctl status" in shop_run.output
    # The storefront, the console and the admin's password (shown on the first start only).
    shop_run.wait_for("Ctrl-C stops everything", 10.0)
    password_file = shop_run.data_dir / "admin-password"
    assert f"storefront: http://localhost:{gw_port}/" in shop_run.output
    assert f"console:    http://localhost:{gw_port}/console" in shop_run.output
    assert os.stat(password_file).st_mode & 0o777 == 0o600
    assert f"admin password: {password_file.read_text().strip()}" in shop_run.output
    pids = shop_run.all_pids()
    assert len(pids) == len(SERVICES) + 2

    assert shop_run.interrupt() == 0, shop_run.output
    deadline = time.monotonic() + 10
    while not all(pid_gone(p) for p in pids) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert [p for p in pids if not pid_gone(p)] == [], "processes left running"
    assert not (shop_run.data_dir / "run" / "instances.json").exists()
    assert "stopped" in shop_run.output


def test_supervisor_restarts_a_killed_service(shop_run: ShopRun) -> None:
    shop_run.wait_for("processes healthy in", START_TIMEOUT_S)
    before = next(i for i in shop_run.instances()["instances"] if i["service"] == "payment")
    os.kill(int(before["pid"]), signal.SIGKILL)
    shop_run.wait_for("payment-1 (pid", 10)
    assert "died unexpectedly (killed by SIGKILL)" in shop_run.output
    shop_run.wait_for("restarted payment-1", 10)
    shop_run.wait_for("payment-1 is healthy again", START_TIMEOUT_S)
    assert grpc_health(before["addr"], timeout=2.0, server="payment") == "SERVING"
    deadline = time.monotonic() + 5
    after = before
    while after["pid"] == before["pid"] and time.monotonic() < deadline:
        after = next(i for i in shop_run.instances()["instances"] if i["service"] == "payment")
        time.sleep(0.1)
    assert after["pid"] != before["pid"] and after["addr"] == before["addr"]
    pids = shop_run.all_pids()
    assert shop_run.interrupt() == 0, shop_run.output
    assert all(pid_gone(p) for p in pids)


def test_port_taken_is_named_and_nothing_starts(tmp_path: Path) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        taken = sock.getsockname()[1]
        run = ShopRun(tmp_path / "var", {"ORDER_PORT": str(taken)})
        try:
            code = run.proc.wait(60)
        finally:
            run.cleanup()
        run._reader.join(5)
    assert code == 1
    assert f"{taken} (order)" in run.output
    assert not (tmp_path / "var" / "run" / "instances.json").exists()


def shopctl(run: ShopRun, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.endswith(("_ADDR", "NATS_URL"))}
    env["SHOP_DATA_DIR"] = str(run.data_dir)
    return subprocess.run([sys.executable, "-m", "ops.shopctl", *args], cwd=REPO_ROOT,
                          env=env, capture_output=True, text=True, timeout=60)


def test_shopctl_against_make_run(shop_run: ShopRun) -> None:
    import httpx

    shop_run.wait_for("processes healthy in", START_TIMEOUT_S)
    status = shopctl(shop_run, "status")
    assert status.returncode == 0, status.stderr
    assert status.stdout.count("SERVING") == len(SERVICES) + 1
    missing = shopctl(shop_run, "saga", "no-such-order")
    assert missing.returncode == 1 and "not found" in missing.stderr
    assert shopctl(shop_run, "dlq", "list").returncode == 0

    base = f"http://127.0.0.1:{shop_run.ports['gateway']}"
    with httpx.Client(base_url=base, timeout=30, trust_env=False) as http:
        user = {"email": "saga@example.com", "name": "Saga", "password": "correct-horse-9"}
        assert http.post("/api/users", json=user).status_code == 201
        login = http.post("/api/auth/login",
                          json={"email": user["email"], "password": user["password"]})
        assert login.status_code == 200, login.text
        token = login.json()["accessToken"]
        body = {"items": [{"productId": "yoga-mat", "quantity": 1}], "cardToken": "tok_visa"}
        deadline = time.monotonic() + 15
        while True:
            order = http.post("/api/orders", headers={"Authorization": f"Bearer {token}"},
                              json=body)
            # The gateway started beside the user service and may not hold its
            # signing keys yet; it refetches them within a few seconds.
            if order.status_code != 503 or time.monotonic() > deadline:
                break
            time.sleep(0.5)
        assert order.status_code in (201, 202), order.text
        order_id = order.json()["id"]
    saga = shopctl(shop_run, "saga", order_id)
    assert saga.returncode == 0, saga.stderr
    assert order_id in saga.stdout and "charge" in saga.stdout
    assert shop_run.interrupt() == 0
