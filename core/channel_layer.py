"""The embedded default's channel layer.

Channels' InMemoryChannelLayer keeps one asyncio.Queue per channel, bound to the event
loop that created it. A group_send made from a Celery worker thread (through
async_to_sync, so on another loop) is not seen by a consumer waiting in the ASGI
server's loop until that loop wakes for another reason (measured: 5 s late). This layer
remembers the loop its receivers wait in and hands every send made from another loop
over to it, so events from worker threads arrive at once.
"""
import asyncio

from channels.layers import InMemoryChannelLayer


class EmbeddedChannelLayer(InMemoryChannelLayer):
    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self._receiver_loop: asyncio.AbstractEventLoop | None = None

    async def receive(self, channel):
        self._receiver_loop = asyncio.get_running_loop()
        return await super().receive(channel)

    def _foreign_loop(self) -> asyncio.AbstractEventLoop | None:
        loop = self._receiver_loop
        if loop is None or loop.is_closed() or not loop.is_running():
            return None
        return None if loop is asyncio.get_running_loop() else loop

    async def _on_receiver_loop(self, coroutine):
        loop = self._foreign_loop()
        if loop is None:
            return await coroutine
        return await asyncio.wrap_future(asyncio.run_coroutine_threadsafe(coroutine, loop))

    async def send(self, channel, message):
        return await self._on_receiver_loop(super().send(channel, message))

    async def group_send(self, group, message):
        return await self._on_receiver_loop(super().group_send(group, message))
