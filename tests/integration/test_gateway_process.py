"""`python -m gateway` as a real process: port 0, ready file, probes, graceful stop."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx

REPO = Path(__file__).resolve().parents[2]


def test_gateway_process_serves_probes_and_stops_on_sigterm(tmp_path: Path) -> None:
    ready = tmp_path / "gateway.ready.json"
    env = {
        **os.environ,
        "GATEWAY_PORT": "0",
        "SHOP_READY_FILE": str(ready),
        "SHOP_DATA_DIR": str(tmp_path / "data"),
        # Nothing listens here: every downstream is down.
        **{
            f"{s.upper()}_ADDR": "127.0.0.1:9"
            for s in (
                "user",
                "product",
                "cart",
                "order",
                "payment",
                "inventory",
                "notification",
                "shipping",
            )
        },
    }
    proc = subprocess.Popen(
        [sys.executable, "-m", "gateway"],
        cwd=REPO,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        deadline = time.monotonic() + 20
        while not ready.exists():
            assert proc.poll() is None, proc.stderr.read().decode() if proc.stderr else ""
            assert time.monotonic() < deadline, "gateway never became ready"
            time.sleep(0.05)
        info = json.loads(ready.read_text())
        assert info["service"] == "gateway"
        assert info["pid"] == proc.pid
        base = f"http://{info['addr']}"
        with httpx.Client(base_url=base, timeout=5) as client:
            live = client.get("/healthz", headers={"X-Request-Id": "probe-1"})
            assert live.status_code == 200
            assert live.headers["x-request-id"] == "probe-1"
            not_ready = client.get("/readyz")
            assert not_ready.status_code == 503
            assert not_ready.json()["services"]["order"] != "SERVING"
            # A dead downstream is a clean 503 with the error body, not a crash.
            down = client.get("/api/products")
            assert down.status_code == 503
            assert down.json()["error"]["status"] == "UNAVAILABLE"
            assert "127.0.0.1:9" not in down.text
            assert client.get("/openapi.json").json()["openapi"].startswith("3.1")
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            code = proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
            raise
        if proc.stderr:
            proc.stderr.close()
    assert code == 0
