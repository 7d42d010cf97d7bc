"""The development PKI: one CA and one short-lived certificate per identity.

Files under the PKI directory (`TlsConfig.pki_dir`: `SHOP_PKI_DIR`, default
`$SHOP_DATA_DIR/pki`): `ca.pem` (+ `ca.key`, which only this module reads) and
`<identity>.pem` / `<identity>.key` for every identity. A certificate names its identity twice:
once as the one URI SAN `spiffe://shop.local/<identity>` (what the call policy reads,
X509-SVID style: exactly one URI SAN), once as the DNS SAN `<identity>.shop.local`
(what a client checks the server against, and what NATS maps users by).

`ensure_pki(dir)` creates what is missing and renews every certificate past half its
life, so a supervisor calling it now and then rotates certificates before they expire;
the processes pick new files up without a restart (see tls.py). In production the
files come from something else (cert-manager, SPIRE) and this module is not used.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from services.common.spiffe import IDENTITIES, dns_name, spiffe_id

DEFAULT_LIFETIME_S = 8 * 3600.0
CA_LIFETIME_S = 30 * 86400.0
LOCAL_NAMES = ("localhost",)
LOCAL_ADDRS = ("127.0.0.1", "::1")
# Certificates start a little in the past: two machines' clocks never agree exactly.
_BACKDATE_S = 300.0


@dataclass(frozen=True)
class Authority:
    """A CA: its certificate and key."""

    cert: x509.Certificate
    key: ec.EllipticCurvePrivateKey

    @property
    def pem(self) -> bytes:
        return self.cert.public_bytes(serialization.Encoding.PEM)


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def _write(path: Path, data: bytes, *, secret: bool = False) -> None:
    """Atomic replace, so a reader never sees half a file."""
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_bytes(data)
    if secret:
        os.chmod(tmp, 0o600)
    tmp.replace(path)


def new_authority(name: str = "shop development CA",
                  lifetime_s: float = CA_LIFETIME_S) -> Authority:
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = _now()
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(seconds=_BACKDATE_S))
        .not_valid_after(now + dt.timedelta(seconds=lifetime_s))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True, key_cert_sign=True, crl_sign=True,
                content_commitment=False, key_encipherment=False, data_encipherment=False,
                key_agreement=False, encipher_only=False, decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()),
                       critical=False)
        .sign(key, hashes.SHA256())
    )
    return Authority(cert, key)


def issue(
    ca: Authority,
    identity: str,
    *,
    lifetime_s: float = DEFAULT_LIFETIME_S,
    not_before: dt.datetime | None = None,
    dns_names: Sequence[str] = (),
) -> tuple[bytes, bytes]:
    """(certificate PEM, key PEM) for `identity`, signed by `ca`; usable as server and
    client certificate. `dns_names` replaces the default DNS SAN (tests serving several
    services on one port)."""
    key = ec.generate_private_key(ec.SECP256R1())
    start = not_before or (_now() - dt.timedelta(seconds=_BACKDATE_S))
    names: list[x509.GeneralName] = [
        x509.UniformResourceIdentifier(spiffe_id(identity)),
        *(x509.DNSName(n) for n in (dns_names or (dns_name(identity),))),
        # For a person's tools on this machine (grpcurl dialling localhost:50054); shop's
        # own clients always check the <identity>.shop.local name instead.
        *(x509.DNSName(n) for n in LOCAL_NAMES),
        *(x509.IPAddress(ipaddress.ip_address(a)) for a in LOCAL_ADDRS),
    ]
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "shop"),
            x509.NameAttribute(NameOID.COMMON_NAME, identity),
        ]))
        .issuer_name(ca.cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(start + dt.timedelta(seconds=lifetime_s))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.SubjectAlternativeName(names), critical=False)
        .add_extension(
            x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH,
                                   ExtendedKeyUsageOID.CLIENT_AUTH]),
            critical=False,
        )
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca.key.public_key()),
            critical=False,
        )
        .sign(ca.key, hashes.SHA256())
    )
    return cert.public_bytes(serialization.Encoding.PEM), _key_pem(key)


def write_identity(directory: Path, identity: str, cert_pem: bytes, key_pem: bytes) -> None:
    """Key first, then certificate: a reader that sees the new certificate also finds
    its key (tls.py checks that the two match and keeps the old pair otherwise)."""
    _write(directory / f"{identity}.key", key_pem, secret=True)
    _write(directory / f"{identity}.pem", cert_pem)


def load_authority(directory: Path) -> Authority | None:
    try:
        cert = x509.load_pem_x509_certificate((directory / "ca.pem").read_bytes())
        key = serialization.load_pem_private_key((directory / "ca.key").read_bytes(), None)
    except (OSError, ValueError):
        return None
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        return None
    if cert.not_valid_after_utc - _now() < dt.timedelta(days=1):
        return None  # about to expire: a new CA (and so new leaves) for everyone
    return Authority(cert, key)


def _needs_renewal(path: Path, ca: Authority, renew_at: float) -> bool:
    try:
        cert = x509.load_pem_x509_certificate(path.read_bytes())
    except (OSError, ValueError):
        return True
    if cert.issuer != ca.cert.subject:
        return True
    try:
        cert.verify_directly_issued_by(ca.cert)
    except (ValueError, TypeError, Exception):  # InvalidSignature and friends
        return True
    start, end = cert.not_valid_before_utc, cert.not_valid_after_utc
    return _now() >= start + (end - start) * renew_at


def ensure_pki(
    directory: Path,
    identities: Iterable[str] = IDENTITIES,
    *,
    lifetime_s: float = DEFAULT_LIFETIME_S,
    renew_at: float = 0.5,
) -> list[str]:
    """Create the CA and each identity's certificate where missing; renew a certificate
    past `renew_at` of its life. Returns the identities (re)issued."""
    directory.mkdir(parents=True, exist_ok=True)
    ca = load_authority(directory)
    if ca is None:
        ca = new_authority()
        _write(directory / "ca.key", _key_pem(ca.key), secret=True)
        _write(directory / "ca.pem", ca.pem)
    issued: list[str] = []
    for identity in identities:
        if _needs_renewal(directory / f"{identity}.pem", ca, renew_at):
            cert_pem, key_pem = issue(ca, identity, lifetime_s=lifetime_s)
            write_identity(directory, identity, cert_pem, key_pem)
            issued.append(identity)
    return issued


__all__ = [
    "DEFAULT_LIFETIME_S",
    "Authority",
    "ensure_pki",
    "issue",
    "load_authority",
    "new_authority",
    "write_identity",
]
