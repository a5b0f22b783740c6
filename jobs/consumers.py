"""Websocket consumers: authenticate, check permission, join groups, forward events.
Nothing else (events are stored and sent by jobs/events.py)."""
from channels.db import database_sync_to_async
from channels.generic.websocket import AsyncJsonWebsocketConsumer

from jobs.models import Job


class JobConsumer(AsyncJsonWebsocketConsumer):
    async def connect(self):
        user = self.scope.get("user")
        job_id = self.scope["url_route"]["kwargs"]["job_id"]
        if user is None or not user.is_authenticated or not await self._owns(user, job_id):
            await self.close(code=4404)
            return
        self.groups_joined = [f"job-{job_id}"]
        await self.channel_layer.group_add(self.groups_joined[0], self.channel_name)
        await self.accept()

    @database_sync_to_async
    def _owns(self, user, job_id) -> bool:
        return Job.objects.filter(pk=job_id, owner=user).exists()

    async def disconnect(self, code):
        for group in getattr(self, "groups_joined", []):
            await self.channel_layer.group_discard(group, self.channel_name)

    async def event_forward(self, message):
        await self.send_json(message["event"])


class UserJobsConsumer(AsyncJsonWebsocketConsumer):
    """Status changes of all of the user's jobs (the job list page)."""

    async def connect(self):
        user = self.scope.get("user")
        if user is None or not user.is_authenticated:
            await self.close(code=4401)
            return
        self.group = f"user-{user.pk}-jobs"
        await self.channel_layer.group_add(self.group, self.channel_name)
        await self.accept()

    async def disconnect(self, code):
        if hasattr(self, "group"):
            await self.channel_layer.group_discard(self.group, self.channel_name)

    async def event_forward(self, message):
        await self.send_json(message["event"])
