"""Sending to channel-layer groups after the transaction commits. Only the apps'
events.py modules call this (one path to the browser)."""
import logging

from asgiref.sync import async_to_sync
from channels.layers import get_channel_layer
from django.db import transaction

logger = logging.getLogger(__name__)


def broadcast_on_commit(groups: list[str], event: dict, *, message_type: str = "event.forward") -> None:
    transaction.on_commit(lambda: broadcast_now(groups, event, message_type=message_type))


def broadcast_now(groups: list[str], event: dict, *, message_type: str = "event.forward") -> None:
    layer = get_channel_layer()
    if layer is None:
        return
    for group in groups:
        try:
            async_to_sync(layer.group_send)(group, {"type": message_type, "event": event})
        except Exception:  # a lost live event must never break the write that caused it
            logger.exception("broadcast to %s failed", group)
