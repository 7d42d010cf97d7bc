"""The bench's side of mTLS: the PKI of a benched system and channels as an identity.

`prepare_pki(data_dir)` makes the certificates (in `SHOP_PKI_DIR`, else
`<data dir>/pki`, which it then names in SHOP_PKI_DIR for the system's processes and
the bench's own probes, made as the operator); the bench then calls as the identity the
call policy names: SetStock as the back office, user-facing calls as the gateway.
With SHOP_MTLS=off everything is plaintext.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import grpc
from grpc import aio

from services.common import tls
from services.common.pki import ensure_pki
from services.common.settings import load_tls_config


def prepare_pki(data_dir: Path) -> None:
    if not load_tls_config().enabled:
        return
    pki = Path(os.environ.get("SHOP_PKI_DIR") or data_dir / "pki")
    os.environ["SHOP_PKI_DIR"] = str(pki)  # the readiness probes are the operator's
    ensure_pki(pki)


def aio_channel(addr: str, service: str, identity: str,
                options: Sequence[tuple[str, Any]] = ()) -> aio.Channel:
    return tls.Transport.of(load_tls_config(), identity, warn=False).open_channel(
        addr, service, options)


def sync_channel(addr: str, service: str, identity: str,
                 options: Sequence[tuple[str, Any]] = ()) -> grpc.Channel:
    return tls.Transport.of(load_tls_config(), identity, warn=False).open_sync_channel(
        addr, service, options)
