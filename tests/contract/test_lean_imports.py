"""What a running process loads: the X.509 library only where certificates or tokens are
made or checked (user signs tokens, the gateway verifies them), the PostgreSQL driver
only on that backend. Each costs every process megabytes and import time."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from services.common.settings import SERVICES

# The user service signs tokens and the gateway verifies them (Ed25519).
NEEDS_X509 = frozenset({"user", "gateway"})
PROCESSES = (*SERVICES, "gateway")


def _loaded(module: str) -> dict[str, bool]:
    code = (f"import sys, json; import {module}; "
            "print(json.dumps({m: m in sys.modules for m in ('cryptography', 'asyncpg')}))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True, timeout=60)
    loaded: dict[str, bool] = json.loads(out.stdout.strip().splitlines()[-1])
    return loaded


@pytest.mark.parametrize("process", PROCESSES)
def test_a_process_loads_only_the_libraries_it_uses(process: str) -> None:
    module = "gateway.__main__" if process == "gateway" else f"services.{process}.__main__"
    loaded = _loaded(module)
    assert not loaded["asyncpg"], f"{process} imports asyncpg on SQLite"
    if process not in NEEDS_X509:
        assert not loaded["cryptography"], f"{process} imports the X.509 library"
