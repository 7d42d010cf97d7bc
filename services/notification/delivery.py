"""Email delivery rules: states, the mail a notification becomes, back-off. Pure (stdlib)."""

from __future__ import annotations

import enum
import html
from dataclasses import dataclass
from email.headerregistry import Address
from email.message import EmailMessage
from email.utils import formatdate, parseaddr

__all__ = ["REQUEST_ID_HEADER", "DeliveryStatus", "PendingMail", "backoff_s", "compose",
           "message_id"]

REQUEST_ID_HEADER = "X-Request-Id"
NOTIFICATION_ID_HEADER = "X-Shop-Notification-Id"
_FALLBACK_DOMAIN = "shop.local"


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


def _domain(sender: str) -> str:
    addr = parseaddr(sender)[1]
    local, at, domain = addr.rpartition("@")
    return domain if local and at and domain else _FALLBACK_DOMAIN


def message_id(notification_id: str, sender: str) -> str:
    """Stable per notification: a repeat send is recognisably the same mail."""
    return f"<notification-{notification_id}@{_domain(sender)}>"


def _html(mail: PendingMail) -> str:
    greeting = f"<p>Hello {html.escape(mail.name)},</p>" if mail.name else ""
    return ("<!doctype html>\n<html><body style=\"font-family: sans-serif\">\n"
            f"<h1 style=\"font-size: 1.2em\">{html.escape(mail.subject)}</h1>\n"
            f"{greeting}\n<p>{html.escape(mail.body)}</p>\n"
            "<p style=\"color: #666\">&mdash; shop</p>\n</body></html>\n")


def _text(mail: PendingMail) -> str:
    greeting = f"Hello {mail.name},\n\n" if mail.name else ""
    return f"{greeting}{mail.body}\n\n-- shop\n"


def _to(mail: PendingMail) -> str:
    if not mail.name:
        return mail.recipient
    try:
        return str(Address(display_name=mail.name, addr_spec=mail.recipient))
    except (ValueError, IndexError):  # an address the header model cannot split
        return mail.recipient


def compose(mail: PendingMail, sender: str) -> EmailMessage:
    """multipart/alternative: plain text first, HTML second (clients show the last they can)."""
    msg = EmailMessage()
    msg["From"] = sender
    msg["To"] = _to(mail)
    msg["Subject"] = mail.subject
    # The notification's own time: a resend carries the same Date as well.
    msg["Date"] = formatdate(mail.created_at, usegmt=True)
    msg["Message-ID"] = message_id(mail.notification_id, sender)
    msg[NOTIFICATION_ID_HEADER] = mail.notification_id
    if mail.request_id:
        msg[REQUEST_ID_HEADER] = mail.request_id
    msg.set_content(_text(mail))
    msg.add_alternative(_html(mail), subtype="html")
    return msg
