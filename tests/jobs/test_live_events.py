"""Live events through the real ASGI app: the websocket consumers, the embedded channel
layer, and a Celery task in the embedded worker thread reaching a browser at once."""
import asyncio
import threading
import time

import pytest
from asgiref.sync import async_to_sync, sync_to_async
from channels.layers import InMemoryChannelLayer
from channels.testing import WebsocketCommunicator

from core.channel_layer import EmbeddedChannelLayer
from flportal.asgi import application
from jobs.models import Job
from jobs.services.transitions import job_transition
from tests.conftest import create_job, register_node

ORIGIN = (b"origin", b"http://localhost")


def session_headers(client, user) -> list[tuple[bytes, bytes]]:
    client.force_login(user)
    return [ORIGIN, (b"cookie", f"sessionid={client.cookies['sessionid'].value}".encode())]


async def connect(path, headers):
    communicator = WebsocketCommunicator(application, path, headers=headers)
    connected, code = await communicator.connect(timeout=5)
    return communicator, connected, code


@pytest.fixture
def live_job(transactional_db, user):
    nodes = [register_node(name) for name in ("site-a", "site-b")]
    return create_job(user, nodes)


# --- the consumers -------------------------------------------------------------------------

@pytest.mark.django_db(transaction=True)
def test_the_owner_receives_the_jobs_status_events(client, user, live_job):
    headers = session_headers(client, user)

    async def scenario():
        communicator, connected, _ = await connect(f"/ws/jobs/{live_job.pk}/", headers)
        try:
            assert connected
            await sync_to_async(job_transition)(live_job, Job.Status.QUEUED, reason="go")
            event = await communicator.receive_json_from(timeout=2)
        finally:
            await communicator.disconnect()
        return event

    event = async_to_sync(scenario)()
    assert event["kind"] == "status" and event["job"] == live_job.pk
    assert event["status"] == "queued" and event["reason"] == "go"
    assert event["data"] == {"from": "draft", "to": "queued", "reason": "go"}


@pytest.mark.django_db(transaction=True)
def test_the_job_list_socket_gets_status_changes_of_all_ones_jobs(client, user, live_job):
    headers = session_headers(client, user)

    async def scenario():
        communicator, connected, _ = await connect("/ws/jobs/", headers)
        try:
            assert connected
            await sync_to_async(job_transition)(live_job, Job.Status.CANCELLED)
            return await communicator.receive_json_from(timeout=2)
        finally:
            await communicator.disconnect()

    event = async_to_sync(scenario)()
    assert (event["job"], event["status"]) == (live_job.pk, "cancelled")


@pytest.mark.django_db(transaction=True)
def test_another_user_and_anonymous_are_refused(client, other_user, live_job):
    other = session_headers(client, other_user)

    async def scenario():
        results = []
        for path, headers in [(f"/ws/jobs/{live_job.pk}/", other), (f"/ws/jobs/{live_job.pk}/", [ORIGIN]),
                              (f"/ws/jobs/{live_job.pk + 1000}/", other), ("/ws/jobs/", [ORIGIN])]:
            communicator, connected, code = await connect(path, headers)
            results.append((connected, code))
            await communicator.disconnect()
        return results

    assert async_to_sync(scenario)() == [(False, 4404), (False, 4404), (False, 4404), (False, 4401)]


@pytest.mark.django_db(transaction=True)
def test_a_foreign_origin_is_refused(client, user, live_job):
    headers = [(b"origin", b"http://evil.example"), session_headers(client, user)[1]]

    async def scenario():
        communicator, connected, _ = await connect(f"/ws/jobs/{live_job.pk}/", headers)
        await communicator.disconnect()
        return connected

    assert async_to_sync(scenario)() is False


# --- the embedded worker -----------------------------------------------------------------------

@pytest.mark.django_db(transaction=True)
def test_an_event_from_a_task_in_the_embedded_worker_reaches_the_socket_within_a_second(
        client, user, live_job, embedded_worker):
    """The watchdog task, run by the embedded worker thread, fails a running job that
    has no round in flight; the status event is on the owner's socket in under 1 s."""
    from jobs.tasks import watchdog

    headers = session_headers(client, user)

    async def scenario():
        communicator, connected, _ = await connect(f"/ws/jobs/{live_job.pk}/", headers)
        try:
            assert connected
            for status in (Job.Status.QUEUED, Job.Status.RUNNING):  # running, no round: the watchdog fails it
                await sync_to_async(job_transition)(live_job, status)
                assert (await communicator.receive_json_from(timeout=2))["status"] == status
            sent = time.monotonic()
            await sync_to_async(watchdog.delay)()
            event = await communicator.receive_json_from(timeout=5)
            return event, time.monotonic() - sent
        finally:
            await communicator.disconnect()

    event, seconds = async_to_sync(scenario)()
    assert (event["job"], event["status"]) == (live_job.pk, "failed")
    assert "watchdog" in event["reason"]
    assert seconds < 1.0, f"the event took {seconds:.2f} s"
    assert Job.objects.get(pk=live_job.pk).status == Job.Status.FAILED


