"""Email delivery rules: states, the mail a notification becomes, back-off. Pure (stdlib)."""

from __future__ import annotations

import base64
import enum
import html
from dataclasses import dataclass
from email.header import Header
from email.utils import formataddr, formatdate, parseaddr

__all__ = ["REQUEST_ID_HEADER", "DeliveryStatus", "MailFrom", "PendingMail", "backoff_s",
           "message_id", "render"]

REQUEST_ID_HEADER = "X-Request-Id"
NOTIFICATION_ID_HEADER = "X-Shop-Notification-Id"


class DeliveryStatus(enum.StrEnum):
    # NONE: delivery was off when the notification was made; no mail is owed.
    NONE = "NONE"
    PENDING = "PENDING"
    SENT = "SENT"
    FAILED = "FAILED"


@dataclass(frozen=True, slots=True)
class PendingMail:
    """One row of the delivery outbox, with what the mail says."""

    notification_id: str
    recipient: str
    name: str
    subject: str
    body: str
    request_id: str
    attempts: int
    created_at: float


def backoff_s(attempts: int, first_s: float, cap_s: float) -> float:
    """Delay before the next try after `attempts` failed ones: first, doubling, capped."""
    return float(min(cap_s, first_s * 2 ** max(0, attempts - 1)))


@dataclass(frozen=True, slots=True)
class MailFrom:
    """SMTP_FROM, parsed once: the From header, the envelope sender, the Message-ID domain."""

    header: str
    address: str
    domain: str

    @classmethod
    def parse(cls, sender: str) -> MailFrom:
        """ValueError when there is no address in it."""
        name, addr = parseaddr(sender)
        local, _, domain = addr.rpartition("@")
        if not local or not domain:
            raise ValueError(f"SMTP_FROM must hold an address like "
                             f"'shop <no-reply@shop.example>', got {sender!r}")
        header = formataddr((" ".join(name.splitlines()), addr), charset="utf-8")
        return cls(header=header, address=addr, domain=domain)


def message_id(notification_id: str, domain: str) -> str:
    """Stable per notification: a repeat send is recognisably the same mail."""
    return f"<notification-{notification_id}@{domain}>"


def _html(mail: PendingMail) -> str:
    greeting = f"<p>Hello {html.escape(mail.name)},</p>" if mail.name else ""
    return ("<!doctype html>\n<html><body style=\"font-family: sans-serif\">\n"
            f"<h1 style=\"font-size: 1.2em\">{html.escape(mail.subject)}</h1>\n"
            f"{greeting}\n<p>{html.escape(mail.body)}</p>\n"
            "<p style=\"color: #666\">&mdash; shop</p>\n</body></html>\n")


def _text(mail: PendingMail) -> str:
    greeting = f"Hello {mail.name},\n\n" if mail.name else ""
    return f"{greeting}{mail.body}\n\n-- shop\n"


def _header(value: str) -> str:
    """One header value: never a line break (no header injection from a user's name),
    RFC 2047 encoded when it is not ASCII."""
    value = " ".join(value.splitlines())
    if value.isascii():
        return value
    return Header(value, "utf-8").encode()


def _to(mail: PendingMail) -> str:
    if not mail.name:
        return _header(mail.recipient)
    return formataddr((" ".join(mail.name.splitlines()), mail.recipient), charset="utf-8")


def _part(content_type: str, text: str) -> bytes:
    body = base64.encodebytes(text.encode()).replace(b"\n", b"\r\n")
    return (f"Content-Type: {content_type}; charset=\"utf-8\"\r\n"
            "Content-Transfer-Encoding: base64\r\n\r\n").encode() + body


def render(mail: PendingMail, sender: MailFrom) -> bytes:
    """The mail as sent: multipart/alternative, plain text first, HTML second (clients show
    the last they can). Built directly (the email package's model costs milliseconds of
    CPU per mail, on the loop the event consumer shares); byte-for-byte the same on every
    send of one notification."""
    boundary = f"=_shop_{mail.notification_id}"
    headers = [
        f"From: {sender.header}",
        f"To: {_to(mail)}",
        f"Subject: {_header(mail.subject)}",
        # The notification's own time: a resend carries the same Date as well.
        f"Date: {formatdate(mail.created_at, usegmt=True)}",
        f"Message-ID: {message_id(mail.notification_id, sender.domain)}",
        f"{NOTIFICATION_ID_HEADER}: {_header(mail.notification_id)}",
    ]
    if mail.request_id:
        headers.append(f"{REQUEST_ID_HEADER}: {_header(mail.request_id)}")
    headers += ["MIME-Version: 1.0",
                f"Content-Type: multipart/alternative; boundary=\"{boundary}\""]
    sep = f"--{boundary}\r\n".encode()
    return b"".join([
        "\r\n".join(headers).encode(), b"\r\n\r\n",
        sep, _part("text/plain", _text(mail)), b"\r\n",
        sep, _part("text/html", _html(mail)), b"\r\n",
        f"--{boundary}--\r\n".encode(),
    ])
