"""The mail sender: drains the delivery outbox over SMTP, off the event consumers' path.

A background task of the notification service. Woken after each commit that owed a mail
(and at the next due retry), it takes due PENDING rows and sends them over a few SMTP
connections in parallel. Each attempt (connect, STARTTLS, login, send) has a deadline and
goes through the SMTP breaker. Outcomes:

- accepted: SENT.
- refused for good (a 5xx answer to the recipient or the data, an address SMTP cannot
  carry): FAILED with the server's reply; the breaker does not count it (the server works).
- anything else (down, slow, 4xx, a 5xx to MAIL FROM or AUTH, which says the sender's own
  set-up is wrong and hits every mail alike): retried with back-off; after
  SHOP_MAIL_GIVE_UP_S it is FAILED as expired.

Each round first claims its rows (see store.py), so instances sharing one database never
send the same mail at once. A crash between the notification's commit and the send leaves
the row PENDING: it is sent after the restart (which hands back the claims of the
instance's previous life at once), or by another instance once the claim runs out. A crash
after the server accepted a mail but before SENT was written sends it again with the same
Message-ID (at least once, recognisably the same mail).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable

import aiosmtplib
import pybreaker

from services.common.cancellation import within
from services.notification.delivery import MailFrom, PendingMail, backoff_s, render
from services.notification.mailconfig import MailSettings, SmtpTarget
from services.notification.metrics import MailMetrics
from services.notification.store import DeliveryRepository

__all__ = ["MailSender", "Refused", "classify"]

log = logging.getLogger("shop.notification.mail")

# Longest sleep when nothing is due: a safety net, since commits wake the sender.
_IDLE_S = 5.0
# Woken while the consumer is busy (commits keep coming), the sender waits for a quiet gap
# of _QUIET_S, at most _YIELD_S in all, and while the consumer stays busy it sends one
# round (SHOP_MAIL_BATCH mails) per gap: the consumer gets the CPU first and the mails of
# a burst go out together, a fraction of a second later.
_QUIET_S = 0.05
_YIELD_S = 1.0
# What drain() returns when it stopped early to yield: "wait, then go on at once".
_BUSY_S = 0.001


class Refused(Exception):
    """A permanent refusal of one mail; str() is the reason stored with it."""


def _reply(e: aiosmtplib.SMTPResponseException) -> str:
    return f"{e.code} {e.message}".strip()


def classify(exc: BaseException) -> Refused | None:
    """The permanent refusal `exc` stands for, or None when it is worth retrying."""
    if isinstance(exc, aiosmtplib.SMTPRecipientsRefused):
        codes = [r for r in exc.recipients if r.code >= 500]
        if codes:
            return Refused(_reply(codes[0]))
        return None
    if isinstance(exc, aiosmtplib.SMTPRecipientRefused | aiosmtplib.SMTPDataError):
        return Refused(_reply(exc)) if exc.code >= 500 else None
    # ssl.SSLCertVerificationError is a ValueError too: a certificate problem is the
    # server's (or our trust's), the same for every mail, so retried, never a refusal.
    if isinstance(exc, ValueError) and not isinstance(exc, OSError):
        return Refused(f"bad address: {exc}")
    return None


def _not_counted(exc: BaseException) -> bool:
    # The breaker judges the server: a refusal means it answers; a stop is not its fault.
    return isinstance(exc, asyncio.CancelledError) or classify(exc) is not None


def _reason(exc: BaseException) -> str:
    if isinstance(exc, TimeoutError):
        return "timed out"
    if isinstance(exc, aiosmtplib.SMTPResponseException):
        return _reply(exc)
    return str(exc) or type(exc).__name__


class MailSender:
    def __init__(self, store: DeliveryRepository, settings: MailSettings, metrics: MailMetrics,
                 *, owner: str = "sender", clock: Callable[[], float] = time.time) -> None:
        if settings.target is None:
            raise ValueError("mail delivery is off (SMTP_URL=off)")
        self.store = store
        self.owner = owner  # the instance id: what its claims are recorded under
        self.settings = settings
        self.target: SmtpTarget = settings.target
        self.metrics = metrics
        self.clock = clock
        self.mail_from = MailFrom.parse(settings.sender)
        self.breaker = pybreaker.CircuitBreaker(
            fail_max=settings.breaker_fail_max, reset_timeout=settings.breaker_reset_s,
            exclude=[_not_counted], name="smtp", throw_new_error_on_trip=False)
        self._wake = asyncio.Event()
        self._released = False
        # A claimed round must end (every attempt at its deadline) before the claim does.
        rounds = -(-settings.batch // settings.concurrency)
        self.claim_s = rounds * settings.attempt_timeout_s + 5.0

    def wake(self, _notification_id: str = "") -> None:
        """After a commit that owes a mail (the consumer's after-commit hook)."""
        self._wake.set()

    async def run(self) -> None:
        """Forever (cancel to stop); a failing round is logged and tried again."""
        log.info("mail delivery on", extra={"smtp": self.target.describe(),
                                            "from": self.settings.sender})
        try:
            while True:
                try:
                    await self._sleep(await self.drain())
                except asyncio.CancelledError:
                    raise
                except Exception:
                    log.exception("mail round failed; trying again")
                    await self._hand_back()
                    await self._sleep(1.0)
        finally:
            # Stopping: what this round still holds is due again at once, for whoever
            # sends next (a restart of this instance would hand it back anyway).
            await asyncio.shield(self._hand_back())

    async def _hand_back(self) -> None:
        try:
            async with asyncio.timeout(2.0):
                await self.store.release(self.owner)
        except Exception:
            log.warning("mail claims not handed back; they run out on their own",
                        exc_info=True)

    async def _sleep(self, seconds: float) -> None:
        if seconds <= 0:
            return
        try:
            await within(self._wake.wait(), seconds)
        except TimeoutError:
            return  # a retry fell due: no one to yield to
        started = time.monotonic()
        while time.monotonic() - started < _YIELD_S:
            self._wake.clear()
            try:
                await within(self._wake.wait(), _QUIET_S)
            except TimeoutError:
                return

    async def drain(self) -> float:
        """Send every mail due now; returns how long to wait before the next round."""
        self._wake.clear()
        if not self._released:
            back = await self.store.release(self.owner)
            self._released = True
            if back:
                log.info("mail claims of a previous run handed back", extra={"mails": back})
        while True:
            due = await self.store.claim(self.owner, self.clock(), self.settings.batch,
                                         self.claim_s)
            if not due:
                break
            taken = len(due)
            if self.breaker.current_state != pybreaker.STATE_CLOSED:
                # Open or half-open: one mail probes the server before the others go.
                probe, due = due[0], due[1:]
                if not await self._send_all([probe], workers=1):
                    await self.store.release(self.owner,
                                             [m.notification_id for m in (probe, *due)])
                    return self._until_breaker_retry()
            if due and not await self._send_all(due, self.settings.concurrency):
                await self.store.release(self.owner, [m.notification_id for m in due])
                return self._until_breaker_retry()
            if taken < self.settings.batch:
                break
            if self._wake.is_set():
                # The consumer committed during this round: it is busy; yield to it (see
                # _sleep) before the next round rather than draining the rest at once.
                return _BUSY_S
        next_at = await self.store.next_due_at()
        if next_at is None:
            return _IDLE_S
        return min(_IDLE_S, max(0.01, next_at - self.clock()))

    async def refresh_metrics(self) -> None:
        """The backlog gauges, read from the delivery outbox (called at each scrape)."""
        count, oldest = await self.store.backlog()
        self.metrics.pending.set(count)
        self.metrics.oldest_pending.set(0.0 if oldest is None else max(0.0, time.time() - oldest))

    def _until_breaker_retry(self) -> float:
        self.metrics.breaker_rejected.inc()
        opened = self.breaker._state_storage.opened_at
        if opened is None:
            return self.settings.breaker_reset_s
        waited = time.time() - opened.timestamp()
        return max(0.05, self.settings.breaker_reset_s - waited)

    async def _send_all(self, mails: list[PendingMail], workers: int) -> bool:
        """False when the breaker stopped the round (the rest stays due)."""
        queue: asyncio.Queue[PendingMail] = asyncio.Queue()
        for m in mails:
            queue.put_nowait(m)
        stopped = asyncio.Event()
        tasks = [asyncio.create_task(self._worker(queue, stopped))
                 for _ in range(min(workers, len(mails)))]
        try:
            await asyncio.gather(*tasks)
        finally:
            for t in tasks:
                t.cancel()
        return not stopped.is_set()

    async def _worker(self, queue: asyncio.Queue[PendingMail], stopped: asyncio.Event) -> None:
        """One SMTP connection, reused for the mails it takes, closed when none are left."""
        client: aiosmtplib.SMTP | None = None
        try:
            while not stopped.is_set():
                try:
                    mail = queue.get_nowait()
                except asyncio.QueueEmpty:
                    return
                client = await self._attempt(mail, client, stopped)
        finally:
            if client is not None:
                await _close(client)

    async def _attempt(self, mail: PendingMail, client: aiosmtplib.SMTP | None,
                       stopped: asyncio.Event) -> aiosmtplib.SMTP | None:
        """One try of one mail; returns the connection to reuse (None: make a new one)."""
        msg = render(mail, self.mail_from)
        attempts = mail.attempts + 1
        try:
            with self.breaker.calling():
                async with asyncio.timeout(self.settings.attempt_timeout_s):
                    client = await self._send(client, msg, mail.recipient)
        except pybreaker.CircuitBreakerError:
            stopped.set()  # not an attempt: the mail stays due as it was
            return client
        except asyncio.CancelledError:
            raise
        except Exception as e:
            if client is not None:
                client.close()
            refused = classify(e)
            if refused is not None:
                await self._failed(mail, attempts, str(refused), "refused")
                return None
            await self._retry(mail, attempts, _reason(e))
            return None
        await self.store.mark_sent(mail.notification_id, attempts)
        self.metrics.sent.inc()
        log.info("mail sent", extra={"notification_id": mail.notification_id,
                                     "to": mail.recipient, "attempts": attempts})
        return client

    async def _send(self, client: aiosmtplib.SMTP | None, msg: bytes,
                    recipient: str) -> aiosmtplib.SMTP:
        if client is None or not client.is_connected:
            t = self.target
            client = aiosmtplib.SMTP(
                hostname=t.host, port=t.port, use_tls=t.security == "tls",
                start_tls=t.security == "starttls", username=t.username or None,
                password=t.password or None, timeout=self.settings.attempt_timeout_s)
            try:
                await client.connect()
            except BaseException:
                client.close()
                raise
        try:
            await client.sendmail(self.mail_from.address, [recipient], msg)
        except BaseException:
            client.close()  # also on the deadline's cancellation: drop it, no QUIT
            raise
        return client

    async def _failed(self, mail: PendingMail, attempts: int, reason: str, kind: str) -> None:
        await self.store.mark_failed(mail.notification_id, attempts, reason)
        self.metrics.failed.labels(reason=kind).inc()
        log.warning("mail not delivered", extra={"notification_id": mail.notification_id,
                                                 "to": mail.recipient, "reason": reason})

    async def _retry(self, mail: PendingMail, attempts: int, reason: str) -> None:
        now = self.clock()
        if now - mail.created_at >= self.settings.give_up_after_s:
            await self._failed(mail, attempts, f"gave up after {attempts} attempts: {reason}",
                               "expired")
            return
        delay = backoff_s(attempts, self.settings.backoff_s, self.settings.backoff_cap_s)
        await self.store.retry_later(mail.notification_id, attempts, now + delay, reason)
        self.metrics.retried.inc()
        log.info("mail will be retried", extra={"notification_id": mail.notification_id,
                                                "attempts": attempts, "in_s": delay,
                                                "reason": reason})


async def _close(client: aiosmtplib.SMTP) -> None:
    """QUIT when the connection is healthy, else just drop it; never raises."""
    try:
        if client.is_connected:
            await within(client.quit(), 2.0)
    except Exception:
        client.close()