# --- the channel layer --------------------------------------------------------------------------

def _latency_of_a_send_from_another_thread(layer, timeout: float) -> float | None:
    """Seconds until a receiver waiting in this loop gets a group_send made by a plain
    thread (as a Celery worker thread does, through async_to_sync); None if not within
    `timeout`."""

    async def scenario():
        channel = await layer.new_channel()
        await layer.group_add("g", channel)
        sent_at = {}

        def sender():
            time.sleep(0.1)  # the receiver is waiting by now
            sent_at["t"] = time.monotonic()
            async_to_sync(layer.group_send)("g", {"type": "x.y", "n": 1})

        receiving = asyncio.ensure_future(layer.receive(channel))
        await asyncio.sleep(0)  # the receiver waits in this loop
        thread = threading.Thread(target=sender, daemon=True)
        thread.start()
        done, _ = await asyncio.wait({receiving}, timeout=timeout)
        received_at = time.monotonic()
        await asyncio.to_thread(thread.join, 5)  # not a blocking join: the sender may need this loop
        if not done:
            receiving.cancel()
            return None
        assert receiving.result() == {"type": "x.y", "n": 1}
        return received_at - sent_at["t"]

    return asyncio.run(scenario())


def test_embedded_layer_delivers_a_send_from_another_thread_at_once():
    latency = _latency_of_a_send_from_another_thread(EmbeddedChannelLayer(), timeout=2.0)
    assert latency is not None and latency < 0.5


def test_plain_in_memory_layer_does_not_wake_the_receiver():
    """The reason for EmbeddedChannelLayer: with Channels' InMemoryChannelLayer the
    receiver's loop is not woken by a send from another thread's loop."""
    latency = _latency_of_a_send_from_another_thread(InMemoryChannelLayer(), timeout=0.6)
    # sent at 0.1 s; delivered only when the loop wakes for its own timeout at 0.6 s, if at all
    assert latency is None or latency > 0.45


# --- the sender of broadcasts ---------------------------------------------------------------------

class SlowLayer:
    """A channel layer whose every group_send takes 50 ms; `refuse`: groups whose send fails."""

    def __init__(self, refuse=()):
        self.sent, self.refuse, self.sending = [], set(refuse), threading.Event()

    async def group_send(self, group, message):
        self.sending.set()
        await asyncio.sleep(0.05)
        if group in self.refuse:
            raise ConnectionError("redis went away")
        self.sent.append((group, message["event"]["n"]))


def test_broadcasts_do_not_make_the_writer_wait_and_go_out_in_order(monkeypatch):
    from core import broadcast

    layer = SlowLayer()
    monkeypatch.setattr(broadcast, "get_channel_layer", lambda: layer)
    started = time.monotonic()
    for n in range(10):
        broadcast.broadcast_now(["g1", "g2"], {"n": n})
    queued_in = time.monotonic() - started
    assert broadcast.broadcast_flush(10)
    assert queued_in < 0.2  # sending the 20 messages takes 1 s
    assert layer.sent == [(group, n) for n in range(10) for group in ("g1", "g2")]


def test_a_failed_broadcast_does_not_stop_the_ones_after_it(monkeypatch):
    from core import broadcast

    layer = SlowLayer(refuse={"lost"})
    monkeypatch.setattr(broadcast, "get_channel_layer", lambda: layer)
    broadcast.broadcast_now(["lost", "g"], {"n": 1})
    broadcast.broadcast_now(["g"], {"n": 2})
    assert broadcast.broadcast_flush(10)
    assert layer.sent == [("g", 1), ("g", 2)]


def test_trainers_wake_ups_go_before_the_browsers_events_queued_with_them(monkeypatch):
    from core import broadcast

    layer = SlowLayer()
    monkeypatch.setattr(broadcast, "get_channel_layer", lambda: layer)
    broadcast.broadcast_now(["busy"], {"n": 0})
    assert layer.sending.wait(5)  # the sender is busy with this one...
    for n, kind in enumerate(["event.forward", "event.forward", "fl.wake", "event.forward"], start=1):
        broadcast.broadcast_now([kind], {"n": n}, message_type=kind)  # ...while these are queued
    assert broadcast.broadcast_flush(10)
    assert layer.sent == [("busy", 0), ("fl.wake", 3), ("event.forward", 1), ("event.forward", 2),
                          ("event.forward", 4)]
