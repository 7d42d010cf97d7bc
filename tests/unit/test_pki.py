"""The development PKI: identities in SANs, short lives, renewal past half-life."""

from __future__ import annotations

import datetime as dt
import os
from pathlib import Path

from cryptography import x509

from services.common.pki import ensure_pki, issue, load_authority
from services.common.spiffe import IDENTITIES, dns_name, identity_of_spiffe, spiffe_id
from services.common.tls import IdentityFiles


def _cert(path: Path) -> x509.Certificate:
    return x509.load_pem_x509_certificate(path.read_bytes())


def test_every_identity_gets_one_spiffe_uri_and_its_dns_name(tmp_path: Path) -> None:
    issued = ensure_pki(tmp_path)
    assert sorted(issued) == sorted(IDENTITIES)
    ca = _cert(tmp_path / "ca.pem")
    for identity in IDENTITIES:
        cert = _cert(tmp_path / f"{identity}.pem")
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        assert san.get_values_for_type(x509.UniformResourceIdentifier) == [spiffe_id(identity)]
        assert san.get_values_for_type(x509.DNSName) == [dns_name(identity), "localhost"]
        cert.verify_directly_issued_by(ca)
        life = cert.not_valid_after_utc - cert.not_valid_before_utc
        assert life <= dt.timedelta(hours=12), identity  # short-lived
        assert (os.stat(tmp_path / f"{identity}.key").st_mode & 0o077) == 0


def test_ensure_is_idempotent_and_renews_past_half_life(tmp_path: Path) -> None:
    ensure_pki(tmp_path)
    assert ensure_pki(tmp_path) == []
    ca = load_authority(tmp_path)
    assert ca is not None
    old = dt.datetime.now(dt.UTC) - dt.timedelta(hours=5)
    cert, key = issue(ca, "payment", not_before=old, lifetime_s=8 * 3600)
    (tmp_path / "payment.pem").write_bytes(cert)
    (tmp_path / "payment.key").write_bytes(key)
    assert ensure_pki(tmp_path) == ["payment"]
    assert _cert(tmp_path / "payment.pem").not_valid_before_utc > old


def test_spiffe_ids_outside_the_trust_domain_are_nobody() -> None:
    assert identity_of_spiffe("spiffe://shop.local/order") == "order"
    assert identity_of_spiffe("spiffe://evil.example/order") is None
    assert identity_of_spiffe("spiffe://shop.local/a/b") is None
    assert identity_of_spiffe("spiffe://shop.local/") is None


def test_identity_files_reload_on_change_and_skip_a_half_written_pair(tmp_path: Path) -> None:
    ensure_pki(tmp_path)
    files = IdentityFiles(tmp_path, "order", reload_s=0.0)
    first = files.current()
    ca = load_authority(tmp_path)
    assert ca is not None
    cert, key = issue(ca, "order")
    (tmp_path / "order.key").write_bytes(key)  # the key first: no match yet
    assert files.current().version == first.version
    (tmp_path / "order.pem").write_bytes(cert)
    now = files.current()
    assert now.version == first.version + 1
    assert now.cert_pem == cert and now.key_pem == key


def test_a_pair_is_used_only_when_the_key_is_the_certificates(tmp_path: Path) -> None:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    from services.common.tls import _matches

    ensure_pki(tmp_path)
    ca = load_authority(tmp_path)
    assert ca is not None
    cert, key = issue(ca, "order")
    _, other_key = issue(ca, "cart")
    assert _matches(cert, key)
    assert not _matches(cert, other_key)
    assert not _matches(b"not a certificate", key)
    assert not _matches(cert, b"")
    # An encrypted key is refused, never a password prompt.
    locked = ec.generate_private_key(ec.SECP256R1()).private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.BestAvailableEncryption(b"secret"))
    assert not _matches(cert, locked)
