"""HTTP responses the apps' APIs share."""
import asyncio

from django.http import FileResponse


class ArtifactResponse(FileResponse):
    """A FileResponse that an ASGI server streams a block at a time.

    Django's ASGI handler iterates a response asynchronously; given FileResponse's
    synchronous iterator it first reads the whole file into a list ("StreamingHttpResponse
    must consume synchronous iterators"), which holds a 100 MB model in memory per
    download. Here the file is read ``ASYNC_BLOCK`` bytes at a time in the event loop's
    default executor instead (``run_in_executor``; asgiref's ``sync_to_async`` took about
    twice as much CPU per block, bench/transfer.py). Synchronous consumers (WSGI, the test
    client) get FileResponse's iterator unchanged."""

    ASYNC_BLOCK = 1 << 20

    async def __aiter__(self):
        if self.file_to_stream is None:
            async for part in super().__aiter__():
                yield part
            return
        loop, read = asyncio.get_running_loop(), self.file_to_stream.read
        while chunk := await loop.run_in_executor(None, read, self.ASYNC_BLOCK):
            yield chunk
