"""Every write to a Node: registration, heartbeats, going offline."""
import hashlib
import hmac
from dataclasses import dataclass
from datetime import timedelta

from django.conf import settings
from django.db import transaction
from django.utils import timezone

from flportal.errors import ValidationFailed
from flportal.tokens import issue_token
from nodes import events
from nodes.models import Node


@dataclass(frozen=True)
class NodeCredentials:
    node: Node
    token: str  # node -> portal, shown once
    agent_key: str  # portal -> agent, derived, shown once


def agent_key_for(node: Node) -> str:
    """The key the portal presents to the node's agent: derived from SECRET_KEY and the
    node's current token id, so it is never stored and rotates with the token."""
    msg = f"agent:{node.pk}:{node.token_key_id}".encode()
    return hmac.new(settings.SECRET_KEY.encode(), msg, hashlib.sha256).hexdigest()


@transaction.atomic
def node_register(*, name: str, agent_url: str) -> NodeCredentials:
    """Register a site, or re-issue the credentials of an existing one (the old token
    and agent key stop working). Raises ValidationFailed on a bad name or URL."""
    if not name or not name.replace("-", "").replace("_", "").isalnum():
        raise ValidationFailed("name: use letters, digits, '-' and '_'", field="name")
    if not agent_url.startswith(("http://", "https://")):
        raise ValidationFailed("agent_url: must start with http:// or https://", field="agent_url")
    issued = issue_token("n")
    node, _ = Node.objects.update_or_create(
        name=name,
        defaults={"agent_url": agent_url.rstrip("/"), "token_key_id": issued.key_id, "token_hash": issued.secret_hash},
    )
    return NodeCredentials(node=node, token=issued.token, agent_key=agent_key_for(node))


def node_heartbeat(*, node: Node, version: str, datasets: list, resources: dict) -> Node:
    """Record a heartbeat; a node that was offline comes online (and says so)."""
    with transaction.atomic():
        node = Node.objects.select_for_update().get(pk=node.pk)
        was = node.status
        node.last_heartbeat_at = timezone.now()
        node.version, node.datasets, node.resources = version[:64], datasets, resources
        node.status = Node.Status.ONLINE if node.enabled else Node.Status.DISABLED
        node.save(update_fields=["last_heartbeat_at", "version", "datasets", "resources", "status"])
        if node.status != was:
            events.node_status_changed(node)
    return node


def node_set_enabled(*, node: Node, enabled: bool) -> Node:
    with transaction.atomic():
        node = Node.objects.select_for_update().get(pk=node.pk)
        node.enabled = enabled
        node.status = _derived_status(node)
        node.save(update_fields=["enabled", "status"])
        events.node_status_changed(node)
    return node


def nodes_mark_stale_offline() -> list[Node]:
    """Online nodes whose last heartbeat is older than the offline threshold go offline."""
    cutoff = timezone.now() - timedelta(seconds=settings.FLPORTAL_NODE_OFFLINE_AFTER_S)
    changed = []
    with transaction.atomic():
        stale = Node.objects.select_for_update().filter(status=Node.Status.ONLINE, last_heartbeat_at__lt=cutoff)
        for node in stale:
            node.status = Node.Status.OFFLINE
            node.save(update_fields=["status"])
            events.node_status_changed(node)
            changed.append(node)
    return changed


def _derived_status(node: Node) -> str:
    if not node.enabled:
        return Node.Status.DISABLED
    if node.last_heartbeat_at is None:
        return Node.Status.OFFLINE
    age = (timezone.now() - node.last_heartbeat_at).total_seconds()
    return Node.Status.ONLINE if age < settings.FLPORTAL_NODE_OFFLINE_AFTER_S else Node.Status.OFFLINE
