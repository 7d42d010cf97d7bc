"""deploy/ against its one description (ops/deploydesc.py) and against the code: files
fresh, every process, port, call edge, setting and probe the same in the manifests, the
Compose file and services/common/settings.py; the validators really reject bad input."""

from __future__ import annotations

import copy
import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from ops import deploydesc as d
from ops import deploygen
from ops.deploycheck import problems
from ops.entry import PROCESSES as ENTRY_PROCESSES
from services.common.settings import DEFAULT_PORTS, SERVICES, health_name

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"

# Settings the manifests set that are read by parts of shop outside this tree's current
# code: the mesh (SHOP_MTLS, SHOP_PKI_DIR, SHOP_IDENTITY, SHOP_PROBE_PORT) and PostgreSQL
# (SHOP_DATABASE_URL). PG_PASSWORD only composes SHOP_DATABASE_URL inside the pod.
ELSEWHERE = {"SHOP_MTLS", "SHOP_PKI_DIR", "SHOP_IDENTITY", "SHOP_PROBE_PORT",
             "SHOP_DATABASE_URL"}
POD_ONLY = {"PG_PASSWORD"}


def _docs(path: Path) -> list[dict[str, Any]]:
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc]


def _by_kind(docs: list[dict[str, Any]], kind: str) -> dict[str, dict[str, Any]]:
    return {doc["metadata"]["name"]: doc for doc in docs if doc["kind"] == kind}


@pytest.fixture(scope="module")
def prod() -> list[dict[str, Any]]:
    return deploygen.render_overlay("prod")


@pytest.fixture(scope="module")
def dev() -> list[dict[str, Any]]:
    return deploygen.render_overlay("dev")


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    doc: dict[str, Any] = yaml.safe_load((DEPLOY / "compose" / "compose.yaml").read_text())
    return doc


def _source_settings() -> str:
    return "\n".join(p.read_text() for pkg in ("services", "gateway", "ops")
                     for p in (ROOT / pkg).rglob("*.py"))


def test_generated_files_are_fresh() -> None:
    assert deploygen.stale() == [], "deploy/ is stale: run `make deploy`"


def test_every_process_once_with_its_port() -> None:
    names = [p.name for p in d.PROCESSES]
    assert sorted(names) == sorted([*SERVICES, "gateway"])
    assert sorted(ENTRY_PROCESSES) == sorted(names)
    for p in d.PROCESSES:
        assert p.port == DEFAULT_PORTS[p.name]


def test_deployments_services_and_budgets_match(prod: list[dict[str, Any]]) -> None:
    deployments = _by_kind(prod, "Deployment")
    services = _by_kind(prod, "Service")
    assert sorted(deployments) == sorted(services) == sorted(p.name for p in d.PROCESSES)
    assert sorted(_by_kind(prod, "PodDisruptionBudget")) == sorted(deployments)
    assert sorted(_by_kind(prod, "HorizontalPodAutoscaler")) == sorted(
        p.name for p in d.PROCESSES if p.autoscale)
    for name, dep in deployments.items():
        pod = dep["spec"]["template"]["spec"]
        (c,) = pod["containers"]
        assert c["args"] == [name] and c["image"] == f"{d.IMAGE}:0.1.0"
        assert {p["containerPort"] for p in c["ports"]} >= {DEFAULT_PORTS[name]}
        svc = services[name]["spec"]
        assert [p["port"] for p in svc["ports"]] == [DEFAULT_PORTS[name]]
        assert svc.get("clusterIP") == (None if name == "gateway" else "None")
        sc = c["securityContext"]
        assert sc["runAsNonRoot"] and sc["readOnlyRootFilesystem"]
        assert sc["allowPrivilegeEscalation"] is False and sc["capabilities"]["drop"] == ["ALL"]
        assert c["resources"]["requests"] and c["resources"]["limits"]
        assert pod["serviceAccountName"] == name
        assert pod["topologySpreadConstraints"]


