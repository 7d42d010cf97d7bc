"""The mail a notification becomes (parsed back with the standard library, as a client
would), its stable Message-ID, the back-off, and which SMTP answers are refusals."""

from __future__ import annotations

import asyncio
import email
import email.policy
import ssl
from email.message import EmailMessage

import aiosmtplib
import pytest

from services.notification.delivery import MailFrom, PendingMail, backoff_s, render
from services.notification.sender import classify


def _mail(**over: object) -> PendingMail:
    fields: dict[str, object] = {
        "notification_id": "abc123", "recipient": "ada@example.com", "name": "Ada",
        "subject": "Receipt for order o1", "body": "We charged 12.34 USD for order o1 <b>.",
        "request_id": "req-1", "attempts": 0, "created_at": 1_700_000_000.0}
    fields.update(over)
    return PendingMail(**fields)  # type: ignore[arg-type]


def _parse(raw: bytes) -> EmailMessage:
    msg = email.message_from_bytes(raw, policy=email.policy.default)
    assert isinstance(msg, EmailMessage)
    return msg


def _text(msg: EmailMessage, kind: str) -> str:
    part = msg.get_body((kind,))
    assert part is not None, kind
    return str(part.get_content())


def test_message_has_text_and_html_and_stable_headers() -> None:
    raw = render(_mail(), MailFrom.parse("shop <no-reply@shop.example>"))
    # A resend is byte-for-byte the same mail.
    assert raw == render(_mail(attempts=3), MailFrom.parse("shop <no-reply@shop.example>"))
    assert b"\r\n" in raw and b"\n" not in raw.replace(b"\r\n", b"")  # CRLF only
    msg = _parse(raw)
    assert msg["Message-ID"] == "<notification-abc123@shop.example>"
    assert msg["Date"] == "Tue, 14 Nov 2023 22:13:20 +0000"
    assert msg["From"] == "shop <no-reply@shop.example>"
    assert msg["To"] == "Ada <ada@example.com>"
    assert msg["Subject"] == "Receipt for order o1"
    assert msg["X-Request-Id"] == "req-1"
    assert msg["X-Shop-Notification-Id"] == "abc123"
    assert msg.get_content_type() == "multipart/alternative"
    assert [p.get_content_type() for p in msg.iter_parts()] == ["text/plain", "text/html"]
    text, html = _text(msg, "plain"), _text(msg, "html")
    assert text.startswith("Hello Ada,\n\nWe charged 12.34 USD for order o1 <b>.")
    assert "order o1 &lt;b&gt;." in html and "<b>" not in html  # escaped, not markup
    assert msg.defects == [] and all(p.defects == [] for p in msg.walk())


def test_no_name_no_request_id() -> None:
    msg = _parse(render(_mail(name="", request_id=""), MailFrom.parse("no-reply@shop.local")))
    assert msg["To"] == "ada@example.com"
    assert msg["X-Request-Id"] is None
    assert "Hello" not in _text(msg, "plain")


def test_unicode_is_encoded_and_line_breaks_cannot_inject_headers() -> None:
    raw = render(_mail(name="Zoë\r\nBcc: evil@example.com", subject="Reçu\nX-Evil: 1",
                       body="Merci — à bientôt"), MailFrom.parse("Boutique Été <shop@x.example>"))
    assert raw.isascii()
    msg = _parse(raw)
    assert msg["To"].addresses[0].display_name == "Zoë Bcc: evil@example.com"
    assert msg["To"].addresses[0].addr_spec == "ada@example.com"
    assert msg["Bcc"] is None and msg["X-Evil"] is None
    assert msg["Subject"] == "Reçu X-Evil: 1"
    assert msg["From"].addresses[0].display_name == "Boutique Été"
    assert "Merci — à bientôt" in _text(msg, "plain")


def test_sender_parsed_once_with_fallbacks() -> None:
    assert MailFrom.parse("Shop <a@b.example>") == MailFrom("Shop <a@b.example>", "a@b.example",
                                                           "b.example")
    assert MailFrom.parse("hello@shop.example").header == "hello@shop.example"
    with pytest.raises(ValueError, match="SMTP_FROM must hold an address"):
        MailFrom.parse("no address here")


@pytest.mark.parametrize(("attempts", "want"), [(1, 0.5), (2, 1.0), (3, 2.0), (4, 4.0),
                                                (5, 5.0), (50, 5.0)])
def test_backoff_doubles_to_the_cap(attempts: int, want: float) -> None:
    assert backoff_s(attempts, 0.5, 5.0) == want


def _refused(code: int) -> aiosmtplib.SMTPRecipientsRefused:
    return aiosmtplib.SMTPRecipientsRefused(
        [aiosmtplib.SMTPRecipientRefused(code, "5.1.1 mailbox unavailable", "x@y")])


def test_permanent_and_temporary_answers() -> None:
    refused = classify(_refused(550))
    assert refused is not None and str(refused) == "550 5.1.1 mailbox unavailable"
    assert classify(aiosmtplib.SMTPDataError(554, "content rejected")) is not None
    assert classify(ValueError("bad address")) is not None
    # Temporary, or the sender's own set-up (every mail alike): retried, never FAILED.
    assert classify(_refused(450)) is None
    assert classify(aiosmtplib.SMTPDataError(451, "try later")) is None
    assert classify(aiosmtplib.SMTPSenderRefused(553, "bad sender", "me@x")) is None
    assert classify(aiosmtplib.SMTPAuthenticationError(535, "bad credentials")) is None
    assert classify(aiosmtplib.SMTPConnectError("refused")) is None
    assert classify(TimeoutError()) is None
    assert classify(ssl.SSLCertVerificationError("certificate verify failed")) is None
    assert classify(asyncio.CancelledError()) is None
