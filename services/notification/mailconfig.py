"""Mail settings from the environment: where to send (SMTP_URL), as whom (SMTP_FROM), and
how hard to try. Parsing is pure; `mail_settings(settings.mail)` turns the variables
read at start into these settings.

SMTP_URL forms: `smtp://host[:port]` (plain, port 25), `smtp+starttls://host[:port]` or
`smtp://...?starttls=1` (STARTTLS, port 587), `smtps://host[:port]` (TLS from the first
byte, port 465); `user:password@` before the host logs in (percent-encoded). `off` turns
mail delivery off: notifications are stored only.
"""

from __future__ import annotations

from dataclasses import dataclass
from urllib.parse import parse_qs, unquote, urlsplit

from services.common.config import MailConfig

__all__ = ["DEFAULT_SMTP_URL", "MailSettings", "SmtpTarget", "mail_settings",
           "parse_smtp_url"]

DEFAULT_SMTP_URL = "smtp://127.0.0.1:1025"
DEFAULT_FROM = "shop <no-reply@shop.local>"

_TRUE = frozenset({"1", "true", "yes", "on"})
_DEFAULT_PORTS = {"plain": 25, "starttls": 587, "tls": 465}


@dataclass(frozen=True, slots=True)
class SmtpTarget:
    host: str
    port: int
    security: str  # "plain" | "starttls" | "tls"
    username: str = ""
    password: str = ""

    def describe(self) -> str:
        """The target without its password, for logs."""
        who = f"{self.username}@" if self.username else ""
        return f"{self.security} {who}{self.host}:{self.port}"


def _redacted(url: str) -> str:
    """The URL for an error message: never its password."""
    head, at, tail = url.rpartition("@")
    if not at:
        return url
    scheme, sep, creds = head.partition("://")
    user = creds.split(":", 1)[0]
    return f"{scheme}{sep}{user}:***@{tail}" if ":" in creds else url


def parse_smtp_url(url: str) -> SmtpTarget:
    """`smtp://user:pw@host:2525?starttls=1` -> SmtpTarget; ValueError saying what is wrong
    (the password never appears in it)."""
    parts = urlsplit(url.strip())
    scheme = parts.scheme.lower()
    if scheme == "smtp":
        query = parse_qs(parts.query)
        flag = (query.get("starttls") or [""])[-1].lower()
        security = "starttls" if flag in _TRUE else "plain"
    elif scheme == "smtp+starttls":
        security = "starttls"
    elif scheme == "smtps":
        security = "tls"
    else:
        raise ValueError(f"SMTP_URL must start with smtp://, smtp+starttls:// or smtps://, "
                         f"got {_redacted(url)!r}")
    if not parts.hostname:
        raise ValueError(f"SMTP_URL has no host: {_redacted(url)!r}")
    try:
        port = parts.port or _DEFAULT_PORTS[security]
    except ValueError:
        raise ValueError(f"SMTP_URL has a bad port: {_redacted(url)!r}") from None
    return SmtpTarget(host=parts.hostname, port=port, security=security,
                      username=unquote(parts.username or ""),
                      password=unquote(parts.password or ""))


@dataclass(frozen=True, slots=True)
class MailSettings:
    """None as target: delivery off."""

    target: SmtpTarget | None
    sender: str = DEFAULT_FROM
    # One attempt (connect, hello, send) must finish within this many seconds.
    attempt_timeout_s: float = 10.0
    # Back-off after a temporary failure: first, doubling up to the cap.
    backoff_s: float = 1.0
    backoff_cap_s: float = 60.0
    # A mail still not accepted after this long is given up (FAILED).
    give_up_after_s: float = 24 * 3600.0
    # The SMTP breaker: consecutive temporary failures that open it, and its reset time.
    breaker_fail_max: int = 5
    breaker_reset_s: float = 15.0
    # Parallel SMTP connections, and due mails claimed per round.
    concurrency: int = 4
    batch: int = 32


def mail_settings(config: MailConfig) -> MailSettings:
    """SMTP_URL (parsed), SMTP_FROM and the SHOP_MAIL_* tuning variables, as read."""
    raw = config.smtp_url
    target = None if raw.lower() in ("off", "none", "disabled") else parse_smtp_url(raw)
    return MailSettings(
        target=target,
        sender=config.sender,
        attempt_timeout_s=config.timeout_s,
        backoff_s=config.backoff_s,
        backoff_cap_s=config.backoff_cap_s,
        give_up_after_s=config.give_up_s,
        breaker_fail_max=config.breaker_fail_max,
        breaker_reset_s=config.breaker_reset_s,
        concurrency=max(1, config.concurrency),
        batch=max(1, config.batch),
    )
