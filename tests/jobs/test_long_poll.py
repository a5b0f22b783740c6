"""The long-poll listener (jobs/long_poll.py) against a scripted channel layer: no
database, no Redis; the failures a real layer can have, on purpose."""
import asyncio

from jobs.long_poll import Listener, job_group


class FlakyLayer:
    """An in-memory layer: `fail_group_add` and `fail_receive` raise that many times."""

    def __init__(self, fail_group_add=0, fail_receive=0):
        self.fail_group_add, self.fail_receive = fail_group_add, fail_receive
        self.groups: dict[str, set[str]] = {}
        self.queues: dict[str, asyncio.Queue] = {}
        self.channels = 0

    async def new_channel(self):
        self.channels += 1
        name = f"ch{self.channels}"
        self.queues[name] = asyncio.Queue()
        return name

    async def group_add(self, group, channel):
        await asyncio.sleep(0)
        if self.fail_group_add:
            self.fail_group_add -= 1
            raise ConnectionError("redis went away")
        self.groups.setdefault(group, set()).add(channel)

    async def group_discard(self, group, channel):
        self.groups.get(group, set()).discard(channel)

    async def receive(self, channel):
        if self.fail_receive:
            self.fail_receive -= 1
            raise ConnectionError("redis went away")
        return await self.queues[channel].get()

    def publish(self, job_id, event):
        for channel in self.groups.get(job_group(job_id), ()):
            self.queues[channel].put_nowait({"type": "fl.wake", "event": {"job": job_id, **event}})


async def next_event(listener, job_id, layer, event, timeout=3.0):
    async with listener.inbox(job_id) as inbox:
        layer.publish(job_id, event)
        return await asyncio.wait_for(inbox.get(), timeout)


def test_a_join_that_failed_is_made_again_by_the_next_poll():
    async def scenario():
        layer = FlakyLayer(fail_group_add=1)
        listener = Listener(layer)
        try:
            async with listener.inbox(7):
                raise AssertionError("the first join should have failed")
        except ConnectionError:
            pass
        return await next_event(listener, 7, layer, {"n": 1})

    assert asyncio.run(scenario()) == {"job": 7, "n": 1}


def test_a_listener_whose_channel_failed_starts_over_in_the_same_groups():
    async def scenario():
        layer = FlakyLayer()
        listener = Listener(layer)
        assert await next_event(listener, 3, layer, {"n": 1}) == {"job": 3, "n": 1}
        layer.fail_receive = 1
        async with listener.inbox(3) as inbox:
            layer.queues["ch1"].put_nowait({"type": "x", "event": {}})  # wakes the reader, which then fails
            await asyncio.sleep(1.5)  # it starts over a second later, on a new channel
            layer.publish(3, {"n": 2})
            return await asyncio.wait_for(inbox.get(), 3), layer.channels

    event, channels = asyncio.run(scenario())
    assert event == {"job": 3, "n": 2} and channels == 2


def test_a_wake_up_reaches_only_the_inboxes_of_its_job_and_names_its_nodes_in_a_set():
    async def scenario():
        layer = FlakyLayer()
        listener = Listener(layer)
        async with listener.inbox(1) as one, listener.inbox(2) as two:
            layer.publish(1, {"task": {"round": 5}, "nodes": [4, 9]})
            event = await asyncio.wait_for(one.get(), 3)
            await asyncio.sleep(0.05)
            return event, two.empty()

    event, other_empty = asyncio.run(scenario())
    assert event["nodes"] == frozenset({4, 9}) and other_empty
