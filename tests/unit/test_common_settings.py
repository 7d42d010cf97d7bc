"""Settings come from the environment with the documented defaults."""

from __future__ import annotations

from pathlib import Path

import pytest

from services.common import envvars
from services.common import settings as s

_VARS = (
    "SHOP_HOST",
    "ORDER_PORT",
    "SHOP_DATA_DIR",
    "NATS_URL",
    "SHOP_LOG_LEVEL",
    "SHOP_INSTANCE_ID",
    "SHOP_READY_FILE",
    "SHOP_GRACE_S",
    "ORDER_ADDR",
    "SHOP_DATABASE_URL",
    "ORDER_DATABASE_URL",
    "PAYMENT_DATABASE_URL",
)


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    for name in _VARS:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.chdir(tmp_path)


def test_default_ports_follow_service_order() -> None:
    assert s.SERVICES[0] == "user" and s.SERVICES[-1] == "shipping"
    assert [s.DEFAULT_PORTS[name] for name in s.SERVICES] == list(range(50051, 50059))
    assert s.DEFAULT_PORTS["gateway"] == 8080


def test_defaults(tmp_path: Path) -> None:
    cfg = s.load_settings("order")
    assert cfg.host == "127.0.0.1"
    assert cfg.port == 50054
    assert cfg.data_dir == Path("var") and (tmp_path / "var").is_dir()
    assert cfg.db_path == Path("var") / "order.db"
    assert cfg.nats_url == "nats://127.0.0.1:4222"
    assert cfg.log_level == "INFO"
    assert cfg.instance_id.startswith("order-") and len(cfg.instance_id) > len("order-")
    assert cfg.ready_file is None
    assert cfg.grace_s == 10.0


