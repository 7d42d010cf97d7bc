"""Mutual TLS for every gRPC hop: credentials from the PKI files, rotated without restart.

`SHOP_MTLS` is on unless set to off/0/false/no. With it on, a process is one identity
(`SHOP_IDENTITY`, else what its entry point claims: the service name, `gateway`,
`operator`) and reads `<identity>.pem`, `<identity>.key` and `ca.pem` from its
`TlsConfig.pki_dir` (`SHOP_PKI_DIR`, else `$SHOP_DATA_DIR/pki`).

The composition root makes the process's one `Transport` (`Transport.of(config,
identity)`: its Mesh, or plaintext with SHOP_MTLS=off, said once, loudly) and hands it to
everything that opens a channel (discovery, every Downstream).

Rotation: the files are looked at (stat) at most every `SHOP_TLS_RELOAD_S` (1 s).
Servers use grpc's dynamic server credentials, whose fetcher runs per new connection
and hands grpc the new pair once the files changed. A client cannot swap the
certificate of a live channel, so `generation()` moves on and each `Endpoint` builds a
new channel for its next call and closes the old one after its calls in flight finish.

Clients check the server's identity, not only its CA: the TLS target name is the
called service's DNS SAN (`<service>.shop.local`), whatever address it was dialled on.
"""

from __future__ import annotations

import logging
import os
import ssl
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
from grpc import aio

from services.common.config import TlsConfig
from services.common.spiffe import dns_name, identity_of_spiffe

log = logging.getLogger("shop.tls")

ANONYMOUS = "anonymous"  # a peer without a verified certificate (the probe port)
_RELOAD_S = TlsConfig().reload_s


@dataclass(frozen=True)
class Material:
    """One identity's files as read at one moment; `version` grows on every change."""

    ca_pem: bytes
    cert_pem: bytes
    key_pem: bytes
    version: int


def _matches(cert_pem: bytes, key_pem: bytes) -> bool:
    """The key is the certificate's: OpenSSL's own check when it loads the pair (what
    grpc's handshake will need). The bytes go through memory files, so the pair checked
    is the pair read, whatever a rotation does to the files meanwhile."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    cert_fd = os.memfd_create("cert", os.MFD_CLOEXEC)
    key_fd = os.memfd_create("key", os.MFD_CLOEXEC)
    try:
        os.write(cert_fd, cert_pem)
        os.write(key_fd, key_pem)
        # An encrypted key gets an empty password (and fails) rather than a prompt.
        ctx.load_cert_chain(f"/proc/self/fd/{cert_fd}", f"/proc/self/fd/{key_fd}",
                            password=lambda: b"")
    except (ssl.SSLError, OSError):
        return False
    finally:
        os.close(cert_fd)
        os.close(key_fd)
    return True


class IdentityFiles:
    """The certificate, key and CA of one identity, reloaded when they change on disk."""

    def __init__(self, directory: Path, identity: str, *, reload_s: float = _RELOAD_S) -> None:
        self.directory = directory
        self.identity = identity
        self.paths = (directory / "ca.pem", directory / f"{identity}.pem",
                      directory / f"{identity}.key")
        self.reload_s = reload_s
        self._lock = threading.Lock()
        self._stamp: tuple[tuple[int, int, int], ...] | None = None
        self._next_look = 0.0
        self._material: Material | None = None

    def _stat(self) -> tuple[tuple[int, int, int], ...]:
        out = []
        for path in self.paths:
            st = path.stat()
            out.append((st.st_mtime_ns, st.st_size, st.st_ino))
        return tuple(out)

    def load(self) -> Material:
        """The current material; raises FileNotFoundError naming what is missing."""
        with self._lock:
            if self._material is None:
                self._refresh(force=True)
            if self._material is None:
                missing = [str(p) for p in self.paths if not p.exists()]
                raise FileNotFoundError(
                    f"TLS files for {self.identity!r} missing or unusable: "
                    f"{', '.join(missing) or 'certificate and key do not match'} "
                    "(SHOP_MTLS=on needs the PKI: `make run` creates it, or set SHOP_PKI_DIR)"
                )
            return self._material

    def current(self) -> Material:
        """Like load(), but looks at the files again at most every `reload_s`."""
        now = time.monotonic()
        if self._material is not None and now < self._next_look:
            return self._material
        with self._lock:
            if now >= self._next_look:
                self._next_look = now + self.reload_s
                self._refresh(force=False)
        return self.load()

    def _refresh(self, *, force: bool) -> None:
        try:
            stamp = self._stat()
        except OSError:
            return  # mid-rotation or gone: keep what we have
        if not force and stamp == self._stamp:
            return
        try:
            ca, cert, key = (p.read_bytes() for p in self.paths)
        except OSError:
            return
        if not _matches(cert, key):
            return  # the key was replaced but not yet its certificate: look again later
        self._stamp = stamp
        version = 1 if self._material is None else self._material.version + 1
        if self._material is not None:
            log.info("certificate files changed; rotating",
                     extra={"identity": self.identity, "version": version})
        self._material = Material(ca, cert, key, version)


def server_credentials(files: IdentityFiles) -> grpc.ServerCredentials:
    """Require and verify a client certificate from our CA; pick up renewed files on the
    next new connection."""
    first = files.load()
    served = [first.version]

    def config(m: Material) -> Any:
        return grpc.ssl_server_certificate_configuration(
            [(m.key_pem, m.cert_pem)], root_certificates=m.ca_pem)

    def fetch() -> Any:
        m = files.current()
        if m.version == served[0]:
            return None  # unchanged
        served[0] = m.version
        return config(m)

    return grpc.dynamic_ssl_server_credentials(
        config(first), fetch, require_client_authentication=True)


def target_options(service: str) -> list[tuple[str, str]]:
    """Check the server against `service`'s identity, whatever address was dialled."""
    name = dns_name(service)
    return [("grpc.ssl_target_name_override", name), ("grpc.default_authority", name)]


