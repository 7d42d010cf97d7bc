"""shopctl and the process layer under it (ops.process, the ops.run supervisor),
against stand-in services (tests/support/fake_service.py) so they run without
the real eight."""

from __future__ import annotations

import asyncio
import json
import os
import socket
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import nats
import pytest

from ops import shopctl
from ops.natsd import NatsServer
from ops.process import (
    GATEWAY,
    ServiceProcess,
    StartError,
    System,
    free_port,
    grpc_health,
    port_in_use,
    start_system,
)
from ops.run import BACKOFF_START_S, Supervisor, parse_scale, resolve_ports, write_instances
from services.common import registry
from services.common.settings import DEFAULT_PORTS, SERVICES
from tests.support.mesh import nats_auth


def fake_argv(name: str) -> list[str]:
    return [sys.executable, "-m", "tests.support.fake_service", name]


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


@pytest.fixture(scope="module")
def fake_system(tmp_path_factory: pytest.TempPathFactory) -> Iterator[System]:
    root = tmp_path_factory.mktemp("fake")
    system = start_system(root, "nats://127.0.0.1:1", with_gateway=True,
                          scale={"payment": 2}, argv_for=fake_argv, ready_timeout=30)
    try:
        yield system
    finally:
        system.stop()


def test_start_system_runs_every_instance_healthy(fake_system: System) -> None:
    assert set(fake_system) == set(SERVICES)
    assert [p.instance for p in fake_system.instances("payment")] == ["payment-1", "payment-2"]
    addrs = [p.addr for p in fake_system.all()]
    assert len(set(addrs)) == len(addrs) == len(SERVICES) + 2
    for proc in fake_system.processes:
        assert grpc_health(proc.addr, server=proc.name) == "SERVING"
        info = proc.ready_info()
        assert info is not None and info["pid"] == proc.pid
        assert proc.log_path.parent == fake_system.data_dir / "logs"
    assert fake_system.gateway is not None and fake_system.gateway.health() == "SERVING"
    # every process was told where the others are
    env = fake_system["order"].env()
    assert env["PAYMENT_ADDR"] == fake_system.addr("payment")
    assert env["ORDER_PORT"] == str(fake_system["order"].port)
    assert env["SHOP_INSTANCE_ID"] == "order-1"


def test_kill_restart_and_freeze(tmp_path: Path) -> None:
    proc = ServiceProcess("cart", data_dir=tmp_path, nats_url="nats://x",
                          argv=fake_argv("cart"))
    try:
        proc.start().wait_ready(30)
        port, first_pid = proc.port, proc.pid
        assert proc.kill() == -9
        assert proc.returncode == -9 and proc.health() == "STOPPED"
        assert first_pid is not None and not pid_alive(first_pid)
        proc.restart(30)
        assert proc.port == port and proc.pid != first_pid and proc.health() == "SERVING"
        proc.sigstop()
        assert grpc_health(proc.addr, timeout=0.3, server=proc.name) == "UNREACHABLE"
        proc.sigcont()
        assert grpc_health(proc.addr, server=proc.name) == "SERVING"
        assert proc.terminate() == 0  # graceful: exit 0
    finally:
        proc.kill()


def test_start_error_carries_the_log_tail(tmp_path: Path) -> None:
    argv = [sys.executable, "-c", "import sys; print('boom: no config'); sys.exit(3)"]
    with pytest.raises(StartError, match=r"(?s)exited with code 3.*boom: no config"):
        start_system(tmp_path, "nats://x", services=["user"], argv_for=lambda _n: argv,
                     ready_timeout=20)


def test_supervisor_restarts_a_crashed_child_with_backoff(
        fake_system: System, capsys: pytest.CaptureFixture[str]) -> None:
    sup = Supervisor(fake_system)
    proc = fake_system["shipping"]
    watch = next(w for w in sup.watches if w.proc is proc)
    proc.kill()
    now = time.monotonic()
    sup.tick(now)
    assert watch.restart_at == pytest.approx(now + BACKOFF_START_S)
    assert watch.delay == 2 * BACKOFF_START_S
    assert "shipping-1" in capsys.readouterr().out
    assert sup.tick(now + BACKOFF_START_S) is True  # pid changed
    deadline = time.monotonic() + 30
    while not watch.healthy and time.monotonic() < deadline:
        sup.tick(time.monotonic())
        time.sleep(0.05)
    assert watch.healthy and proc.health() == "SERVING"
    assert "healthy again" in capsys.readouterr().out


def test_parse_scale_and_ports() -> None:
    assert parse_scale("payment=2 order=3") == {"payment": 2, "order": 3}
    assert parse_scale("") == {}
    for bad in ("payment", "nope=2", "order=0", "order=x"):
        with pytest.raises(ValueError):
            parse_scale(bad)
    ports = resolve_ports({"ORDER_PORT": "0", "GATEWAY_PORT": "9999"})
    assert ports["user"] == DEFAULT_PORTS["user"] and ports["gateway"] == 9999
    assert ports["order"] not in (0, DEFAULT_PORTS["order"])
    with pytest.raises(ValueError):
        resolve_ports({"CART_PORT": "abc"})


def test_port_in_use() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        assert port_in_use(sock.getsockname()[1])
    assert not port_in_use(free_port())


