"""Test clients on the mTLS mesh: the session's PKI and channels that call as an identity
the call policy allows.

`channel(addr)` / `sync_channel(addr)` look like grpc channels; each RPC goes over a
channel presenting the certificate of an identity the policy names for that RPC (the
gateway when it may, since tests send `x-user-id` the way the gateway does), and checks
the server against the service the RPC belongs to (`shop.inventory.v1...` ->
inventory). Health and reflection belong to no service: give `server=`.

`as_identity(identity, addr, server)` is one plain channel of one identity, for tests of
the policy itself. With SHOP_MTLS=off every channel is plaintext.
"""

from __future__ import annotations

import functools
import ssl
from collections.abc import Sequence
from pathlib import Path
from typing import Any, cast

import grpc
from grpc import aio

from services.common import tls
from services.common.config import NatsConfig
from services.common.natsauth import NatsAuth
from services.common.pki import ensure_pki, issue, load_authority
from services.common.policy import CallPolicy, load_policy
from services.common.settings import Settings, load_tls_config
from services.common.spiffe import GATEWAY, IDENTITIES, OPERATOR, dns_name
from services.common.wiring import Wiring
from tests.support.faultproxy import ProxyTls

# The echo stand-in (tests/support/echo_app.py) serves ProductService as "echo".
ECHO = "echo"
TEST_IDENTITIES: tuple[str, ...] = (*IDENTITIES, ECHO)


def make_session_pki(directory: Path) -> Path:
    """Every identity's certificate; echo's also valid as product (it serves that API)."""
    ensure_pki(directory, IDENTITIES)
    ca = load_authority(directory)
    assert ca is not None
    cert, key = issue(ca, ECHO, dns_names=("echo.shop.local", "product.shop.local"))
    (directory / f"{ECHO}.key").write_bytes(key)
    (directory / f"{ECHO}.pem").write_bytes(cert)
    return directory


def pki() -> Path:
    return load_tls_config().pki_dir


def mtls_enabled() -> bool:
    return load_tls_config().enabled


def transport(identity: str = GATEWAY) -> tls.Transport:
    """The test process's own calls: as the gateway, like the in-process gateways it
    hosts (the environment's TLS settings, as a process reads them at start)."""
    return tls.Transport.of(load_tls_config(), identity, warn=False)


def nats_auth(identity: str = OPERATOR) -> NatsAuth:
    """The test process on NATS: the operator (it sets up streams, publishes any event)."""
    return NatsAuth(identity, load_tls_config())


def settings_for(service: str, **values: Any) -> Settings:
    """A process's settings for a part run in the test process: the session's TLS, NATS
    as the operator, anything else as given."""
    values.setdefault("tls", load_tls_config())
    values.setdefault("nats", NatsConfig(identity=OPERATOR))
    return Settings(service=service, **values)


def process_wiring(**values: Any) -> Wiring:
    """The wiring of the test process: its transport and NATS identity, no discovery."""
    values.setdefault("transport", transport())
    values.setdefault("nats", nats_auth())
    return Wiring(**values)


@functools.cache
def _policy() -> CallPolicy:
    return load_policy()


def identity_for(method: str) -> str:
    """Whom a test calls `method` as: the gateway if the policy lets it, else the first
    identity the policy names (tests of refusals use as_identity)."""
    allowed = _policy().allowed(method)
    if GATEWAY in allowed or not allowed:
        return GATEWAY
    return sorted(allowed - {tls.ANONYMOUS})[0]


def server_of(method: str) -> str | None:
    """`/shop.inventory.v1.InventoryService/GetStock` -> "inventory"."""
    parts = method.lstrip("/").split(".")
    if len(parts) >= 3 and parts[0] == "shop":
        return parts[1]
    return None


def _creds(identity: str) -> grpc.ChannelCredentials:
    d = pki()
    return grpc.ssl_channel_credentials(
        root_certificates=(d / "ca.pem").read_bytes(),
        private_key=(d / f"{identity}.key").read_bytes(),
        certificate_chain=(d / f"{identity}.pem").read_bytes(),
    )


def as_identity(identity: str, addr: str, server: str,
                options: Sequence[tuple[str, Any]] = ()) -> aio.Channel:
    """An aio channel presenting `identity`'s certificate, checking the server is
    `server`."""
    if not mtls_enabled():
        return aio.insecure_channel(addr, options=options)
    return aio.secure_channel(addr, _creds(identity),
                              options=[*options, *tls.target_options(server)])


def sync_as_identity(identity: str, addr: str, server: str,
                     options: Sequence[tuple[str, Any]] = ()) -> grpc.Channel:
    if not mtls_enabled():
        return grpc.insecure_channel(addr, options=options)
    return grpc.secure_channel(addr, _creds(identity),
                               options=[*options, *tls.target_options(server)])


