"""The mail sender in-process, on a real database and a real SMTP server: the breaker
stops a round without spending attempts and lets one probe through, temporary failures
end as expired after the give-up time, STARTTLS / implicit TLS with a login work against
a server whose certificate is checked, and a stopped sender hands its claims back."""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import ipaddress
import ssl
import time
from collections.abc import AsyncIterator
from dataclasses import replace
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from services.common.db import Database, Tx
from services.notification import domain, store
from services.notification.mailconfig import MailSettings, parse_smtp_url
from services.notification.metrics import MailMetrics
from services.notification.sender import MailSender
from services.notification.store import SCHEMA, DeliveryStore
from tests.support.smtp import SmtpServer, Stalled

pytestmark = pytest.mark.timeout(60)


@pytest.fixture
async def db(tmp_path: Path) -> AsyncIterator[Database]:
    database = await Database.open(tmp_path / "notification.db", schema=SCHEMA, durable=False)
    try:
        yield database
    finally:
        await database.close()


async def owe(db: Database, count: int) -> list[str]:
    """`count` welcome notifications, each owing a mail; their ids."""
    def write(tx: Tx) -> list[str]:
        ids = []
        for i in range(count):
            store.save_recipient_sync(tx, f"u{i}", f"u{i}@example.com", f"U {i}")
            made = store.insert_sync(tx, domain.welcome(f"u{i}", f"U {i}"), f"ev-{i}",
                                     mail=True, request_id=f"req-{i}")
            assert made is not None
            ids.append(made)
        return ids
    return await db.write(write)


async def rows(db: Database) -> dict[str, tuple[str, int, str]]:
    """notification id -> (status, attempts, error)."""
    got = await db.read(lambda tx: tx.all(
        "SELECT notification_id, status, attempts, error FROM deliveries"))
    return {r[0]: (r[1], int(r[2]), r[3]) for r in got}


def settings(url: str, **over: object) -> MailSettings:
    base = MailSettings(target=parse_smtp_url(url), attempt_timeout_s=5.0, backoff_s=0.05,
                        backoff_cap_s=0.1, breaker_fail_max=2, breaker_reset_s=0.5,
                        concurrency=1)
    return replace(base, **over)  # type: ignore[arg-type]


async def test_breaker_stops_the_round_then_one_probe_goes_first(db: Database) -> None:
    smtp = SmtpServer()  # not started: connection refused
    ids = await owe(db, 5)
    metrics = MailMetrics()
    sender = MailSender(DeliveryStore(db), settings(smtp.url), metrics)

    wait = await sender.drain()
    got = await rows(db)
    # Two failures open the breaker; the other three were not even tried.
    assert sorted(a for _, a, _ in got.values()) == [0, 0, 0, 1, 1]
    assert all(s == "PENDING" for s, _, _ in got.values())
    assert any("refused" in e.lower() or "connect" in e.lower() for _, _, e in got.values())
    assert sender.breaker.current_state == "open"
    assert 0 < wait <= 0.5
    assert metrics.breaker_rejected._value.get() == 1
    # Still open: a round spends no attempt.
    await sender.drain()
    assert sorted(a for _, a, _ in (await rows(db)).values()) == [0, 0, 0, 1, 1]

    smtp.start()
    try:
        await asyncio.sleep(0.6)  # the reset timeout: the next call is the probe
        await sender.drain()
        assert {s for s, _, _ in (await rows(db)).values()} == {"SENT"}
        assert sender.breaker.current_state == "closed"
        assert sorted(m.rcpt_tos[0] for m in smtp.mails) == sorted(
            f"u{i}@example.com" for i in range(5))
        assert {m.message["Message-ID"] for m in smtp.mails} == {
            f"<notification-{i}@shop.local>" for i in ids}
        assert metrics.sent._value.get() == 5
    finally:
        smtp.stop()


async def test_temporary_failures_expire_after_the_give_up_time(db: Database) -> None:
    smtp = SmtpServer()  # never up
    [nid] = await owe(db, 1)
    metrics = MailMetrics()
    sender = MailSender(DeliveryStore(db), settings(smtp.url, give_up_after_s=0.0), metrics)
    await sender.drain()
    status, attempts, error = (await rows(db))[nid]
    assert (status, attempts) == ("FAILED", 1)
    assert error.startswith("gave up after 1 attempts: "), error
    assert metrics.failed.labels(reason="expired")._value.get() == 1
    await sender.drain()  # FAILED is final
    assert (await rows(db))[nid][:2] == ("FAILED", 1)