def test_probes_ask_what_the_processes_answer(prod: list[dict[str, Any]]) -> None:
    gateway_app = (ROOT / "gateway" / "app.py").read_text()
    for name, dep in _by_kind(prod, "Deployment").items():
        (c,) = dep["spec"]["template"]["spec"]["containers"]
        for kind in ("startupProbe", "readinessProbe", "livenessProbe"):
            probe = c[kind]
            if name == "gateway":
                assert probe["httpGet"]["port"] == "http"
                assert f'"{probe["httpGet"]["path"]}"' in gateway_app
            else:
                assert probe["grpc"]["port"] == d.PROBE_PORT
        if name != "gateway":
            assert c["readinessProbe"]["grpc"]["service"] == health_name(name)
            env = {e["name"]: e for e in c["env"]}
            assert env["SHOP_IDENTITY"]["value"] == name


def test_config_names_every_service_where_it_listens(prod: list[dict[str, Any]],
                                                    compose: dict[str, Any]) -> None:
    config = _by_kind(prod, "ConfigMap")["shop-config"]["data"]
    for s in SERVICES:
        assert config[f"{s.upper()}_ADDR"] == f"{s}:{DEFAULT_PORTS[s]}"
    hosts = [f"nats://{d.NATS_NAME}-{i}.{d.NATS_NAME}-headless:4222" for i in range(3)]
    assert config["NATS_URL"] == ",".join(hosts)
    assert config["SHOP_NATS_REPLICAS"] == "3"
    for p in d.PROCESSES:
        env = compose["services"][p.name]["environment"]
        assert env["NATS_URL"] == "nats://nats-1:4222,nats://nats-2:4222,nats://nats-3:4222"
        for s in SERVICES:
            assert env[f"{s.upper()}_ADDR"] == f"{s}:{DEFAULT_PORTS[s]}"


def test_every_setting_set_is_one_the_code_reads(prod: list[dict[str, Any]],
                                                 compose: dict[str, Any]) -> None:
    source = _source_settings()
    names = set(_by_kind(prod, "ConfigMap")["shop-config"]["data"])
    for dep in _by_kind(prod, "Deployment").values():
        names |= {e["name"] for e in dep["spec"]["template"]["spec"]["containers"][0]["env"]}
    for svc in d.PROCESSES:
        names |= set(compose["services"][svc.name]["environment"])
    prefixes = "|".join(s.upper() for s in SERVICES)
    per_service = re.compile(rf"^({prefixes})_(ADDR|PORT)$")
    unread = sorted(n for n in names - ELSEWHERE - POD_ONLY
                    if f'"{n}"' not in source and not per_service.match(n))
    assert unread == [], f"set but never read by the code: {unread}"


def _downstreams_in_code(service: str) -> set[str]:
    text = "\n".join(p.read_text() for p in (ROOT / "services" / service).glob("*.py"))
    return set(re.findall(r'(?:Downstream|downstream)\("(\w+)"', text))


def test_call_edges_are_the_code_s(prod: list[dict[str, Any]]) -> None:
    policies = _by_kind(prod, "NetworkPolicy")
    assert policies["default-deny"]["spec"] == {"podSelector": {},
                                                "policyTypes": ["Ingress", "Egress"]}
    for p in d.PROCESSES:
        want = set(SERVICES) if p.is_gateway else _downstreams_in_code(p.name)
        assert set(p.calls) == want, p.name
        spec = policies[p.name]["spec"]
        called = {peer["podSelector"]["matchLabels"]["app.kubernetes.io/name"]
                  for rule in spec["egress"] for peer in rule.get("to", [])
                  if "app.kubernetes.io/name" in peer.get("podSelector", {}).get(
                      "matchLabels", {})}
        assert called == want | {"nats"}, p.name
        callers = {peer["podSelector"]["matchLabels"]["app.kubernetes.io/name"]
                   for rule in spec["ingress"] for peer in rule["from"] if "podSelector" in peer}
        assert callers == {q.name for q in d.PROCESSES if p.name in q.calls}, p.name


