"""Mail delivery of the notification service as a real process, with a real SMTP server
(aiosmtpd on a free port) and real JetStream: one mail per notification whatever the
redeliveries and crashes, retries while SMTP is down, a 550 ends one delivery only."""

from __future__ import annotations

import asyncio
import time
import urllib.request
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import TYPE_CHECKING

import pytest
from shop.events.v1 import envelope_pb2
from shop.notification.v1 import notification_pb2 as pb
from shop.notification.v1 import notification_pb2_grpc
from shop.payment.v1 import payment_pb2
from shop.user.v1 import user_pb2

from ops.natsd import NatsServer
from ops.process import ServiceProcess, free_port
from services.common import events
from services.common.bus import Bus
from services.common.outbox import new_envelope
from tests.fixtures_services import START_TIMEOUT_S, ServiceFactory
from tests.fixtures_storage import both_backends
from tests.support import mesh
from tests.support.mesh import nats_auth
from tests.support.smtp import SmtpServer, Stalled

pytestmark = [pytest.mark.timeout(120), both_backends]

if TYPE_CHECKING:  # on an aio channel the stub is the .pyi's async one
    Stub = notification_pb2_grpc.NotificationServiceAsyncStub
else:
    Stub = notification_pb2_grpc.NotificationServiceStub

# Quick retries, so a test waits seconds, not the production minutes.
FAST_RETRY = {
    "SHOP_MAIL_BACKOFF_S": "0.2",
    "SHOP_MAIL_BACKOFF_CAP_S": "1",
    "SHOP_MAIL_BREAKER_RESET_S": "1",
    "SHOP_MAIL_TIMEOUT_S": "2",
}


@pytest.fixture
async def bus(fresh_nats: NatsServer) -> AsyncIterator[Bus]:
    b = await Bus.connect(fresh_nats.url, name="mail-test", auth=nats_auth())
    try:
        await b.ensure_streams()
        yield b
    finally:
        await b.close()


def user_created(user_id: str, email: str, name: str) -> envelope_pb2.Envelope:
    user = user_pb2.User(id=user_id, email=email, name=name)
    return new_envelope(events.USER_CREATED, user_pb2.UserCreated(user=user), source="user",
                        aggregate_id=user_id, correlation_id=f"req-{uuid.uuid4().hex[:12]}")


def receipt(user_id: str, order_id: str) -> envelope_pb2.Envelope:
    payment = payment_pb2.Payment(order_id=order_id, user_id=user_id, amount_cents=990,
                                  currency="USD", status=payment_pb2.PAYMENT_STATUS_CHARGED)
    return new_envelope(events.PAYMENT_COMPLETED, payment_pb2.PaymentCompleted(payment=payment),
                        source="payment", aggregate_id=order_id)


async def redeliver(bus: Bus, env: envelope_pb2.Envelope) -> None:
    """The same envelope under a new Nats-Msg-Id: JetStream's duplicate window lets it by."""
    await bus.js.publish(env.subject, env.SerializeToString(),
                         headers={"Nats-Msg-Id": uuid.uuid4().hex})


async def wait_for(cond: Callable[[], Awaitable[bool]], timeout_s: float = 30.0,
                   what: str = "condition") -> None:
    deadline = time.monotonic() + timeout_s
    while not await cond():
        assert time.monotonic() < deadline, f"{what} not met in {timeout_s:.0f}s"
        await asyncio.sleep(0.05)


async def notes(stub: Stub, user_id: str) -> list[pb.Notification]:
    resp = await stub.ListNotifications(pb.ListNotificationsRequest(user_id=user_id,
                                                                   page_size=100))
    return list(resp.notifications)


async def deliveries(stub: Stub, user_ids: list[str]) -> dict[str, list[int]]:
    return {u: [n.delivery for n in await notes(stub, u)] for u in user_ids}


def scrape(port: int) -> dict[str, float]:
    """The service's /metrics as {series: value}."""
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    with opener.open(f"http://127.0.0.1:{port}/metrics", timeout=5) as resp:
        text = resp.read().decode()
    out: dict[str, float] = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, _, value = line.rpartition(" ")
            out[name] = float(value)
    return out


