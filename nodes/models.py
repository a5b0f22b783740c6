from django.db import models


class Node(models.Model):
    """A registered site. Its agent is called only at `agent_url`, set by an admin:
    no endpoint ever connects to an address a caller supplies."""

    class Status(models.TextChoices):
        ONLINE = "online"
        OFFLINE = "offline"
        DISABLED = "disabled"

    name = models.SlugField(max_length=64, unique=True)
    agent_url = models.URLField(max_length=300)
    token_key_id = models.CharField(max_length=32, unique=True)
    token_hash = models.CharField(max_length=64)
    enabled = models.BooleanField(default=True)
    status = models.CharField(max_length=16, choices=Status.choices, default=Status.OFFLINE)
    last_heartbeat_at = models.DateTimeField(null=True, blank=True)
    version = models.CharField(max_length=64, blank=True)
    datasets = models.JSONField(default=list, blank=True)
    resources = models.JSONField(default=dict, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["name"]

    def __str__(self):
        return self.name

    def dataset(self, name: str) -> dict | None:
        return next((d for d in self.datasets if d.get("name") == name and "error" not in d), None)
