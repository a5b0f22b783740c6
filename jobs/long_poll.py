"""Wake-ups for trainers waiting in a task long poll (jobs/fl_api.py `task`).

One listener per portal process and event loop: a single channel-layer channel, added
to the group `fl-job-<id>` of every job that has a long poll waiting here, and a reader
task that hands each wake-up to the inbox of every poll waiting for that job. A
thousand waiting trainers thus cost one subscription per job, not a channel, a
subscription and a Redis round trip each.

The wake-up for a round that opened carries the round's task and the ids of the nodes
selected for it (jobs/events.py `round_task_ready`), so a woken poll answers without
a query; any other wake-up makes it read its task from the database again.
"""
import asyncio
import contextlib
import logging
import time
import weakref

from channels.layers import get_channel_layer

logger = logging.getLogger(__name__)

#: A group nobody waited on for this long is left (its subscription dropped).
IDLE_GROUP_S = 60.0


def job_group(job_id: int) -> str:
    return f"fl-job-{job_id}"


class Listener:
    """The listener of one event loop (see the module docstring)."""

    def __init__(self, layer=None):
        self._layer = layer or get_channel_layer()
        self._channel: str | None = None
        self._inboxes: dict[int, set[asyncio.Queue]] = {}
        self._joined: dict[int, float] = {}  # job id -> when its last inbox left (0: in use)
        self._lock = asyncio.Lock()
        self._reader: asyncio.Task | None = None

    @contextlib.asynccontextmanager
    async def inbox(self, job_id: int):
        """An asyncio.Queue that receives every wake-up of the job from the moment this
        returns (the group subscription has been sent by then: Redis takes it before any
        later PUBLISH) until the block exits."""
        inbox: asyncio.Queue = asyncio.Queue()
        self._inboxes.setdefault(job_id, set()).add(inbox)
        try:
            await self._join(job_id)
            yield inbox
        finally:
            waiting = self._inboxes.get(job_id, set())
            waiting.discard(inbox)
            if not waiting:
                self._inboxes.pop(job_id, None)
                if job_id in self._joined:  # not when the join itself failed: the next poll joins again
                    self._joined[job_id] = time.monotonic()

    async def _join(self, job_id: int) -> None:
        if job_id in self._joined:
            self._joined[job_id] = 0.0
            return
        async with self._lock:
            if self._channel is None:
                self._channel = await self._layer.new_channel()
                self._reader = asyncio.ensure_future(self._read())
            if job_id not in self._joined:
                await self._layer.group_add(job_group(job_id), self._channel)
            self._joined[job_id] = 0.0

    async def _read(self) -> None:
        """Hand every message to the inboxes of its job. A failure of the channel layer
        (Redis went away) is logged, and the listener starts over on a new channel with
        the same groups a second later; waiting polls meanwhile re-check every RECHECK_S."""
        while True:
            try:
                message = await self._layer.receive(self._channel)
                self._dispatch(message.get("event") or {})
                await self._leave_idle_groups()
            except asyncio.CancelledError:
                raise
            except Exception:
                logger.exception("the long-poll listener lost its channel; starting over")
                await self._start_over()

    def _dispatch(self, event: dict) -> None:
        if "nodes" in event:  # every waiting poll looks itself up: a set, once
            event["nodes"] = frozenset(event["nodes"])
        for inbox in list(self._inboxes.get(event.get("job"), ())):
            inbox.put_nowait(event)

    async def _start_over(self) -> None:
        """A new channel in the same groups, trying again every second until it works."""
        while True:
            await asyncio.sleep(1.0)
            try:
                async with self._lock:
                    self._channel = await self._layer.new_channel()
                    for job_id in list(self._joined):
                        await self._layer.group_add(job_group(job_id), self._channel)
                return
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                logger.warning("the long-poll listener cannot start over yet: %s", exc)

    async def _leave_idle_groups(self) -> None:
        now = time.monotonic()
        idle = [job for job, left in self._joined.items() if left and now - left > IDLE_GROUP_S]
        for job_id in idle:
            del self._joined[job_id]  # first, so a poll arriving meanwhile joins again
            async with self._lock:
                if job_id not in self._joined:
                    await self._layer.group_discard(job_group(job_id), self._channel)


_listeners: "weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, Listener]" = weakref.WeakKeyDictionary()


def listener() -> Listener:
    """The running event loop's listener (tests run several loops in one process)."""
    loop = asyncio.get_running_loop()
    if loop not in _listeners:
        _listeners[loop] = Listener()
    return _listeners[loop]