def start_notification(services: ServiceFactory, smtp_url: str, **env: str) -> ServiceProcess:
    return services.start("notification", SMTP_URL=smtp_url, timeout=START_TIMEOUT_S, **env)


async def test_one_welcome_mail_despite_redelivery_and_a_kill_before_sending(
        services: ServiceFactory, bus: Bus) -> None:
    hung = Stalled()  # the first server never answers: the mail is owed, not yet sent
    smtp = SmtpServer().start()
    try:
        proc = start_notification(services, hung.url, SHOP_MAIL_TIMEOUT_S="60")
        env = user_created("u-ada", "ada@example.com", "Ada")
        await bus.publish(env)
        await redeliver(bus, env)
        async with mesh.channel(proc.addr) as chan:
            stub = Stub(chan)
            await wait_for(lambda: _one_with(stub, "u-ada", pb.DELIVERY_STATUS_PENDING),
                           what="welcome committed, mail pending")
        # Killed between the commit and the send (its attempt hangs on the silent server).
        proc.kill()
        proc.extra_env["SMTP_URL"] = smtp.url
        proc.start().wait_ready(60)
        await redeliver(bus, env)  # and once more after the restart
        async with mesh.channel(proc.addr) as chan:
            stub = Stub(chan)
            await wait_for(lambda: _one_with(stub, "u-ada", pb.DELIVERY_STATUS_SENT),
                           what="welcome mail sent")
            [note] = await notes(stub, "u-ada")
            got = await stub.GetNotification(pb.GetNotificationRequest(id=note.id),
                                              metadata=(("x-user-id", "u-ada"),))
            assert got.notification.delivery == pb.DELIVERY_STATUS_SENT
            assert got.notification.delivery_error == ""
        # SENT is written after the server's 250: no attempt of it is left in flight.
        [mail] = smtp.mails
        msg = mail.message
        assert mail.rcpt_tos == ["ada@example.com"]
        assert msg["To"] == "Ada <ada@example.com>"
        assert msg["Subject"] == "Welcome to shop, Ada"
        assert msg["Message-ID"] == f"<notification-{note.id}@shop.local>"
        assert msg["X-Request-Id"] == env.correlation_id
        assert msg.get_content_type() == "multipart/alternative"
        text = msg.get_body(("plain",))
        html = msg.get_body(("html",))
        assert text is not None and html is not None
        assert "Welcome to shop, Ada!" in text.get_content()
        assert "<h1" in html.get_content() and "Welcome to shop, Ada" in html.get_content()
    finally:
        smtp.stop()
        hung.close()


async def _one_with(stub: Stub, user_id: str, status: int) -> bool:
    got = await notes(stub, user_id)
    assert len(got) <= 1, got
    return len(got) == 1 and got[0].delivery == status


async def test_smtp_down_for_five_seconds_then_every_mail_arrives_once(
        services: ServiceFactory, bus: Bus) -> None:
    smtp = SmtpServer()  # its port is fixed, nothing listens there yet
    metrics_port = free_port()
    proc = start_notification(services, smtp.url, NOTIFICATION_METRICS_PORT=str(metrics_port),
                              **FAST_RETRY)
    users = [(f"u-{i}", f"user{i}@example.com") for i in range(6)]
    down_at = time.monotonic()
    try:
        for uid, addr in users:
            await bus.publish(user_created(uid, addr, f"User {uid}"))
        ids = [u for u, _ in users]
        async with mesh.channel(proc.addr) as chan:
            stub = Stub(chan)
            # The consumer does not wait for mail: every notification is there meanwhile.
            await wait_for(lambda: _all(stub, ids, pb.DELIVERY_STATUS_PENDING),
                           what="all notifications stored")
            await wait_for(lambda: _async(scrape(metrics_port).get("shop_mail_retried_total",
                                                                  0) >= 1),
                           what="a failed attempt")
            await asyncio.sleep(max(0.0, 5.0 - (time.monotonic() - down_at)))  # the outage
            assert (await deliveries(stub, ids)) == {u: [pb.DELIVERY_STATUS_PENDING]
                                                     for u in ids}
            backlog = scrape(metrics_port)
            assert backlog["shop_mail_pending"] == len(users)
            assert backlog["shop_mail_pending_oldest_age_seconds"] >= 4.0
            smtp.start()
            await wait_for(lambda: _all(stub, ids, pb.DELIVERY_STATUS_SENT),
                           what="all mails sent after SMTP came back")
        mails = smtp.mails
        assert sorted(m.rcpt_tos[0] for m in mails) == sorted(a for _, a in users)
        assert len({m.message["Message-ID"] for m in mails}) == len(users)
        counted = scrape(metrics_port)
        assert counted["shop_mail_sent_total"] == len(users)
        assert counted["shop_mail_pending"] == 0
        assert counted["shop_mail_pending_oldest_age_seconds"] == 0
        assert counted['shop_mail_failed_total{reason="refused"}'] == 0
    finally:
        smtp.stop()


