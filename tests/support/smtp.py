"""A real SMTP server for tests: aiosmtpd in its own thread on a free port, recording
every mail it accepted, refusing chosen recipients with a 550, and able to come up late
(SMTP down, then back) on a port fixed in advance."""

from __future__ import annotations

import asyncio
import email
import email.policy
import socket
import ssl
import threading
import time
from dataclasses import dataclass, field
from email.message import EmailMessage
from typing import Any

from aiosmtpd.controller import Controller
from aiosmtpd.smtp import AuthResult

from ops.process import free_port


@dataclass
class Caught:
    mail_from: str
    rcpt_tos: list[str]
    message: EmailMessage


@dataclass
class _Recorder:
    refuse: set[str] = field(default_factory=set)
    # Seconds each mail's DATA takes to be accepted (a slow server).
    delay_s: float = 0.0
    mails: list[Caught] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    async def handle_RCPT(self, server: Any, session: Any, envelope: Any, address: str,
                          rcpt_options: list[str]) -> str:
        if address.lower() in self.refuse:
            return f"550 5.1.1 <{address}>: mailbox unavailable"
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        if self.delay_s:
            await asyncio.sleep(self.delay_s)
        msg = email.message_from_bytes(envelope.original_content, policy=email.policy.default)
        assert isinstance(msg, EmailMessage)
        with self.lock:
            self.mails.append(Caught(envelope.mail_from, list(envelope.rcpt_tos), msg))
        return "250 OK"


class SmtpServer:
    """`start()` / `stop()` any number of times, always on the same port.

    `tls`: None (plain), "starttls" (STARTTLS required before anything else) or "tls"
    (TLS from the first byte), with `context` as the server's certificate; `login`:
    (user, password) required (AUTH PLAIN/LOGIN, after STARTTLS) before a mail is taken."""

    def __init__(self, refuse: set[str] | None = None, port: int = 0, *,
                 tls: str | None = None, context: ssl.SSLContext | None = None,
                 login: tuple[str, str] | None = None, delay_s: float = 0.0) -> None:
        self.port = port or free_port()
        self.recorder = _Recorder(refuse={a.lower() for a in refuse or set()},
                                  delay_s=delay_s)
        self.tls = tls
        self.context = context
        self.login = login
        self.logins: list[str] = []
        self._controller: Controller | None = None

    @property
    def url(self) -> str:
        scheme = {None: "smtp", "starttls": "smtp+starttls", "tls": "smtps"}[self.tls]
        creds = f"{self.login[0]}:{self.login[1]}@" if self.login else ""
        return f"{scheme}://{creds}127.0.0.1:{self.port}"

    def _authenticate(self, server: Any, session: Any, envelope: Any, mechanism: str,
                      auth_data: Any) -> AuthResult:
        assert self.login is not None
        user = auth_data.login.decode()
        ok = (user, auth_data.password.decode()) == self.login
        if ok:
            self.logins.append(user)
        return AuthResult(success=ok)

    def start(self) -> SmtpServer:
        if self._controller is None:
            kwargs: dict[str, Any] = {}
            if self.tls == "starttls":
                kwargs.update(tls_context=self.context, require_starttls=True)
            elif self.tls == "tls":
                # aiosmtpd offers AUTH only after STARTTLS, not under implicit TLS.
                assert self.login is None, "login needs tls='starttls'"
                kwargs.update(ssl_context=self.context)
            if self.login is not None:
                kwargs.update(authenticator=self._authenticate, auth_required=True)
            self._controller = Controller(self.recorder, hostname="127.0.0.1",
                                          port=self.port, ready_timeout=10.0, **kwargs)
            self._controller.start()
        return self

    def stop(self) -> None:
        if self._controller is not None:
            self._controller.stop()
            self._controller = None

    @property
    def mails(self) -> list[Caught]:
        with self.recorder.lock:
            return list(self.recorder.mails)

    def to(self, address: str) -> list[Caught]:
        return [m for m in self.mails if address in m.rcpt_tos]

    def wait_for(self, count: int, timeout_s: float = 30.0) -> list[Caught]:
        """At least `count` mails, or AssertionError after the deadline."""
        deadline = time.monotonic() + timeout_s
        while len(self.mails) < count:
            assert time.monotonic() < deadline, f"{len(self.mails)} of {count} mails arrived"
            time.sleep(0.05)
        return self.mails


class Stalled:
    """A port that accepts connections and never says a word (a hung SMTP server)."""

    def __init__(self) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(64)
        self.port = int(self.sock.getsockname()[1])

    @property
    def url(self) -> str:
        return f"smtp://127.0.0.1:{self.port}"

    def close(self) -> None:
        self.sock.close()
