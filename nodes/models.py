from datetime import timedelta

from django.conf import settings
from django.db import models
from django.utils import timezone


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
    # The jobs its agent runs a trainer for, as of its last heartbeat (None: an agent that
    # does not report them). A job it should run and does not is re-driven (jobs' watchdog).
    running_jobs = models.JSONField(null=True, blank=True)
    # Who may use it: the members of these groups (staff: everyone). A site agrees to
    # serve a project, not the world: with no group, only staff see and use it.
    user_groups = models.ManyToManyField("auth.Group", blank=True, related_name="nodes",
                                         help_text="members of these groups see this node and may run jobs on it")
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["name"]

    def __str__(self):
        return self.name

    def dataset(self, name: str) -> dict | None:
        return next((d for d in self.datasets if d.get("name") == name and "error" not in d), None)


def enrollment_code_expiry():
    return timezone.now() + timedelta(seconds=settings.FLPORTAL_ENROLLMENT_CODE_TTL_S)


class EnrollmentCode(models.Model):
    """A one-time code a site's agent exchanges for its node's credentials
    (nodes.services.node_enroll). Only the code's SHA-256 is stored: it is 192-bit
    random, shown once when issued. Issuing a new code deletes the node's unused ones."""

    node = models.ForeignKey(Node, on_delete=models.CASCADE, related_name="enrollment_codes")
    code_hash = models.CharField(max_length=64, unique=True)
    created_by = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL,
                                   related_name="+")
    created_at = models.DateTimeField(auto_now_add=True)
    expires_at = models.DateTimeField(default=enrollment_code_expiry)
    used_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-created_at"]

    def __str__(self):
        return f"enrollment code of {self.node} (expires {self.expires_at:%Y-%m-%d %H:%M})"


class NodeEvent(models.Model):
    """A node's history: each change of its status (online, offline, disabled), why, and
    who made it when a person did."""

    node = models.ForeignKey(Node, on_delete=models.CASCADE, related_name="events")
    status = models.CharField(max_length=16, choices=Node.Status.choices)
    message = models.CharField(max_length=300)
    actor = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL,
                              related_name="+")
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["-id"]
        indexes = [models.Index(fields=["node", "-id"])]