def test_environment_overrides(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("SHOP_HOST", "0.0.0.0")
    monkeypatch.setenv("ORDER_PORT", "0")
    monkeypatch.setenv("SHOP_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.setenv("NATS_URL", "nats://10.0.0.1:4999")
    monkeypatch.setenv("SHOP_LOG_LEVEL", "debug")
    monkeypatch.setenv("SHOP_INSTANCE_ID", "order-a")
    monkeypatch.setenv("SHOP_READY_FILE", str(tmp_path / "ready.json"))
    monkeypatch.setenv("SHOP_GRACE_S", "2.5")
    cfg = s.load_settings("order")
    assert (cfg.host, cfg.port) == ("0.0.0.0", 0)
    assert cfg.db_path == tmp_path / "data" / "order.db"
    assert cfg.nats_url == "nats://10.0.0.1:4999"
    assert cfg.log_level == "DEBUG"
    assert cfg.instance_id == "order-a"
    assert cfg.ready_file == tmp_path / "ready.json"
    assert cfg.grace_s == 2.5


def test_bad_number_names_the_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ORDER_PORT", "eighty")
    with pytest.raises(ValueError, match="ORDER_PORT"):
        s.load_settings("order")


def test_addresses(monkeypatch: pytest.MonkeyPatch) -> None:
    assert "order" not in s.load_settings("cart").pinned
    assert s.default_addr("order") == "127.0.0.1:50054"
    monkeypatch.setenv("ORDER_ADDR", "order.svc:7000")
    assert s.load_settings("cart").pinned["order"] == "order.svc:7000"


def test_env_helpers(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SHOP_T_INT", "7")
    monkeypatch.setenv("SHOP_T_FLOAT", "0.25")
    monkeypatch.setenv("SHOP_T_EMPTY", "")
    assert s.env_int("SHOP_T_INT", 1) == 7
    assert s.env_float("SHOP_T_FLOAT", 1.0) == 0.25
    assert s.env_str("SHOP_T_EMPTY", "dflt") == "dflt"
    assert s.env_int("SHOP_T_UNSET", 3) == 3


def test_database_url_per_service(monkeypatch: pytest.MonkeyPatch) -> None:
    assert s.load_settings("order").database_url == ""  # SQLite by default
    monkeypatch.setenv("SHOP_DATABASE_URL", "postgresql://shop:pw@db.local:5433/")
    assert s.load_settings("order").database_url == \
        "postgresql://shop:pw@db.local:5433/shop_order"
    monkeypatch.setenv("SHOP_DATABASE_URL", "postgresql://postgres@/?host=/run/pg")
    assert s.load_settings("payment").database_url == \
        "postgresql://postgres@/shop_payment?host=/run/pg"  # the socket dir is kept
    monkeypatch.setenv("PAYMENT_DATABASE_URL", "postgresql://pay@elsewhere/payments")
    assert s.load_settings("payment").database_url == "postgresql://pay@elsewhere/payments"
    assert s.load_settings("order").database_url.endswith("/shop_order?host=/run/pg")


def test_database_url_must_be_postgresql(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SHOP_DATABASE_URL", "mysql://db/")
    with pytest.raises(ValueError, match="SHOP_DATABASE_URL must be a postgresql:// URL"):
        s.load_settings("order")


def test_each_area_is_read_into_its_section(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SHOP_BREAKER_FAIL_MAX", "7")
    monkeypatch.setenv("SHOP_MTLS", "off")
    monkeypatch.setenv("SHOP_PKI_DIR", "/etc/shop/pki")
    monkeypatch.setenv("SHOP_REGISTRY_TTL_S", "0.2")
    monkeypatch.setenv("SHOP_SAGA_LEASE_S", "4")
    monkeypatch.setenv("ORDER_PROBE_PORT", "8086")
    cfg = s.load_settings("order")
    assert cfg.breaker.fail_max == 7 and cfg.breaker.reset_s == 30.0
    assert not cfg.tls.enabled and cfg.tls.pki_dir == Path("/etc/shop/pki")
    assert cfg.discovery.ttl_s == 1.0  # at least 1 s
    assert cfg.order.saga_lease_s == 4.0
    assert cfg.serving.probe_port == 8086
    # Another process keeps the defaults of what it does not read.
    assert s.load_settings("payment").order.saga_lease_s == 10.0
    assert s.load_settings("payment").serving.probe_port is None


def test_a_malformed_variable_stops_only_the_process_that_reads_it(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SHOP_SAGA_LEASE_S", "ten")
    with pytest.raises(ValueError, match="SHOP_SAGA_LEASE_S must be a number"):
        s.load_settings("order")
    assert s.load_settings("payment").service == "payment"
    monkeypatch.setenv("SHOP_NATS_REPLICAS", "7")
    with pytest.raises(ValueError, match="SHOP_NATS_REPLICAS must be 1 to 5"):
        s.load_settings("payment")


def test_the_gateway_settings_carry_the_common_part(monkeypatch: pytest.MonkeyPatch) -> None:
    from gateway.config import load_gateway_settings

    monkeypatch.setenv("GATEWAY_PORT", "0")
    monkeypatch.setenv("SHOP_BREAKER_PROBE_S", "0.5")
    monkeypatch.setenv("SHOP_GRACE_S", "oops")  # read by the services only
    gw = load_gateway_settings()
    assert gw.port == 0
    assert gw.process.service == "gateway"
    assert gw.process.breaker.probe_s == 0.5
    assert gw.host == gw.process.host


def _other_value(default: object) -> tuple[str, object]:
    """A value unlike `default`, as set in the environment and as read."""
    if isinstance(default, bool):
        return ("off", False) if default else ("on", True)
    if isinstance(default, int):
        return str(default + 3), default + 3
    if isinstance(default, float):
        return str(default + 1.5), default + 1.5
    return "x-test@example.com", "x-test@example.com"


def test_every_declared_field_is_read_from_its_variable(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Each section field declared `env(VAR)` takes VAR's value in a process that reads
    VAR: no field is declared and then left at its default."""
    from dataclasses import fields

    sections = {f.name: f.type for f in fields(s.Settings)
                if f.name in ("breaker", "tls", "nats", "discovery", "serving", "user",
                              "order", "mail", "stock")}
    checked = 0
    for attr in sections:
        section = getattr(s.Settings(service="order"), attr)
        for f in fields(section):
            var = f.metadata.get("var")
            if var is None:
                continue
            process = next(p for p in (*s.SERVICES, "gateway") if envvars.read_by(var, p))
            text, want = _other_value(var.default)
            with monkeypatch.context() as m:
                m.setenv(var.key(process), text)
                got = getattr(getattr(s.load_settings(process), attr), f.name)
            assert got == want, (var.name, attr, f.name, got, want)
            checked += 1
    assert checked >= 30
