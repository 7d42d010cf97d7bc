"""The bench's side of mTLS: the PKI of a benched system and channels as an identity.

The system under test reads its certificates from `<data dir>/pki` (its processes get
SHOP_DATA_DIR), so the bench makes them there and calls with the identity the call
policy names: SetStock as the back office, user-facing calls as the gateway.
With SHOP_MTLS=off everything is plaintext.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import grpc
from grpc import aio

from services.common import tls
from services.common.pki import ensure_pki


def prepare_pki(data_dir: Path) -> None:
    if tls.mtls_enabled():
        ensure_pki(data_dir / "pki")


def aio_channel(data_dir: Path, addr: str, service: str, identity: str,
                options: Sequence[tuple[str, Any]] = ()) -> aio.Channel:
    if not tls.mtls_enabled():
        return aio.insecure_channel(addr, options=options)
    return tls.Mesh(identity, data_dir / "pki").aio_channel(addr, service, options)


def sync_channel(data_dir: Path, addr: str, service: str, identity: str,
                 options: Sequence[tuple[str, Any]] = ()) -> grpc.Channel:
    if not tls.mtls_enabled():
        return grpc.insecure_channel(addr, options=options)
    return tls.Mesh(identity, data_dir / "pki").sync_channel(addr, service, options)
