"""Every write to a Node: registration, heartbeats, going offline."""
import hashlib
import hmac
import re
from dataclasses import dataclass
from datetime import timedelta

from django.conf import settings
from django.db import transaction
from django.utils import timezone

from core.errors import ValidationFailed
from core.tokens import issue_token
from nodes import events
from nodes.models import Node

NODE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]{0,63}")
RESERVED_NAMES = {"global", "aggregate"}  # the global model's row in cross-site results; the aggregate metrics


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
    if (name or "").lower() in RESERVED_NAMES:
        raise ValidationFailed(f"name: {name!r} is reserved", field="name")
    if not NODE_NAME.fullmatch(name or ""):
        raise ValidationFailed("name: 1 to 64 ASCII letters, digits, '-' and '_', starting with a letter or digit",
                               field="name")
    if not agent_url.startswith(("http://", "https://")):
        raise ValidationFailed("agent_url: must start with http:// or https://", field="agent_url")
    issued = issue_token("n")
    node, _ = Node.objects.update_or_create(
        name=name,
        defaults={"agent_url": agent_url.rstrip("/"), "token_key_id": issued.key_id, "token_hash": issued.secret_hash},
    )
    return NodeCredentials(node=node, token=issued.token, agent_key=agent_key_for(node))


class InvalidReport(ValidationFailed):
    code = "invalid_update"


DATASET_COUNTS = ("n_examples", "n_features", "num_classes")


def clean_dataset_report(datasets) -> list[dict]:
    """What an agent says it offers: [{"name", "format", "n_examples", "n_features",
    "num_classes"}] (or {"name", "error"} for a file it could not read). Raises
    InvalidReport, so a malformed report never reaches job validation."""
    if not isinstance(datasets, list) or len(datasets) > 1000:
        raise InvalidReport("datasets: must be a list (1000 entries at most)")
    return [_clean_dataset(entry, i) for i, entry in enumerate(datasets)]


def _clean_dataset(entry, index: int) -> dict:
    if not isinstance(entry, dict) or not isinstance(entry.get("name"), str) or not entry["name"]:
        raise InvalidReport(f"datasets[{index}]: must be an object with a name")
    if "error" in entry:
        return {"name": entry["name"][:100], "error": str(entry["error"])[:500]}
    counts = {key: entry.get(key) for key in DATASET_COUNTS}
    if any(isinstance(v, bool) or not isinstance(v, int) or not 0 <= v < 2**31 for v in counts.values()):
        raise InvalidReport(f"datasets[{index}]: {', '.join(DATASET_COUNTS)} must be non-negative integers")
    return {"name": entry["name"][:100], "format": str(entry.get("format", ""))[:16], **counts}


def node_heartbeat(*, node: Node, version: str, datasets: list, resources: dict) -> Node:
    """Record a heartbeat; a node that was offline comes online (and says so). Raises
    InvalidReport for a malformed dataset report (nothing is recorded then)."""
    datasets = clean_dataset_report(datasets)
    status = Node.Status.ONLINE if node.enabled else Node.Status.DISABLED
    fields = {"last_heartbeat_at": timezone.now(), "version": version[:64], "datasets": datasets,
              "resources": resources, "status": status}
    # One UPDATE when the status stays what it was, as for almost every heartbeat (a
    # fleet of 1000 sites sends dozens a second); a second one, and the event, when it
    # changes. Concurrent heartbeats of one node may both see the change: two events.
    changed = not Node.objects.filter(pk=node.pk, status=status).update(**fields)
    if changed:
        Node.objects.filter(pk=node.pk).update(**fields)
    for name, value in fields.items():
        setattr(node, name, value)
    if changed:
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
