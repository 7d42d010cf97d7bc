"""Certificates rotate under a steady load without a restart and without a failed call.

A real grpc.aio server (the echo service through ServiceRunner) and a real Downstream
read a PKI of the test's own; every certificate is re-issued three times while calls
run, slow ones among them (in flight across each rotation). The server hands out its
new certificate on new connections; the client moves to a new channel and lets the
old one finish its calls.
"""

from __future__ import annotations

import asyncio
import shutil
import socket
import ssl
import time
from pathlib import Path

import pytest
from cryptography import x509
from shop.product.v1 import product_pb2, product_pb2_grpc

from services.common.clients import Downstream
from services.common.pki import ensure_pki
from services.common.spiffe import IDENTITIES
from tests.support.inprocess import running_echo
from tests.support.mesh import ECHO, make_session_pki, mtls_enabled, transport
from tests.support.mesh import pki as session_pki

pytestmark = pytest.mark.skipif(not mtls_enabled(), reason="needs SHOP_MTLS=on")

LOAD_S = 4.0
WORKERS = 6


def _served_serial(addr: str, pki: Path) -> int:
    """The serial of the certificate a new TLS connection to `addr` is shown."""
    host, _, port = addr.rpartition(":")
    ctx = ssl.create_default_context(cafile=str(pki / "ca.pem"))
    ctx.load_cert_chain(pki / "gateway.pem", pki / "gateway.key")
    ctx.set_alpn_protocols(["h2"])
    with socket.create_connection((host, int(port)), timeout=5) as raw, \
            ctx.wrap_socket(raw, server_hostname="echo.shop.local") as conn:
        der = conn.getpeercert(binary_form=True)
    assert der is not None
    return x509.load_der_x509_certificate(der).serial_number


def _serial(path: Path) -> int:
    return x509.load_pem_x509_certificate(path.read_bytes()).serial_number


def _reissue(pki: Path) -> None:
    ensure_pki(pki, IDENTITIES, renew_at=0.0)  # everything is "past half its life"
    make_session_pki(pki)  # echo's, too


async def test_rotation_under_load_fails_no_call(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    pki = tmp_path / "pki"
    shutil.copytree(session_pki(), pki)
    monkeypatch.setenv("SHOP_PKI_DIR", str(pki))  # the echo server's, read at its start
    monkeypatch.setenv("SHOP_TLS_RELOAD_S", "0.1")

    async with running_echo(tmp_path / "echo", slow_s=0.6) as echo:
        ds = Downstream("product", product_pb2_grpc.ProductServiceStub, cap_s=5.0,
                        address=echo.addr, transport=transport())
        ok = 0
        failures: list[BaseException] = []
        stop = time.monotonic() + LOAD_S

        async def worker(n: int) -> None:
            nonlocal ok
            i = 0
            while time.monotonic() < stop:
                i += 1
                pid = "slow" if (i + n) % 5 == 0 else f"p-{n}-{i}"
                try:
                    await ds.call(lambda s: s.GetProduct, product_pb2.GetProductRequest(id=pid),
                                  idempotent=False)  # no retry may hide a failure
                    ok += 1
                except Exception as err:  # every failure is counted
                    failures.append(err)

        load = [asyncio.create_task(worker(n)) for n in range(WORKERS)]
        await asyncio.sleep(0.5)
        first_channel = ds._fixed.channel if ds._fixed else None
        assert first_channel is not None
        before = _served_serial(echo.addr, pki)
        for _ in range(3):
            _reissue(pki)
            await asyncio.sleep(1.0)
        await asyncio.gather(*load)
        now_served = _served_serial(echo.addr, pki)
        channel_now = ds._fixed.channel if ds._fixed else None
        await ds.close()

    assert failures == [], f"{len(failures)} failed calls, first: {failures[0]!r}"
    assert ok > 50, ok
    # The server shows the newest certificate to new connections...
    assert now_served != before
    assert now_served == _serial(pki / f"{ECHO}.pem")
    # ...and the client went over to a new channel.
    assert channel_now is not None and channel_now is not first_channel
