"""The mail catcher: mails sent over real SMTP land as whole .eml files with their
envelope; MailDir lists them in order and finds one by id, prefix, Message-ID or
notification id."""

from __future__ import annotations

import asyncio
from email.message import EmailMessage
from pathlib import Path

import aiosmtplib
import pytest

from ops.mailcatcher import MailDir, smtp_banner, start_catcher


def _mail(subject: str, notification_id: str, to: str = "ada@example.com") -> EmailMessage:
    msg = EmailMessage()
    msg["From"] = "shop <no-reply@shop.local>"
    msg["To"] = to
    msg["Subject"] = subject
    msg["Message-ID"] = f"<notification-{notification_id}@shop.local>"
    msg.set_content("hello\n")
    msg.add_alternative("<p>hello</p>", subtype="html")
    return msg


async def test_caught_mails_are_stored_and_found(tmp_path: Path) -> None:
    root = tmp_path / "mail"
    server = await start_catcher("127.0.0.1", 0, root)
    port = server.sockets[0].getsockname()[1]
    try:
        assert await asyncio.to_thread(smtp_banner, "127.0.0.1", port)
        for subject, nid in (("first", "n1"), ("second", "n2"), ("first again", "n1")):
            await aiosmtplib.send(_mail(subject, nid), hostname="127.0.0.1", port=port,
                                  recipients=["ada@example.com", "bob@example.com"],
                                  sender="bounce@shop.local", timeout=10)
    finally:
        server.close()
        await server.wait_closed()

    maildir = MailDir(root)
    mails = maildir.list()
    assert [m.subject for m in mails] == ["first", "second", "first again"]
    assert sorted(p.name for p in root.iterdir()) == [f"{m.id}.eml" for m in mails]  # no temps
    first = mails[0]
    assert first.to == "ada@example.com" and first.sender == "shop <no-reply@shop.local>"
    msg = first.message()
    assert msg["X-Envelope-From"] == "bounce@shop.local"
    assert msg["X-Envelope-To"] == "ada@example.com, bob@example.com"
    assert msg.get_body(("html",)).get_content() == "<p>hello</p>\n"  # type: ignore[union-attr]

    assert maildir.find(first.id) == first
    assert maildir.find(mails[1].id[:-3] + mails[1].id[-3:]) == mails[1]
    # A notification id or Message-ID: the newest of its sends.
    assert maildir.find("n1") == mails[2]
    assert maildir.find("<notification-n2@shop.local>") == mails[1]
    with pytest.raises(KeyError, match="no mail"):
        maildir.find("n3")


def test_prefixes_must_be_unique(tmp_path: Path) -> None:
    maildir = MailDir(tmp_path)
    for i in range(2):
        maildir.save(_mail(f"m{i}", f"id{i}").as_bytes(), "a@b", ["c@d"])
    ids = [m.id for m in maildir.list()]
    common = ids[0][:15]  # the second-resolution time stamp they share, or a prefix of it
    if ids[1].startswith(common):
        with pytest.raises(KeyError, match="matches 2 mails"):
            maildir.find(common)
    assert maildir.find(ids[1]).subject == "m1"
    assert MailDir(tmp_path / "none").list() == []


def test_shopctl_mail_lists_repeats_and_shows_one(tmp_path: Path,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    from ops import shopctl

    maildir = MailDir(tmp_path)
    first = maildir.save(_mail("Welcome to shop, Ada", "n1").as_bytes(), "a@b", ["c@d"])
    maildir.save(_mail("Receipt", "n2").as_bytes(), "a@b", ["c@d"])
    again = maildir.save(_mail("Welcome to shop, Ada", "n1").as_bytes(), "a@b", ["c@d"])
    assert shopctl.main(["mail", "--dir", str(tmp_path), "list"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split() == ["ID", "RECEIVED", "(UTC)", "TO", "SUBJECT", "NOTE"]
    assert len(lines) == 4
    assert lines[1].startswith(first) and "repeat" not in lines[1]
    assert lines[3].startswith(again) and lines[3].endswith(f"repeat of {first}")
    assert shopctl.main(["mail", "--dir", str(tmp_path), "show", "n2"]) == 0
    out = capsys.readouterr().out
    assert "Subject: Receipt" in out and "Message-ID: <notification-n2@shop.local>" in out
    assert out.rstrip().endswith("hello")
    assert shopctl.main(["mail", "--dir", str(tmp_path), "show", "n2", "--html"]) == 0
    assert capsys.readouterr().out.rstrip().endswith("<p>hello</p>")
    assert shopctl.main(["mail", "--dir", str(tmp_path), "show", "nope"]) == 1
    assert "no mail 'nope'" in capsys.readouterr().err
    assert shopctl.main(["mail", "--dir", str(tmp_path / "empty"), "list"]) == 0
    assert "no mails in" in capsys.readouterr().out
