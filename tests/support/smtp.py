"""A real SMTP server for tests: aiosmtpd in its own thread on a free port, recording
every mail it accepted, refusing chosen recipients with a 550, and able to come up late
(SMTP down, then back) on a port fixed in advance."""

from __future__ import annotations

import email
import email.policy
import socket
import threading
import time
from dataclasses import dataclass, field
from email.message import EmailMessage
from typing import Any

from aiosmtpd.controller import Controller

from ops.process import free_port


@dataclass
class Caught:
    mail_from: str
    rcpt_tos: list[str]
    message: EmailMessage


@dataclass
class _Recorder:
    refuse: set[str] = field(default_factory=set)
    mails: list[Caught] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    async def handle_RCPT(self, server: Any, session: Any, envelope: Any, address: str,
                          rcpt_options: list[str]) -> str:
        if address.lower() in self.refuse:
            return f"550 5.1.1 <{address}>: mailbox unavailable"
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        msg = email.message_from_bytes(envelope.original_content, policy=email.policy.default)
        assert isinstance(msg, EmailMessage)
        with self.lock:
            self.mails.append(Caught(envelope.mail_from, list(envelope.rcpt_tos), msg))
        return "250 OK"


class SmtpServer:
    """`start()` / `stop()` any number of times, always on the same port."""

    def __init__(self, refuse: set[str] | None = None, port: int = 0) -> None:
        self.port = port or free_port()
        self.recorder = _Recorder(refuse={a.lower() for a in refuse or set()})
        self._controller: Controller | None = None

    @property
    def url(self) -> str:
        return f"smtp://127.0.0.1:{self.port}"

    def start(self) -> SmtpServer:
        if self._controller is None:
            self._controller = Controller(self.recorder, hostname="127.0.0.1",
                                          port=self.port, ready_timeout=10.0)
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
