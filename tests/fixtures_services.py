"""Fixtures that start real service processes (port 0, temp data dir) and always stop them.

Synchronous on purpose: they work at any scope without event-loop scoping
trouble. Processes come from ops.process, the same code `make run` uses.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Protocol

import pytest

from ops.process import (
    GATEWAY,
    ServiceProcess,
    System,
    env_prefix,
    start_system,
    wait_all_ready,
)

__all__ = [
    "FAULT_ENV",
    "TEST_ENV",
    "ServiceFactory",
    "data_dir",
    "fault_system",
    "gateway",
    "services",
    "system",
    "system_fresh",
]

# Short grace periods: a test teardown should not wait out production drains. Password
# hashes at scrypt N=2^14 instead of the default 2^17 (about 8x less CPU and memory per
# sign-up or login): tests sign many users up on a shared machine. No mail: a test that
# wants it points SMTP_URL at a server of its own (never at a local catcher).
TEST_ENV: dict[str, str] = {
    "SHOP_GRACE_S": "2",
    "SHOP_LOG_LEVEL": "DEBUG",
    "SHOP_SCRYPT_N": "16384",
    "SMTP_URL": "off",
}
START_TIMEOUT_S = 60.0
# Fault runs: recovery inside a test's bounds (short breaker reset and step deadlines, sagas
# that keep trying through the fault), INFO logs (DEBUG logs every RPC: too much under load).
FAULT_ENV: dict[str, str] = {
    **TEST_ENV,
    "SHOP_LOG_LEVEL": "INFO",
    "SHOP_BREAKER_RESET_S": "1",
    "SHOP_SAGA_STEP_TIMEOUT_S": "1",
    "SHOP_ORDER_SAGA_BUDGET_S": "2",
    "SHOP_SAGA_RESERVE_ATTEMPTS": "40",
    "SHOP_SAGA_CHARGE_ATTEMPTS": "40",
    "SHOP_SAGA_COMPENSATION_ATTEMPTS": "40",
}


class _HasUrl(Protocol):
    @property
    def url(self) -> str: ...


class ServiceFactory:
    """Starts single services on free ports; each new one gets `<SERVICE>_ADDR`
    of every service already started, so start downstreams first."""

    def __init__(self, data_dir: Path, nats_url: str,
                 base_env: dict[str, str] | None = None) -> None:
        self.data_dir = data_dir
        self.nats_url = nats_url
        # Given to every process (e.g. the storage backend's SHOP_DATABASE_URL).
        self.base_env = dict(base_env or {})
        self.processes: list[ServiceProcess] = []

    def __getitem__(self, name: str) -> ServiceProcess:
        for proc in self.processes:
            if proc.name == name:
                return proc
        raise KeyError(name)

    def addr_env(self) -> dict[str, str]:
        env: dict[str, str] = {}
        for proc in self.processes:
            if proc.name != GATEWAY:
                env.setdefault(f"{env_prefix(proc.name)}_ADDR", proc.addr)
        return env

    def spawn(self, name: str, *, instance: str | None = None, **env: str) -> ServiceProcess:
        """Start without waiting (see `start_many` for a parallel start)."""
        count = sum(1 for p in self.processes if p.name == name)
        proc = ServiceProcess(
            name, data_dir=self.data_dir, nats_url=self.nats_url,
            instance=instance or f"{name}-{count + 1}",
            env={**TEST_ENV, **self.base_env, **self.addr_env(), **env},
        )
        self.processes.append(proc)
        return proc.start()

    def start(self, name: str, *, instance: str | None = None,
              timeout: float = START_TIMEOUT_S, **env: str) -> ServiceProcess:
        """Start `name` (or "gateway") and wait until it is healthy."""
        return self.spawn(name, instance=instance, **env).wait_ready(timeout)

    def start_many(self, *names: str, timeout: float = START_TIMEOUT_S,
                   **env: str) -> list[ServiceProcess]:
        """Start several in parallel. They see each other's addresses only if
        ports are known up front, which they are (picked at construction)."""
        procs = [ServiceProcess(n, data_dir=self.data_dir, nats_url=self.nats_url,
                                instance=f"{n}-{1 + sum(p.name == n for p in self.processes)}")
                 for n in names]
        self.processes.extend(procs)
        shared = {**TEST_ENV, **self.base_env, **self.addr_env(), **env}
        for proc in procs:
            proc.extra_env = dict(shared)
            proc.start()
        wait_all_ready(procs, timeout)
        return procs

    def stop_all(self) -> None:
        """Gateway first, then the rest; SIGKILL after the timeout."""
        for proc in sorted(self.processes, key=lambda p: p.name != GATEWAY):
            proc.send_term()
        for proc in self.processes:
            proc.terminate(timeout=10.0)


@pytest.fixture
def data_dir(tmp_path: Path) -> Path:
    path = tmp_path / "data"
    path.mkdir()
    return path


@pytest.fixture
def services(data_dir: Path, fresh_nats: _HasUrl,
             db_env: dict[str, str]) -> Iterator[ServiceFactory]:
    """`services.start("inventory")` -> a healthy ServiceProcess; all stopped after. The
    processes use the test's `backend` (SQLite unless parametrized)."""
    factory = ServiceFactory(data_dir, fresh_nats.url, db_env)
    try:
        yield factory
    finally:
        factory.stop_all()


def _start_all(root: Path, nats_url: str) -> System:
    return start_system(root, nats_url, env=TEST_ENV, ready_timeout=START_TIMEOUT_S)


@pytest.fixture(scope="module")
def system(nats_server: _HasUrl, tmp_path_factory: pytest.TempPathFactory) -> Iterator[System]:
    """All eight services, started in parallel on free ports, shared by a module."""
    sysm = _start_all(tmp_path_factory.mktemp("system"), nats_server.url)
    try:
        yield sysm
    finally:
        sysm.stop()


@pytest.fixture(scope="module")
def gateway(system: System) -> Iterator[ServiceProcess]:
    """The gateway on a free port in front of `system`; `.base_url` is its URL."""
    proc = ServiceProcess(GATEWAY, data_dir=system.data_dir, nats_url=system.nats_url,
                          env={**TEST_ENV, **system.addr_env()})
    try:
        proc.start().wait_ready(START_TIMEOUT_S)
        yield proc
    finally:
        proc.terminate()


@pytest.fixture
def system_fresh(fresh_nats: _HasUrl, data_dir: Path) -> Iterator[System]:
    """All eight services of the test's own (own NATS too): free to kill things."""
    sysm = _start_all(data_dir, fresh_nats.url)
    try:
        yield sysm
    finally:
        sysm.stop()


@pytest.fixture
def fault_system(fresh_nats: _HasUrl, data_dir: Path) -> Iterator[System]:
    """All eight services of the test's own (own NATS too) with FAULT_ENV: free to kill,
    stop or freeze anything; frozen processes are thawed before the stop."""
    sysm = start_system(data_dir, fresh_nats.url, env=FAULT_ENV, ready_timeout=START_TIMEOUT_S)
    try:
        yield sysm
    finally:
        for proc in sysm.processes:
            if proc.running:
                proc.sigcont()
        sysm.stop()
