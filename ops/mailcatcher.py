"""A local mail catcher for `make run`: an aiosmtpd SMTP server that stores every mail it
accepts as an .eml file under <data dir>/mail/, and the reader `shopctl mail` uses.

    python -m ops.mailcatcher [--host 127.0.0.1] [--port 1025] [--dir var/mail]

Port from --port, else MAILCATCHER_PORT (1025); the directory from --dir, else
$SHOP_DATA_DIR/mail. Writes SHOP_READY_FILE once listening; SIGTERM/SIGINT stop it.
Each mail is one file `<received UTC time, to the microsecond>-<random>.eml`, written
whole (temp file and rename), with Unix line ends and the SMTP envelope in
X-Envelope-From / X-Envelope-To headers on top.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import secrets
import signal
import socket
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ops.process import ServiceProcess
from services.common.cancellation import within

# asyncio and the email package load on first use: `make run` imports this module for
# CatcherProcess alone, before it spawns anything.
if TYPE_CHECKING:
    import asyncio
    from email.message import EmailMessage

__all__ = ["DEFAULT_PORT", "CatcherProcess", "MailDir", "StoredMail", "main", "start_catcher"]

DEFAULT_PORT = 1025
NAME = "mailcatcher"


@dataclass(frozen=True)
class StoredMail:
    id: str
    path: Path
    received_at: float
    sender: str
    to: str
    subject: str
    message_id: str

    def message(self) -> EmailMessage:
        import email
        import email.policy
        from email.message import EmailMessage

        parsed = email.message_from_bytes(self.path.read_bytes(), policy=email.policy.default)
        assert isinstance(parsed, EmailMessage)
        return parsed


class MailDir:
    """The directory of caught mails, newest last by name."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self._last_us = 0

    def save(self, content: bytes, mail_from: str, rcpt_tos: list[str]) -> str:
        """Store one mail; returns its id."""
        self.root.mkdir(parents=True, exist_ok=True)
        # Microseconds, never going back within this catcher: ids sort as mails arrived.
        now_us = max(time.time_ns() // 1000, self._last_us + 1)
        self._last_us = now_us
        secs, micros = divmod(now_us, 1_000_000)
        stamp = time.strftime("%Y%m%dT%H%M%S", time.gmtime(secs))
        mail_id = f"{stamp}.{micros:06d}Z-{secrets.token_hex(3)}"
        envelope = (f"X-Envelope-From: {mail_from}\n"
                    f"X-Envelope-To: {', '.join(rcpt_tos)}\n").encode()
        tmp = self.root / f".{mail_id}.tmp"
        # Unix line ends, as maildir stores them (SMTP carries CRLF).
        tmp.write_bytes(envelope + content.replace(b"\r\n", b"\n"))
        os.replace(tmp, self.root / f"{mail_id}.eml")
        return mail_id

    def list(self) -> list[StoredMail]:
        if not self.root.is_dir():
            return []
        return [self._read(p) for p in sorted(self.root.glob("*.eml"))]

    def find(self, key: str) -> StoredMail:
        """By mail id, a unique prefix of one, its Message-ID or the notification id in
        it; the newest when several mails match (a repeat send). KeyError if none."""
        key = key.strip().strip("<>")
        mails = self.list()
        exact = [m for m in mails if m.id == key]
        if exact:
            return exact[0]
        hits = [m for m in mails if key and (m.message_id.strip("<>") == key
                                             or f"-{key}@" in m.message_id)]
        if not hits:
            hits = [m for m in mails if key and m.id.startswith(key)]
            if len(hits) > 1:
                raise KeyError(f"{key!r} matches {len(hits)} mails; give more of the id")
        if not hits:
            raise KeyError(f"no mail {key!r} in {self.root}")
        return hits[-1]

    def _read(self, path: Path) -> StoredMail:
        import email
        import email.policy
        from email.message import EmailMessage

        with path.open("rb") as f:
            headers = email.message_from_binary_file(f, policy=email.policy.default,
                                                     _class=EmailMessage)
        return StoredMail(
            id=path.stem, path=path, received_at=path.stat().st_mtime,
            sender=str(headers.get("From", "")), to=str(headers.get("To", "")),
            subject=str(headers.get("Subject", "")),
            message_id=str(headers.get("Message-ID", "")))


class _Handler:
    def __init__(self, maildir: MailDir) -> None:
        self.maildir = maildir

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        content = envelope.original_content or envelope.content or b""
        if isinstance(content, str):
            content = content.encode()
        mail_id = self.maildir.save(content, envelope.mail_from or "", list(envelope.rcpt_tos))
        print(f"caught {mail_id}: to {', '.join(envelope.rcpt_tos)}", flush=True)
        return "250 OK stored as " + mail_id


async def start_catcher(host: str, port: int, root: Path) -> asyncio.Server:
    """The SMTP server, listening (port 0: any free port), storing into `root`."""
    import asyncio

    from aiosmtpd.smtp import SMTP  # only the catcher needs the server side

    handler = _Handler(MailDir(root))
    loop = asyncio.get_running_loop()
    return await loop.create_server(lambda: SMTP(handler, hostname="shop-mailcatcher"),
                                    host=host, port=port)


async def serve(host: str, port: int, root: Path, ready_file: Path | None) -> None:
    import asyncio

    loop = asyncio.get_running_loop()
    server = await start_catcher(host, port, root)
    bound = server.sockets[0].getsockname()[1]
    addr = f"{host}:{bound}"
    if ready_file is not None:
        from services.common.readyfile import write_ready_file

        write_ready_file(ready_file, NAME, os.environ.get("SHOP_INSTANCE_ID", f"{NAME}-1"),
                         addr)
    print(f"mail catcher on smtp://{addr}, storing mails in {root}", flush=True)
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    try:
        await stop.wait()
    finally:
        server.close()
        with contextlib.suppress(TimeoutError):
            await within(server.wait_closed(), 2.0)


def smtp_banner(host: str, port: int, timeout: float = 1.0) -> bool:
    """True when an SMTP server answers its 220 greeting there."""
    try:
        with socket.create_connection((host, port), timeout=timeout) as s:
            s.settimeout(timeout)
            ok = s.recv(4).startswith(b"220")
            with contextlib.suppress(OSError):
                s.sendall(b"QUIT\r\n")
            return ok
    except OSError:
        return False


class CatcherProcess(ServiceProcess):
    """The catcher as a supervised child of `make run`, like a service."""

    def __init__(self, *, data_dir: str | os.PathLike[str], port: int = DEFAULT_PORT,
                 host: str = "127.0.0.1") -> None:
        super().__init__(NAME, data_dir=data_dir, nats_url="", port=port, host=host,
                         instance=f"{NAME}-1",
                         argv=[sys.executable, "-m", "ops.mailcatcher"])

    @property
    def mail_dir(self) -> Path:
        return self.data_dir / "mail"

    @property
    def smtp_url(self) -> str:
        return f"smtp://{self.host}:{self.port}"

    def health(self, timeout: float = 1.0) -> str:
        if not self.running:
            return "STOPPED"
        return "SERVING" if smtp_banner(self.host, self.port, timeout) else "UNREACHABLE"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m ops.mailcatcher",
                                     description="Store every mail received as an .eml file.")
    parser.add_argument("--host", default=os.environ.get("SHOP_HOST") or "127.0.0.1")
    parser.add_argument("--port", type=int,
                        default=int(os.environ.get("MAILCATCHER_PORT") or DEFAULT_PORT))
    parser.add_argument("--dir", type=Path, default=None,
                        help="where mails go (default: $SHOP_DATA_DIR/mail)")
    args = parser.parse_args(argv)
    root = args.dir or Path(os.environ.get("SHOP_DATA_DIR") or "var") / "mail"
    ready = os.environ.get("SHOP_READY_FILE", "")
    import asyncio

    try:
        asyncio.run(serve(args.host, args.port, root.resolve(), Path(ready) if ready else None))
    except OSError as e:
        print(f"error: cannot listen on {args.host}:{args.port}: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
