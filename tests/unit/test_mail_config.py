"""SMTP_URL and the mail settings: every accepted form, and clear errors for the rest."""

from __future__ import annotations

from pathlib import Path

import pytest

from services.common.settings import load_settings
from services.notification.mailconfig import (
    DEFAULT_SMTP_URL,
    MailSettings,
    SmtpTarget,
    mail_settings,
    parse_smtp_url,
)


@pytest.mark.parametrize(
    ("url", "want"),
    [
        ("smtp://127.0.0.1:1025", SmtpTarget("127.0.0.1", 1025, "plain")),
        ("smtp://mail.example.com", SmtpTarget("mail.example.com", 25, "plain")),
        ("smtp://relay:2525?starttls=1", SmtpTarget("relay", 2525, "starttls")),
        ("smtp://relay?starttls=true", SmtpTarget("relay", 587, "starttls")),
        ("smtp://relay?starttls=0", SmtpTarget("relay", 25, "plain")),
        ("smtp+starttls://relay", SmtpTarget("relay", 587, "starttls")),
        ("smtps://relay", SmtpTarget("relay", 465, "tls")),
        ("SMTPS://relay:4650", SmtpTarget("relay", 4650, "tls")),
        ("smtps://me%40x.org:p%3Ass@relay:465",
         SmtpTarget("relay", 465, "tls", username="me@x.org", password="p:ss")),
        ("smtp://apikey:secret@relay:587?starttls=yes",
         SmtpTarget("relay", 587, "starttls", username="apikey", password="secret")),
    ],
)
def test_accepted_forms(url: str, want: SmtpTarget) -> None:
    assert parse_smtp_url(url) == want


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("http://relay", "must start with smtp://"),
        ("relay:25", "must start with smtp://"),
        ("smtp://", "has no host"),
        ("smtp://relay:notaport", "bad port"),
    ],
)
def test_refused_forms_say_why(url: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        parse_smtp_url(url)


@pytest.mark.parametrize("url", ["ftp://me:hunter2@relay", "smtp://me:hunter2@relay:port",
                                 "smtp://me:hunter2@"])
def test_errors_never_show_the_password(url: str) -> None:
    with pytest.raises(ValueError) as err:
        parse_smtp_url(url)
    assert "hunter2" not in str(err.value)
    assert "me:***@" in str(err.value)


def test_describe_never_shows_the_password() -> None:
    target = parse_smtp_url("smtps://user:hunter2@relay")
    assert target.describe() == "tls user@relay:465"
    assert "hunter2" not in target.describe()


def _load() -> MailSettings:
    """The mail settings of a notification process started now."""
    return mail_settings(load_settings("notification").mail)


def test_settings_from_the_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.chdir(tmp_path)  # load_settings makes the data dir
    for name in ("SMTP_URL", "SMTP_FROM", "SHOP_MAIL_TIMEOUT_S", "SHOP_MAIL_CONCURRENCY"):
        monkeypatch.delenv(name, raising=False)
    default = _load()
    assert default.target == parse_smtp_url(DEFAULT_SMTP_URL)
    assert default.sender == "shop <no-reply@shop.local>"
    monkeypatch.setenv("SMTP_URL", "smtp+starttls://relay:2587")
    monkeypatch.setenv("SMTP_FROM", "Shop <hello@shop.example>")
    monkeypatch.setenv("SHOP_MAIL_TIMEOUT_S", "3.5")
    monkeypatch.setenv("SHOP_MAIL_CONCURRENCY", "0")
    s = _load()
    assert s.target == SmtpTarget("relay", 2587, "starttls")
    assert s.sender == "Shop <hello@shop.example>"
    assert s.attempt_timeout_s == 3.5
    assert s.concurrency == 1  # at least one connection
    monkeypatch.setenv("SMTP_URL", "off")
    assert _load().target is None
    monkeypatch.setenv("SMTP_URL", "ftp://x")
    with pytest.raises(ValueError, match="SMTP_URL"):
        _load()
    monkeypatch.setenv("SMTP_URL", "smtp://x")
    monkeypatch.setenv("SHOP_MAIL_TIMEOUT_S", "soon")
    with pytest.raises(ValueError, match="SHOP_MAIL_TIMEOUT_S must be a number"):
        _load()
