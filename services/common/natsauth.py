"""NATS on the mesh: TLS on the client port, one user per identity, subject permissions.

With SHOP_MTLS on, nats-server (ops/natsd.py) requires TLS with a client certificate
from the shop CA and maps the certificate to a user by its DNS SAN
(`<identity>.shop.local`: NATS maps by DNS SAN or email, never by URI SAN). Each user
may publish only its own events (the producer column of the event catalogue), dead
letters, its own registry keys and the JetStream API calls a client needs, and may
subscribe to inboxes and consumer advisories only (consumers are pull consumers, whose
messages come to inboxes). A service publishing another's subject is refused by the
server. The operator (shopctl, tests) may do everything: it replays dead letters to
any subject and manages streams.

`NatsAuth(identity, tls).options()` are the nats.connect keyword arguments of a
process: its certificate (the identity `SHOP_NATS_IDENTITY`, else the process identity,
see `Settings.nats_identity`). The composition root makes it once and hands it to every
connection (the Bus, the registry link, the console).
"""

from __future__ import annotations

import json
import logging
import ssl
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from services.common import tls
from services.common.config import TlsConfig
from services.common.events import CATALOGUE, DLQ_STREAM, STREAM
from services.common.spiffe import GATEWAY, IDENTITIES, NATS, OPERATOR, dns_name

REGISTRY_BUCKET = "shop_registry"  # services.common.registry.BUCKET (not imported: nats-py)

# JetStream API a service client uses: account info, stream and consumer set-up,
# pull requests, KV reads. Deleting or purging streams is the operator's.
_JS_CLIENT = [
    "$JS.API.INFO",
    "$JS.API.STREAM.INFO.*",
    "$JS.API.STREAM.NAMES",
    "$JS.API.STREAM.LIST",
    f"$JS.API.STREAM.CREATE.{STREAM}",
    f"$JS.API.STREAM.CREATE.{DLQ_STREAM}",
    f"$JS.API.STREAM.CREATE.KV_{REGISTRY_BUCKET}",
    f"$JS.API.STREAM.UPDATE.{STREAM}",
    f"$JS.API.STREAM.UPDATE.{DLQ_STREAM}",
    f"$JS.API.STREAM.UPDATE.KV_{REGISTRY_BUCKET}",
    "$JS.API.STREAM.MSG.GET.*",
    "$JS.API.DIRECT.GET.>",
    "$JS.API.CONSUMER.>",
    "$JS.ACK.>",
    "$JS.FC.>",
]


def user_name(identity: str) -> str:
    return dns_name(identity)


class _RenewingContext(ssl.SSLContext):
    """A client context that loads renewed certificate files before each new TLS
    connection (nats-py keeps one context for all its reconnects)."""

    files: tls.IdentityFiles
    loaded: int

    def refresh(self) -> None:
        m = self.files.current()
        if m.version != self.loaded:
            ca, cert, key = self.files.paths
            self.load_verify_locations(cafile=str(ca))
            self.load_cert_chain(cert, key)
            self.loaded = m.version

    def wrap_bio(self, *args: Any, **kwargs: Any) -> ssl.SSLObject:
        self.refresh()
        return super().wrap_bio(*args, **kwargs)

    def wrap_socket(self, *args: Any, **kwargs: Any) -> ssl.SSLSocket:
        self.refresh()
        return super().wrap_socket(*args, **kwargs)


def client_context(identity: str, directory: Path, *,
                   reload_s: float = TlsConfig().reload_s) -> ssl.SSLContext:
    ctx = _RenewingContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.files = tls.IdentityFiles(directory, identity, reload_s=reload_s)
    ctx.loaded = 0
    ctx.refresh()
    return ctx


class _SslEofNoise(logging.Filter):
    """asyncio warns on every TLS connection nats-py closes (its protocol's
    eof_received returns True, which TLS ignores): nothing to act on."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "eof_received() has no effect when using ssl" not in record.getMessage()


def _quiet_ssl_eof() -> None:
    asyncio_log = logging.getLogger("asyncio")
    if not any(isinstance(f, _SslEofNoise) for f in asyncio_log.filters):
        asyncio_log.addFilter(_SslEofNoise())


def connect_options(identity: str, config: TlsConfig) -> dict[str, Any]:
    """nats.connect(**...) arguments: the certificate, and the server must be NATS."""
    if not config.enabled:
        return {}
    _quiet_ssl_eof()
    if not identity:
        raise RuntimeError("SHOP_MTLS=on but this process has no identity for NATS")
    return {"tls": client_context(identity, config.pki_dir, reload_s=config.reload_s),
            "tls_hostname": dns_name(NATS)}


@dataclass(frozen=True, slots=True)
class NatsAuth:
    """Who a process is on NATS: the identity its connections present (with mTLS on)."""

    identity: str
    tls: TlsConfig

    @classmethod
    def plaintext(cls) -> NatsAuth:
        return cls("", TlsConfig(enabled=False))

    def options(self) -> dict[str, Any]:
        """nats.connect(**...) arguments (a new TLS context per call)."""
        return connect_options(self.identity, self.tls)


def permissions(identity: str) -> dict[str, Any]:
    """What `identity` may publish and subscribe to."""
    if identity == OPERATOR:
        return {"publish": {"allow": [">"]}, "subscribe": {"allow": [">"]}}
    own = sorted(s for s, spec in CATALOGUE.items() if spec.producer == identity)
    watch: list[str] = []
    if identity == GATEWAY:
        # The console, for admins only (the gateway checks the role): a live tail of every
        # event, and a dead letter replayed on its own subject and then taken off the DLQ.
        watch = sorted({f"{subject.split('.')[0]}.>" for subject in CATALOGUE})
        own = sorted({*own, *CATALOGUE, f"$JS.API.STREAM.MSG.DELETE.{DLQ_STREAM}"})
    return {
        "publish": {"allow": [*own, "dlq.>", f"$KV.{REGISTRY_BUCKET}.{identity}.>",
                              *_JS_CLIENT]},
        "subscribe": {"allow": ["_INBOX.>", "$JS.EVENT.ADVISORY.>", *watch]},
        # Replies to requests: not to be used for sending messages anywhere else.
        "allow_responses": True,
    }


def server_config(directory: Path) -> str:
    """The `tls` and `authorization` blocks of nats.conf (JSON is valid NATS config)."""
    users = [{"user": user_name(i), "permissions": permissions(i)}
             for i in IDENTITIES if i != NATS]
    block = {
        "cert_file": str(directory / f"{NATS}.pem"),
        "key_file": str(directory / f"{NATS}.key"),
        "ca_file": str(directory / "ca.pem"),
        "verify_and_map": True,
        "timeout": 5,
    }
    return (f"tls: {json.dumps(block)}\n"
            f"authorization: {json.dumps({'users': users}, indent=1)}\n")


__all__ = [
    "NatsAuth",
    "client_context",
    "connect_options",
    "permissions",
    "server_config",
    "user_name",
]