async def _async(value: bool) -> bool:
    return value


async def _all(stub: Stub, user_ids: list[str], status: int) -> bool:
    return all(d == [status] for d in (await deliveries(stub, user_ids)).values())


async def test_a_550_fails_that_delivery_only(services: ServiceFactory, bus: Bus) -> None:
    smtp = SmtpServer(refuse={"gone@example.com"}).start()
    metrics_port = free_port()
    try:
        proc = start_notification(services, smtp.url,
                                  NOTIFICATION_METRICS_PORT=str(metrics_port), **FAST_RETRY)
        for uid, addr in (("u-a", "a@example.com"), ("u-gone", "gone@example.com"),
                          ("u-b", "b@example.com")):
            await bus.publish(user_created(uid, addr, ""))
        await bus.publish(receipt("u-gone", "o-1"))
        await bus.publish(receipt("u-a", "o-2"))
        await bus.publish(receipt("u-nobody", "o-3"))  # no user.created: no address
        async with mesh.channel(proc.addr) as chan:
            stub = Stub(chan)
            await wait_for(lambda: _settled(stub, {"u-a": 2, "u-gone": 2, "u-b": 1,
                                                   "u-nobody": 1}), what="all settled")
            got = await deliveries(stub, ["u-a", "u-b", "u-gone"])
            assert got["u-a"] == [pb.DELIVERY_STATUS_SENT] * 2
            assert got["u-b"] == [pb.DELIVERY_STATUS_SENT]
            assert got["u-gone"] == [pb.DELIVERY_STATUS_FAILED] * 2
            for note in await notes(stub, "u-gone"):
                assert note.delivery_error.startswith("550 5.1.1"), note.delivery_error
                assert "mailbox unavailable" in note.delivery_error
            [orphan] = await notes(stub, "u-nobody")
            assert orphan.delivery == pb.DELIVERY_STATUS_FAILED
            assert orphan.delivery_error == "no email address known for user u-nobody"
        assert sorted(m.rcpt_tos[0] for m in smtp.mails) == [
            "a@example.com", "a@example.com", "b@example.com"]
        counted = scrape(metrics_port)
        assert counted['shop_mail_failed_total{reason="refused"}'] == 2
        assert counted["shop_mail_sent_total"] == 3
    finally:
        smtp.stop()


async def _settled(stub: Stub, want: dict[str, int]) -> bool:
    for uid, count in want.items():
        got = await notes(stub, uid)
        if len(got) != count or any(n.delivery == pb.DELIVERY_STATUS_PENDING for n in got):
            return False
    return True


async def test_two_instances_on_one_database_send_each_mail_once(
        services: ServiceFactory, bus: Bus) -> None:
    # A slow server: each sender's rounds last long enough for the other one to look.
    smtp = SmtpServer(delay_s=0.05).start()
    try:
        first, second = (start_notification(services, smtp.url, **FAST_RETRY)
                         for _ in range(2))
        assert first.data_dir == second.data_dir  # one SQLite file, two senders
        users = [(f"u-{i}", f"two{i}@example.com") for i in range(30)]
        for uid, addr in users:
            await bus.publish(user_created(uid, addr, ""))
        ids = [u for u, _ in users]
        async with mesh.channel(first.addr) as chan:
            stub = Stub(chan)
            await wait_for(lambda: _all(stub, ids, pb.DELIVERY_STATUS_SENT),
                           what="every mail sent")
        mails = smtp.mails
        assert sorted(m.rcpt_tos[0] for m in mails) == sorted(a for _, a in users)
        assert len({m.message["Message-ID"] for m in mails}) == len(users)
    finally:
        smtp.stop()
