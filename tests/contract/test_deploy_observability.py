"""The Prometheus scrape configuration names every process's /metrics port, and the
Grafana dashboard is a dashboard Grafana loads (the fields its schema needs) whose queries
use only series that shop exports (docs/metrics.md)."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import yaml

from services.common.settings import DEFAULT_PORTS, SERVICES

ROOT = Path(__file__).resolve().parents[2]
DASHBOARD = ROOT / "deploy" / "grafana" / "shop-overview.json"
PROMETHEUS = ROOT / "deploy" / "prometheus" / "prometheus.yml"
SERIES = re.compile(r"\b((?:shop|process)_[a-z_]+)")
SUFFIXES = ("_bucket", "_count", "_sum", "_total")


def _documented() -> set[str]:
    text = (ROOT / "docs" / "metrics.md").read_text()
    return {_base(name) for name in SERIES.findall(text)}


def _base(name: str) -> str:
    for suffix in SUFFIXES:
        if name.endswith(suffix):
            return name[: -len(suffix)]
    return name


def test_prometheus_scrapes_every_process() -> None:
    doc = yaml.safe_load(PROMETHEUS.read_text())
    targets = {t for job in doc["scrape_configs"] for sc in job["static_configs"]
               for t in sc["targets"]}
    wanted = {f"127.0.0.1:{DEFAULT_PORTS[s] + 1000}" for s in SERVICES}
    wanted.add(f"127.0.0.1:{DEFAULT_PORTS['gateway']}")
    assert targets == wanted
    labelled = {sc["labels"]["service"] for job in doc["scrape_configs"]
                for sc in job["static_configs"]}
    assert labelled == {*SERVICES, "gateway"}


def _panels(dash: dict[str, Any]) -> list[dict[str, Any]]:
    return [p for p in dash["panels"] if p["type"] != "row"]


def test_dashboard_has_what_grafana_needs() -> None:
    dash = json.loads(DASHBOARD.read_text())
    for key in ("uid", "title", "schemaVersion", "panels", "time", "templating"):
        assert key in dash, key
    assert isinstance(dash["schemaVersion"], int)
    ids = [p["id"] for p in dash["panels"]]
    assert len(ids) == len(set(ids)), "panel ids must be unique"
    for p in dash["panels"]:
        pos = p["gridPos"]
        assert all(isinstance(pos[k], int) for k in ("h", "w", "x", "y")), p["title"]
        assert pos["x"] + pos["w"] <= 24, p["title"]
    for p in _panels(dash):
        assert p["type"] == "timeseries" and p["targets"], p["title"]
        refs = [t["refId"] for t in p["targets"]]
        assert len(refs) == len(set(refs)), p["title"]
        assert p["datasource"]["type"] == "prometheus"
    variables = {v["name"] for v in dash["templating"]["list"]}
    assert "datasource" in variables


def test_dashboard_queries_use_exported_series_only() -> None:
    dash = json.loads(DASHBOARD.read_text())
    known = _documented()
    used: set[str] = set()
    for p in _panels(dash):
        for t in p["targets"]:
            assert t["expr"].count("(") == t["expr"].count(")"), t["expr"]
            used |= {_base(n) for n in SERIES.findall(t["expr"])}
    assert used, "no series queried"
    assert used <= known, sorted(used - known)
    # The golden signals and the saga are on it.
    assert {"shop_rpc_server_duration_seconds", "shop_gateway_requests",
            "shop_saga_duration_seconds", "shop_saga_steps", "shop_outbox_backlog_events",
            "shop_consumer_lag_events", "shop_breaker_state"} <= used
