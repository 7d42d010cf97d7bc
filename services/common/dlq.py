"""The dead-letter stream SHOP_DLQ: write, list and replay dead letters.

A dead letter is the original Envelope bytes on `dlq.<consumer>` with headers naming the
original subject, the reason, the consumer and the event id. `shopctl dlq list|replay`
calls `list_dead_letters` and `replay`.
"""

from __future__ import annotations

import datetime as dt
import uuid
from dataclasses import dataclass
from typing import Literal

from nats.js import JetStreamContext
from nats.js.api import PubAck, RawStreamMsg
from nats.js.errors import NotFoundError

from services.common.events import DLQ_STREAM

__all__ = [
    "H_CONSUMER",
    "H_EVENT_ID",
    "H_ORIGINAL_SUBJECT",
    "H_REASON",
    "H_STREAM_SEQ",
    "DeadLetter",
    "dead_letter",
    "list_dead_letters",
    "replay",
]

H_ORIGINAL_SUBJECT = "Shop-Original-Subject"
H_REASON = "Shop-Reason"
H_CONSUMER = "Shop-Consumer"
H_EVENT_ID = "Shop-Event-Id"
H_STREAM_SEQ = "Shop-Stream-Seq"


@dataclass(frozen=True)
class DeadLetter:
    seq: int  # sequence in SHOP_DLQ: the id `replay` takes
    event_id: str
    subject: str  # the original subject
    consumer: str
    reason: str
    time: dt.datetime | None
    data: bytes  # the original Envelope bytes
    correlation_id: str = ""


def _header_value(text: str, limit: int = 512) -> str:
    # Header values are single lines.
    return " ".join(text.split())[:limit]


async def dead_letter(js: JetStreamContext, *, consumer: str, subject: str, data: bytes,
                      reason: str, event_id: str, stream_seq: int,
                      correlation_id: str = "") -> PubAck:
    """Write one dead letter. Its Nats-Msg-Id is consumer + original stream sequence, so
    the handler's verdict and the max-deliveries advisory never both land in the DLQ,
    while a replayed event (new stream sequence) can be dead-lettered again."""
    headers = {
        "Nats-Msg-Id": f"dlq:{consumer}:{stream_seq}",
        H_ORIGINAL_SUBJECT: subject,
        H_REASON: _header_value(reason) or "unknown",
        H_CONSUMER: consumer,
        H_EVENT_ID: event_id or "-",
        H_STREAM_SEQ: str(stream_seq),
    }
    if correlation_id:
        headers["x-request-id"] = correlation_id
    return await js.publish(f"dlq.{consumer}", data, headers=headers)


def _to_dead_letter(raw: RawStreamMsg) -> DeadLetter:
    h = raw.headers or {}
    return DeadLetter(
        seq=int(raw.seq or 0),
        event_id=str(h.get(H_EVENT_ID, "")),
        subject=str(h.get(H_ORIGINAL_SUBJECT, "")),
        consumer=str(h.get(H_CONSUMER, "")),
        reason=str(h.get(H_REASON, "")),
        time=raw.time,
        data=raw.data or b"",
        correlation_id=str(h.get("x-request-id", "")),
    )


async def list_dead_letters(js: JetStreamContext, *, limit: int = 1000) -> list[DeadLetter]:
    """Dead letters, oldest first."""
    out: list[DeadLetter] = []
    seq = 1
    while len(out) < limit:
        try:
            # next_by_subj skips deleted (already replayed) sequences.
            raw = await js.get_msg(DLQ_STREAM, seq=seq, subject="dlq.>", next=True)
        except NotFoundError:
            break
        out.append(_to_dead_letter(raw))
        seq = int(raw.seq or seq) + 1
    return out


async def replay(js: JetStreamContext, seq: int | Literal["all"]) -> int:
    """Re-publish dead letters to their original subjects and remove them from the DLQ.

    The fresh Nats-Msg-Id gets past JetStream's duplicate window; the consumers' inboxes
    (keyed by the unchanged event id) keep those that handled it from applying it twice.
    Returns how many were replayed; NotFoundError for an unknown seq.
    """
    if seq == "all":
        targets = await list_dead_letters(js, limit=1_000_000)
    else:
        targets = [_to_dead_letter(await js.get_msg(DLQ_STREAM, seq=seq))]
    for dl in targets:
        if not dl.subject:
            raise ValueError(f"dead letter {dl.seq} has no original subject")
        headers = {"Nats-Msg-Id": f"{dl.event_id}:replay:{uuid.uuid4().hex}"}
        if dl.correlation_id:
            headers["x-request-id"] = dl.correlation_id
        await js.publish(dl.subject, dl.data, headers=headers)
        await js.delete_msg(DLQ_STREAM, dl.seq)
    return len(targets)
