"""The mail a notification becomes, its stable Message-ID, the back-off, and which SMTP
answers are permanent refusals."""

from __future__ import annotations

import asyncio
import email
import email.policy
import ssl

import aiosmtplib
import pytest

from services.notification.delivery import PendingMail, backoff_s, compose, message_id
from services.notification.sender import classify


def _mail(**over: object) -> PendingMail:
    fields: dict[str, object] = {
        "notification_id": "abc123", "recipient": "ada@example.com", "name": "Ada",
        "subject": "Receipt for order o1", "body": "We charged 12.34 USD for order o1 <b>.",
        "request_id": "req-1", "attempts": 0, "created_at": 1_700_000_000.0}
    fields.update(over)
    return PendingMail(**fields)  # type: ignore[arg-type]


def test_message_has_text_and_html_and_stable_headers() -> None:
    msg = compose(_mail(), "shop <no-reply@shop.example>")
    again = compose(_mail(attempts=3), "shop <no-reply@shop.example>")
    assert msg["Message-ID"] == again["Message-ID"] == "<notification-abc123@shop.example>"
    assert msg["Date"] == again["Date"] == "Tue, 14 Nov 2023 22:13:20 +0000"
    assert msg["From"] == "shop <no-reply@shop.example>"
    assert msg["To"] == "Ada <ada@example.com>"
    assert msg["Subject"] == "Receipt for order o1"
    assert msg["X-Request-Id"] == "req-1"
    assert msg["X-Shop-Notification-Id"] == "abc123"
    # What goes on the wire parses back to the same two parts.
    parsed = email.message_from_bytes(msg.as_bytes(), policy=email.policy.default)
    assert parsed.get_content_type() == "multipart/alternative"
    types = [p.get_content_type() for p in parsed.iter_parts()]  # type: ignore[attr-defined]
    assert types == ["text/plain", "text/html"]
    text = parsed.get_body(("plain",)).get_content()  # type: ignore[attr-defined,union-attr]
    html = parsed.get_body(("html",)).get_content()  # type: ignore[attr-defined,union-attr]
    assert text.startswith("Hello Ada,\n\nWe charged 12.34 USD for order o1 <b>.")
    assert "order o1 &lt;b&gt;." in html and "<b>" not in html  # escaped, not markup


def test_no_name_no_request_id() -> None:
    msg = compose(_mail(name="", request_id=""), "no-reply@shop.local")
    assert msg["To"] == "ada@example.com"
    assert msg["X-Request-Id"] is None
    assert "Hello" not in msg.get_body(("plain",)).get_content()  # type: ignore[union-attr]


def test_message_id_domain_falls_back() -> None:
    assert message_id("n1", "no address here") == "<notification-n1@shop.local>"
    assert message_id("n1", "Shop <a@b.example>") == "<notification-n1@b.example>"


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
