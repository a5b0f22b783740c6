"""Model downloads are streamed block by block under ASGI: Django's ASGI handler would read
a plain FileResponse's synchronous iterator into memory whole before sending it."""
import asyncio
import os
import warnings

import pytest
from django.core.handlers.asgi import ASGIHandler

from core.responses import ArtifactResponse

# Closing a response sends request_finished, whose close_old_connections touches the
# database connections a test before this one may have opened in this thread: with no
# database access allowed here, that raised (an order-dependent failure after test_apis).
pytestmark = pytest.mark.django_db


def blob(tmp_path, size):
    path = tmp_path / "model.safetensors"
    path.write_bytes(os.urandom(size))
    return path


def test_asgi_handler_sends_the_file_in_blocks_without_consuming_it_first(tmp_path):
    path = blob(tmp_path, 3 * ArtifactResponse.ASYNC_BLOCK + 12345)
    response = ArtifactResponse(open(path, "rb"), content_type="application/octet-stream")
    reads = []
    original_read = response.file_to_stream.read

    def counting_read(size=-1):
        reads.append(size)
        return original_read(size)

    response.file_to_stream.read = counting_read
    sent = []

    async def send(message):
        sent.append(message)

    with warnings.catch_warnings():
        warnings.simplefilter("error")  # "must consume synchronous iterators" would fail here
        asyncio.run(ASGIHandler().send_response(response, send))
    assert sent[0]["type"] == "http.response.start" and sent[0]["status"] == 200
    headers = {name.lower(): value for name, value in sent[0]["headers"]}
    assert headers[b"content-length"] == str(path.stat().st_size).encode()
    assert b"".join(m.get("body", b"") for m in sent[1:]) == path.read_bytes()
    assert set(reads) == {ArtifactResponse.ASYNC_BLOCK}  # never one read of the whole file
    assert len(reads) == 5  # 4 blocks, then the empty read at the end
    response.close()  # as ASGIHandler.handle() does after send_response()
    assert response.file_to_stream.closed


def test_synchronous_consumers_still_get_the_whole_file(tmp_path):
    path = blob(tmp_path, 100_000)
    response = ArtifactResponse(open(path, "rb"))
    assert b"".join(response.streaming_content) == path.read_bytes()
    response.close()


def test_a_response_that_is_not_a_file_falls_back_to_django(tmp_path):
    response = ArtifactResponse([b"a", b"b"])
    sent = []

    async def send(message):
        sent.append(message)

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        asyncio.run(ASGIHandler().send_response(response, send))
    assert b"".join(m.get("body", b"") for m in sent[1:]) == b"ab"