def test_dev_runs_one_of_each_without_budgets(dev: list[dict[str, Any]]) -> None:
    assert {dep["spec"]["replicas"] for dep in _by_kind(dev, "Deployment").values()} == {1}
    assert _by_kind(dev, "PodDisruptionBudget") == {}
    assert _by_kind(dev, "HorizontalPodAutoscaler") == {}
    assert {doc["metadata"]["namespace"] for doc in dev if doc["kind"] != "Namespace"} == {
        "shop-dev"}
    assert _by_kind(dev, "Cluster")[d.DB_NAME]["spec"]["instances"] == 1


def test_nats_chart_values_and_compose_cluster(compose: dict[str, Any]) -> None:
    values = _docs(DEPLOY / "k8s" / "nats-values.yaml")[0]
    assert values["config"]["cluster"] == {"enabled": True, "replicas": 3, "port": 6222}
    assert values["config"]["jetstream"]["fileStore"]["enabled"] is True
    assert values["config"]["jetstream"]["merge"]["sync_interval"] == "always"
    assert values["statefulSet"]["merge"]["spec"]["podManagementPolicy"] == "Parallel"
    assert values["podDisruptionBudget"]["merge"]["spec"]["maxUnavailable"] == 1
    nats = [n for n in compose["services"] if n.startswith("nats-")]
    assert nats == ["nats-1", "nats-2", "nats-3"]
    conf = (DEPLOY / "compose" / "nats.conf").read_text()
    assert "sync_interval: always" in conf
    for n in nats:
        assert f'"nats-route://{n}:6222"' in conf
    for p in d.PROCESSES:
        svc = compose["services"][p.name]
        assert svc["command"] == [p.name] and svc["read_only"] is True
        assert set(svc["depends_on"]) == {*nats, "postgres", *p.calls}
        assert svc["healthcheck"]["test"]


def test_the_image_runs_the_entry_point() -> None:
    dockerfile = (ROOT / "Dockerfile").read_text()
    assert 'ENTRYPOINT ["/opt/shop/venv/bin/python", "-m", "ops.entry"]' in dockerfile
    assert f"USER {d.UID}:{d.UID}" in dockerfile
    assert "COPY deploy/image/requirements.txt" in dockerfile
    pins = (DEPLOY / "image" / "requirements.txt").read_text()
    for needed in ("grpcio==", "nats-py==", "starlette==", "uvicorn==", "cryptography=="):
        assert needed in pins


def test_overlay_merge_and_delete() -> None:
    base = {"kind": "Deployment", "metadata": {"name": "x"},
            "spec": {"replicas": 2, "template": {"spec": {"containers": [
                {"name": "x", "image": "i", "env": [{"name": "A", "value": "1"}]}]}}}}
    patch = {"spec": {"replicas": 1, "template": {"spec": {"containers": [
        {"name": "x", "env": [{"name": "B", "value": "2"}]}]}}}}
    merged = deploygen._merge(base, patch)
    (c,) = merged["spec"]["template"]["spec"]["containers"]
    assert merged["spec"]["replicas"] == 1 and c["image"] == "i"
    assert c["env"] == [{"name": "A", "value": "1"}, {"name": "B", "value": "2"}]
    assert "synchronous" not in deploygen._merge({"synchronous": {"a": 1}, "b": 1},
                                                 {"synchronous": None})


def test_validators_reject_a_bad_field(prod: list[dict[str, Any]]) -> None:
    dep = copy.deepcopy(_by_kind(prod, "Deployment")["order"])
    assert problems(dep) == []
    dep["spec"]["template"]["spec"]["containers"][0]["securityContext"]["privilegd"] = False
    assert any("privilegd" in p for p in problems(dep))
    cert = copy.deepcopy(_by_kind(prod, "Certificate")["shop-order"])
    assert problems(cert) == []
    cert["spec"]["uris"] = "spiffe://shop.local/order"
    assert problems(cert)
    assert problems({"apiVersion": "example.com/v1", "kind": "Widget", "metadata": {"name": "w"}})
