"""NotificationService over gRPC: proto <-> domain. No SQL here."""

from __future__ import annotations

from typing import Any

from grpc import aio
from shop.notification.v1 import notification_pb2 as pb
from shop.notification.v1 import notification_pb2_grpc

from services.common.identity import resolve_user
from services.notification import domain
from services.notification.convert import to_proto
from services.notification.store import NotificationRepository


class NotificationServicer(notification_pb2_grpc.NotificationServiceServicer):
    def __init__(self, store: NotificationRepository) -> None:
        self.store = store

    async def ListNotifications(
        self, request: pb.ListNotificationsRequest, context: aio.ServicerContext[Any, Any]
    ) -> pb.ListNotificationsResponse:
        user_id = resolve_user(request.user_id, for_read=True)
        size = domain.page_size(request.page_size)
        before = domain.decode_page_token(request.page_token, request.unread_only)
        page = await self.store.list(user_id, unread_only=request.unread_only, limit=size,
                                     before_seq=before)
        token = ("" if page.next_after is None
                 else domain.encode_page_token(page.next_after, request.unread_only))
        return pb.ListNotificationsResponse(
            notifications=[to_proto(n) for n in page.items], next_page_token=token)

    async def MarkRead(
        self, request: pb.MarkReadRequest, context: aio.ServicerContext[Any, Any]
    ) -> pb.MarkReadResponse:
        notification_id = domain.validate_id(request.id)
        # for_read: naming another user gives NOT_FOUND, like another user's notification.
        user_id = resolve_user(request.user_id, for_read=True)
        note = await self.store.mark_read(notification_id, user_id)
        return pb.MarkReadResponse(notification=to_proto(note))

    async def GetNotification(
        self, request: pb.GetNotificationRequest, context: aio.ServicerContext[Any, Any]
    ) -> pb.GetNotificationResponse:
        notification_id = domain.validate_id(request.id)
        user_id = resolve_user(request.user_id, for_read=True)
        found = domain.check_owner(await self.store.get(notification_id), notification_id,
                                   user_id)
        return pb.GetNotificationResponse(notification=to_proto(found))

    async def CountUnread(
        self, request: pb.CountUnreadRequest, context: aio.ServicerContext[Any, Any]
    ) -> pb.CountUnreadResponse:
        user_id = resolve_user(request.user_id, for_read=True)
        return pb.CountUnreadResponse(count=await self.store.count_unread(user_id))