class _PolicyChannelBase:
    def __init__(self, addr: str, server: str | None,
                 options: Sequence[tuple[str, Any]]) -> None:
        self.addr = addr
        self.server = server
        self.options = list(options)
        self._channels: dict[tuple[str, str], Any] = {}

    def _open(self, identity: str, server: str) -> Any:
        raise NotImplementedError

    def _for(self, method: str) -> Any:
        server = self.server or server_of(method)
        if server is None:
            raise ValueError(f"{method} belongs to no service: give server= to the channel")
        identity = identity_for(method)
        key = (identity, server)
        chan = self._channels.get(key)
        if chan is None:
            chan = self._channels[key] = self._open(identity, server)
        return chan

    def unary_unary(self, method: str, *args: Any, **kwargs: Any) -> Any:
        return self._for(method).unary_unary(method, *args, **kwargs)

    def unary_stream(self, method: str, *args: Any, **kwargs: Any) -> Any:
        return self._for(method).unary_stream(method, *args, **kwargs)

    def stream_unary(self, method: str, *args: Any, **kwargs: Any) -> Any:
        return self._for(method).stream_unary(method, *args, **kwargs)

    def stream_stream(self, method: str, *args: Any, **kwargs: Any) -> Any:
        return self._for(method).stream_stream(method, *args, **kwargs)


class PolicyChannel(_PolicyChannelBase):
    """An aio channel look-alike (see the module doc)."""

    def _open(self, identity: str, server: str) -> aio.Channel:
        return as_identity(identity, self.addr, server, self.options)

    async def close(self, grace: float | None = None) -> None:
        chans, self._channels = list(self._channels.values()), {}
        for chan in chans:
            await chan.close(grace)

    async def __aenter__(self) -> PolicyChannel:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()


class SyncPolicyChannel(_PolicyChannelBase):
    """A blocking grpc channel look-alike (see the module doc)."""

    def _open(self, identity: str, server: str) -> grpc.Channel:
        return sync_as_identity(identity, self.addr, server, self.options)

    def close(self) -> None:
        chans, self._channels = list(self._channels.values()), {}
        for chan in chans:
            chan.close()

    def __enter__(self) -> SyncPolicyChannel:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def channel(addr: str, *, server: str | None = None,
            options: Sequence[tuple[str, Any]] = ()) -> aio.Channel:
    """Drop-in for `aio.insecure_channel(addr)` in tests (typed as one, so a stub made on
    it is the .pyi's async stub)."""
    return cast(aio.Channel, PolicyChannel(addr, server, options))


def sync_channel(addr: str, *, server: str | None = None,
                 options: Sequence[tuple[str, Any]] = ()) -> Any:
    """Drop-in for `grpc.insecure_channel(addr)` in tests."""
    return SyncPolicyChannel(addr, server, options)


def proxy_tls(target: str, caller: str) -> ProxyTls | None:
    """TLS for a FaultProxy between `caller` and `target` (None with mTLS off)."""
    if not mtls_enabled():
        return None
    d = pki()
    server = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH, cafile=str(d / "ca.pem"))
    server.verify_mode = ssl.CERT_REQUIRED
    server.load_cert_chain(d / f"{target}.pem", d / f"{target}.key")
    client = ssl.create_default_context(cafile=str(d / "ca.pem"))
    client.load_cert_chain(d / f"{caller}.pem", d / f"{caller}.key")
    for ctx in (server, client):
        ctx.set_alpn_protocols(["h2"])
    return ProxyTls(server, client, dns_name(target))


def server_credentials(*names: str) -> grpc.ServerCredentials:
    """Credentials for an in-test server answering for several services on one port:
    a certificate with each name's DNS SAN (identity: the first)."""
    d = pki()
    ca = load_authority(d)
    assert ca is not None, f"no CA under {d}"
    cert, key = issue(ca, names[0], dns_names=[f"{n}.shop.local" for n in names])
    return grpc.ssl_server_credentials(
        [(key, cert)], root_certificates=(d / "ca.pem").read_bytes(),
        require_client_auth=True)


def add_port(server: aio.Server, addr: str, *names: str) -> int:
    """Bind an in-test server: mTLS answering as `names`, or plaintext with mTLS off."""
    if not mtls_enabled():
        return int(server.add_insecure_port(addr))
    return int(server.add_secure_port(addr, server_credentials(*names)))


__all__ = [
    "ECHO",
    "TEST_IDENTITIES",
    "PolicyChannel",
    "SyncPolicyChannel",
    "add_port",
    "as_identity",
    "channel",
    "identity_for",
    "make_session_pki",
    "mtls_enabled",
    "nats_auth",
    "pki",
    "process_wiring",
    "proxy_tls",
    "server_credentials",
    "server_of",
    "settings_for",
    "sync_as_identity",
    "sync_channel",
    "transport",
]