class Mesh:
    """This process's side of mTLS: its identity, its files, its channel credentials."""

    def __init__(self, identity: str, directory: Path, *, reload_s: float = _RELOAD_S) -> None:
        self.identity = identity
        self.files = IdentityFiles(directory, identity, reload_s=reload_s)
        self._creds: tuple[int, grpc.ChannelCredentials] | None = None

    @property
    def generation(self) -> int:
        """Grows when the files change: channels made before are to be replaced."""
        return self.files.current().version

    def channel_credentials(self) -> grpc.ChannelCredentials:
        m = self.files.current()
        if self._creds is None or self._creds[0] != m.version:
            self._creds = (m.version, grpc.ssl_channel_credentials(
                root_certificates=m.ca_pem, private_key=m.key_pem,
                certificate_chain=m.cert_pem))
        return self._creds[1]

    def server_credentials(self) -> grpc.ServerCredentials:
        return server_credentials(self.files)

    def aio_channel(self, addr: str, service: str,
                    options: Sequence[tuple[str, Any]] = ()) -> aio.Channel:
        return aio.secure_channel(addr, self.channel_credentials(),
                                  options=[*options, *target_options(service)])

    def sync_channel(self, addr: str, service: str,
                     options: Sequence[tuple[str, Any]] = ()) -> grpc.Channel:
        return grpc.secure_channel(addr, self.channel_credentials(),
                                   options=[*options, *target_options(service)])


class Transport:
    """How one process's gRPC channels are made: mTLS as its identity (its `Mesh`), or
    plaintext with SHOP_MTLS=off. One per process, made by its composition root."""

    def __init__(self, mesh: Mesh | None) -> None:
        self.mesh = mesh

    @classmethod
    def of(cls, config: TlsConfig, identity: str, *, warn: bool = True) -> Transport:
        """The transport of a process claiming `identity` (SHOP_IDENTITY wins); a
        plaintext one with SHOP_MTLS=off, said loudly (unless `warn` is off: a tool
        making one per call)."""
        if not config.enabled:
            if warn:
                log.warning("SHOP_MTLS=off: gRPC runs in PLAINTEXT, callers are not "
                            "authenticated and the call policy is NOT enforced; "
                            "for experiments only")
            return cls(None)
        who = config.identity_of(identity)
        if not who:
            raise RuntimeError("SHOP_MTLS=on but this process has no identity "
                               "(set SHOP_IDENTITY)")
        return cls(Mesh(who, config.pki_dir, reload_s=config.reload_s))

    @classmethod
    def plaintext(cls) -> Transport:
        return cls(None)

    @property
    def identity(self) -> str:
        return "" if self.mesh is None else self.mesh.identity

    def generation(self) -> int:
        """The credential generation (0 in plaintext): channels made at another one are
        to be replaced."""
        return 0 if self.mesh is None else self.mesh.generation

    def open_channel(self, addr: str, service: str,
                     options: Sequence[tuple[str, Any]]) -> aio.Channel:
        """The one place a service-to-service channel is made: mTLS unless SHOP_MTLS=off."""
        if self.mesh is None:
            return aio.insecure_channel(addr, options=options)
        return self.mesh.aio_channel(addr, service, options)

    def open_sync_channel(self, addr: str, service: str,
                          options: Sequence[tuple[str, Any]] = ()) -> grpc.Channel:
        """The blocking twin of open_channel (supervisor health probes, shopctl)."""
        if self.mesh is None:
            return grpc.insecure_channel(addr, options=options)
        return self.mesh.sync_channel(addr, service, options)


def peer_identity(ctx: Any) -> str:
    """The caller's identity from its verified certificate's SPIFFE id, else
    ANONYMOUS (plaintext probe port, or a URI outside our trust domain)."""
    auth: dict[str, list[bytes]] = ctx.auth_context() or {}
    ids = auth.get("peer_spiffe_id") or []
    if len(ids) != 1:
        return ANONYMOUS
    raw = ids[0]
    uri = raw.decode() if isinstance(raw, bytes) else str(raw)
    return identity_of_spiffe(uri) or ANONYMOUS


__all__ = [
    "ANONYMOUS",
    "IdentityFiles",
    "Material",
    "Mesh",
    "Transport",
    "peer_identity",
    "server_credentials",
    "target_options",
]
