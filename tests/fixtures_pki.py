"""The test session's PKI: made once before any fixture runs, in a temp dir that
SHOP_PKI_DIR names for this process and every process it spawns; removed at the end.

The pytest process itself calls gRPC as the gateway (tests.support.mesh.transport), like
the in-process gateways it hosts, and NATS as the operator (mesh.nats_auth)."""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import pytest

from tests.support.mesh import make_session_pki

_MADE = "_SHOP_TEST_PKI_MADE"


def pytest_configure(config: pytest.Config) -> None:
    if os.environ.get("SHOP_PKI_DIR"):
        return  # given from outside (or a nested pytest): use it
    directory = Path(tempfile.mkdtemp(prefix="shop-pki-"))
    make_session_pki(directory)
    os.environ["SHOP_PKI_DIR"] = str(directory)
    # Test workers (pytest-xdist) inherit the variables: only the maker removes the PKI.
    os.environ[_MADE] = f"{os.getpid()}:{directory}"


def pytest_unconfigure(config: pytest.Config) -> None:
    pid, _, made = os.environ.get(_MADE, "").partition(":")
    if made and pid == str(os.getpid()):
        os.environ.pop(_MADE, None)
        shutil.rmtree(made, ignore_errors=True)
        os.environ.pop("SHOP_PKI_DIR", None)