def test_status_lists_recorded_instances(
        fake_system: System, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    write_instances(fake_system)
    monkeypatch.setenv("SHOP_DATA_DIR", str(fake_system.data_dir))
    monkeypatch.delenv("NATS_URL", raising=False)  # the recorded one: nothing listens there
    fake_system["shipping"].wait_ready(30)  # the supervisor test may have just restarted it
    assert shopctl.main(["status"]) == 0
    captured = capsys.readouterr()
    out = captured.out
    assert "payment-2" in out and fake_system.instances("payment")[1].addr in out
    assert out.count("SERVING") == len(fake_system.all())
    # No registry to ask: said in one line, and the configured addresses are used.
    assert captured.err.count("\n") == 1 and "registry not reachable" in captured.err
    topo = shopctl.discover()
    assert {i.service for i in topo.instances} == {*SERVICES, GATEWAY}


def _nothing_running(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("SHOP_DATA_DIR", str(tmp_path))
    for name in (*SERVICES, GATEWAY):
        monkeypatch.setenv(f"{name.upper()}_ADDR", f"127.0.0.1:{free_port()}")
    monkeypatch.setenv("NATS_URL", f"nats://127.0.0.1:{free_port()}")


@pytest.mark.parametrize("argv", [["status"], ["saga", "o-1"], ["dlq", "list"],
                                  ["dlq", "replay", "--all"]])
def test_clear_one_line_error_when_not_running(
        argv: list[str], monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
        capsys: pytest.CaptureFixture[str]) -> None:
    _nothing_running(monkeypatch, tmp_path)
    assert shopctl.main(argv) == 1
    err = capsys.readouterr().err
    assert err.startswith("shopctl: ") and err.count("\n") == 1
    assert "not" in err  # "not running" / "not reachable"


def test_dlq_replay_needs_an_id_or_all(
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
        capsys: pytest.CaptureFixture[str]) -> None:
    _nothing_running(monkeypatch, tmp_path)
    assert shopctl.main(["dlq", "replay"]) == 1
    assert "--all" in capsys.readouterr().err


def test_dlq_list_on_a_live_nats(fresh_nats: NatsServer, monkeypatch: pytest.MonkeyPatch,
                                 tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("SHOP_DATA_DIR", str(tmp_path))
    monkeypatch.setenv("NATS_URL", fresh_nats.url)
    assert shopctl.main(["dlq", "list"]) == 0
    assert "no dead letters" in capsys.readouterr().out


def test_instances_file_is_what_status_reads(fake_system: System) -> None:
    write_instances(fake_system)
    doc = json.loads((fake_system.data_dir / "run" / "instances.json").read_text())
    assert doc["nats_url"] == fake_system.nats_url
    assert {i["instance"] for i in doc["instances"]} >= {"payment-2", "gateway-1"}
    assert all(i["pid"] for i in doc["instances"])


async def _register(url: str, instances: list[registry.Instance]) -> list[str]:
    nc = await nats.connect(url, **nats_auth().options())
    try:
        kv = await registry.open_bucket(nc, ttl_s=30)
        for inst in instances:
            await kv.put(inst.key, inst.to_json())
        return [inst.key for inst in instances]
    finally:
        await nc.close()


async def _unregister(url: str, keys: list[str]) -> None:
    nc = await nats.connect(url, **nats_auth().options())
    try:
        kv = await registry.open_bucket(nc, ttl_s=30)
        for key in keys:
            await kv.delete(key)
    finally:
        await nc.close()


async def test_status_reads_the_registry(
        fake_system: System, fresh_nats: NatsServer, monkeypatch: pytest.MonkeyPatch,
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("SHOP_DATA_DIR", str(tmp_path))  # no instances.json: registry only
    monkeypatch.setenv("NATS_URL", fresh_nats.url)
    for proc in fake_system.all():
        proc.wait_ready(30)
    now = time.time()
    entries = [
        registry.Instance(
            p.name, p.instance, p.addr, "1.0", now - 125, p.pid or 0,
            {"inventory": "open", "payment": "closed", "cart": "closed"}
            if p.instance == "order-1" else {},
            protocol="http" if p.name == GATEWAY else "grpc",
            storage="" if p.name == GATEWAY else "postgres" if p.name == "order" else "sqlite")
        for p in fake_system.all()]
    keys = await _register(fresh_nats.url, entries)
    assert await asyncio.to_thread(shopctl.main, ["status"]) == 0
    captured = capsys.readouterr()
    assert captured.err == ""
    lines = captured.out.splitlines()
    assert lines[0].split() == ["SERVICE", "INSTANCE", "ADDRESS", "HEALTH", "UPTIME", "BREAKERS",
                                "STORAGE"]
    by_instance = {line.split()[1]: line.split() for line in lines[1:]}
    assert set(by_instance) == {p.instance for p in fake_system.all()}
    assert by_instance["order-1"][3:] == ["SERVING", "2m05s", "open:inventory;closed:cart,payment",
                                          "postgres"]
    assert by_instance["payment-2"][-1] == "sqlite"
    assert by_instance["gateway-1"][-1] == "-"  # no storage of its own
    assert by_instance["payment-2"][2:4] == [fake_system.instances("payment")[1].addr, "SERVING"]
    assert by_instance["gateway-1"][3] == "SERVING"  # probed over HTTP, not gRPC

    # A service nobody registered is named, and status says something is wrong.
    await _unregister(fresh_nats.url, [k for k in keys if k.startswith("shipping.")])
    assert await asyncio.to_thread(shopctl.main, ["status"]) == 1
    shipping = [line for line in capsys.readouterr().out.splitlines()
                if line.startswith("shipping")]
    assert shipping and "NOT REGISTERED" in shipping[0]


def test_status_formats() -> None:
    assert shopctl.format_uptime(42.9) == "42s"
    assert shopctl.format_uptime(3600 + 4 * 60 + 5) == "1h04m"
    assert shopctl.format_uptime(2 * 86400 + 5 * 3600) == "2d05h"
    assert shopctl.format_breakers({}) == "-"
    assert shopctl.format_breakers({"b": "closed", "a": "half-open", "c": "open"}) == (
        "open:c;half-open:a;closed:b")
