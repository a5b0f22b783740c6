"""Sending to channel-layer groups after the transaction commits, without making the
writer wait. Only the apps' events.py modules call this (one path to the browser).

Each process has one sender: a daemon thread running its own event loop, which sends
queued messages one at a time, in the order they were committed. A request or a Celery
task hands its events over on commit and goes on; it never waits for Redis. (It used to
send each event through ``async_to_sync`` before answering: two thread hand-offs and a
Redis round trip per event, on the path of every update a node uploads; and from a
Celery thread, a new event loop, so a new Redis connection, per event.)

Live events are at-most-once: a page renders its history from the database first.
"""
import asyncio
import atexit
import logging
import threading

from channels.layers import get_channel_layer
from django.db import transaction

logger = logging.getLogger(__name__)


def broadcast_on_commit(groups: list[str], event: dict, *, message_type: str = "event.forward") -> None:
    transaction.on_commit(lambda: broadcast_now(groups, event, message_type=message_type))


def broadcast_now(groups: list[str], event: dict, *, message_type: str = "event.forward") -> None:
    """Queue `event` for `groups` on this process's sender; returns at once."""
    _SENDER.put([(group, {"type": message_type, "event": event}) for group in groups])


def broadcast_flush(timeout: float = 5.0) -> bool:
    """Wait until everything queued so far was sent (or failed); False on timeout."""
    return _SENDER.flush(timeout)


class _Sender:
    """The per-process sender thread and its queue (an asyncio.Queue of its loop)."""

    def __init__(self):
        self._lock = threading.Lock()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._queue: asyncio.Queue | None = None
        self._pending = 0
        self._idle = threading.Condition(self._lock)

    def put(self, messages: list[tuple[str, dict]]) -> None:
        with self._lock:
            if self._loop is None:
                self._start()
            self._pending += 1
            loop, queue = self._loop, self._queue
        loop.call_soon_threadsafe(queue.put_nowait, messages)

    def flush(self, timeout: float) -> bool:
        with self._idle:
            return self._idle.wait_for(lambda: not self._pending, timeout)

    def _start(self) -> None:
        ready = threading.Event()
        threading.Thread(target=self._run, args=(ready,), name="broadcast", daemon=True).start()
        ready.wait()

    def _run(self, ready: threading.Event) -> None:
        loop = asyncio.new_event_loop()
        asyncio.set_event_loop(loop)
        self._loop, self._queue = loop, asyncio.Queue()
        ready.set()
        loop.run_until_complete(self._drain())

    async def _drain(self) -> None:
        while True:
            batches = [await self._queue.get()]
            while not self._queue.empty():  # what one commit queued comes in a burst: send it together
                batches.append(self._queue.get_nowait())
            layer = get_channel_layer()
            for group, message in _wake_ups_first(batches) if layer is not None else ():
                try:
                    await layer.group_send(group, message)
                except Exception:  # a lost live event must never break anything else
                    logger.exception("broadcast to %s failed", group)
            with self._idle:
                self._pending -= len(batches)
                self._idle.notify_all()


def _wake_ups_first(batches: list[list[tuple[str, dict]]]) -> list[tuple[str, dict]]:
    """The messages of `batches` in order, except that trainers' wake-ups (`fl.wake`)
    go before the browsers' events: they are on the path of the next round."""
    messages = [item for batch in batches for item in batch]
    return sorted(messages, key=lambda item: item[1]["type"] != "fl.wake")  # stable


_SENDER = _Sender()
atexit.register(broadcast_flush, 2.0)  # a management command's last events still go out