def _certificates(tmp_path: Path) -> tuple[Path, ssl.SSLContext]:
    """A CA file and a server context for 127.0.0.1 signed by it."""
    now = dt.datetime.now(dt.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "test mail CA")])
    ca = (x509.CertificateBuilder().subject_name(ca_name).issuer_name(ca_name)
          .public_key(ca_key.public_key()).serial_number(x509.random_serial_number())
          .not_valid_before(now - dt.timedelta(minutes=1))
          .not_valid_after(now + dt.timedelta(hours=1))
          .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
          .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True,
                                       crl_sign=True, content_commitment=False,
                                       key_encipherment=False, data_encipherment=False,
                                       key_agreement=False, encipher_only=False,
                                       decipher_only=False), critical=True)
          .sign(ca_key, hashes.SHA256()))
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")]))
            .issuer_name(ca_name).public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=1))
            .not_valid_after(now + dt.timedelta(hours=1))
            .add_extension(x509.SubjectAlternativeName(
                [x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), critical=False)
            .sign(ca_key, hashes.SHA256()))
    ca_file = tmp_path / "ca.pem"
    ca_file.write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    cert_file, key_file = tmp_path / "server.pem", tmp_path / "server.key"
    cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_file.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                           serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(cert_file, key_file)
    return ca_file, ctx


@pytest.mark.parametrize(("tls", "login"), [("starttls", ("shop", "s3cret")), ("tls", None)])
async def test_tls_with_a_checked_certificate(db: Database, tmp_path: Path, tls: str,
                                              login: tuple[str, str] | None,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    ca_file, server_ctx = _certificates(tmp_path)
    smtp = SmtpServer(tls=tls, context=server_ctx, login=login).start()
    try:
        await owe(db, 1)
        metrics = MailMetrics()
        # Not trusted yet: the certificate check fails, so nothing is sent.
        monkeypatch.setenv("SSL_CERT_FILE", str(tmp_path / "nothing.pem"))
        sender = MailSender(DeliveryStore(db), settings(smtp.url), metrics)
        await sender.drain()
        [(status, attempts, error)] = (await rows(db)).values()
        assert (status, attempts) == ("PENDING", 1), error
        assert smtp.mails == [] and smtp.logins == []
        # Trusted through the standard OpenSSL variable: sent, after logging in.
        monkeypatch.setenv("SSL_CERT_FILE", str(ca_file))
        await asyncio.sleep(0.15)  # past the back-off
        await sender.drain()
        assert [s for s, _, _ in (await rows(db)).values()] == ["SENT"]
        assert smtp.logins == ([login[0]] if login else [])
        assert [m.rcpt_tos for m in smtp.mails] == [["u0@example.com"]]
    finally:
        smtp.stop()


async def test_wrong_password_is_retried_not_failed(db: Database, tmp_path: Path,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    ca_file, server_ctx = _certificates(tmp_path)
    monkeypatch.setenv("SSL_CERT_FILE", str(ca_file))
    smtp = SmtpServer(tls="starttls", context=server_ctx, login=("shop", "right")).start()
    try:
        [nid] = await owe(db, 1)
        wrong = smtp.url.replace(":right@", ":wrong@")
        sender = MailSender(DeliveryStore(db), settings(wrong, attempt_timeout_s=2.0),
                            MailMetrics())
        await sender.drain()
        # The sender's own set-up is wrong, the same for every mail: retried, not FAILED
        # (this server answers aiosmtplib's failed login so that the attempt times out).
        status, attempts, error = (await rows(db))[nid]
        assert (status, attempts) == ("PENDING", 1)
        assert error, "the attempt's error is kept"
        assert smtp.mails == [] and smtp.logins == []
    finally:
        smtp.stop()


async def test_a_stopped_sender_hands_its_round_back(db: Database) -> None:
    hung = Stalled()  # the round hangs on a server that never answers
    try:
        await owe(db, 3)
        sender = MailSender(DeliveryStore(db), settings(hung.url, attempt_timeout_s=30.0),
                            MailMetrics(), owner="notification-1")
        task = asyncio.create_task(sender.run())

        async def claimed() -> list[tuple[str, float]]:
            got = await db.read(lambda tx: tx.all(
                "SELECT claimed_by, next_attempt_at FROM deliveries"))
            return [(r[0], float(r[1])) for r in got]

        deadline = time.monotonic() + 20
        while not all(who == "notification-1" for who, _ in await claimed()):
            assert time.monotonic() < deadline, await claimed()
            await asyncio.sleep(0.02)
        assert all(at > time.time() + 30 for _, at in await claimed())  # held for the round
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        stopped_at = time.time()
        assert all(who == "" and at <= stopped_at for who, at in await claimed())
        assert {s for s, _, _ in (await rows(db)).values()} == {"PENDING"}
    finally:
        hung.close()
