"""Every write to a Node: registration, enrollment, heartbeats, going offline."""
import hashlib
import hmac
import re
import secrets
import shlex
from dataclasses import dataclass
from datetime import timedelta

from django.conf import settings
from django.contrib.auth.models import Group
from django.db import IntegrityError, transaction
from django.utils import timezone
from django.views.decorators.debug import sensitive_variables

from core.errors import ValidationFailed
from core.tokens import hash_secret, issue_token
from nodes import events
from nodes.exceptions import EnrollmentExpired, EnrollmentInvalid, EnrollmentUsed, InvalidReport, NodeDisabled
from nodes.models import EnrollmentCode, Node, NodeEvent

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


def clean_node_fields(*, name: str, agent_url: str) -> str:
    """Checks a node's name and agent URL; returns the URL as stored (no trailing
    slash). Raises ValidationFailed naming the field."""
    if (name or "").lower() in RESERVED_NAMES:
        raise ValidationFailed(f"name: {name!r} is reserved", field="name")
    if not NODE_NAME.fullmatch(name or ""):
        raise ValidationFailed("name: 1 to 64 ASCII letters, digits, '-' and '_', starting with a letter or digit",
                               field="name")
    if not (agent_url or "").startswith(("http://", "https://")) or len(agent_url) > 300:
        raise ValidationFailed("agent_url: must start with http:// or https:// (300 characters at most)",
                               field="agent_url")
    return agent_url.rstrip("/")


@transaction.atomic
def node_register(*, name: str, agent_url: str) -> NodeCredentials:
    """Register a site, or re-issue the credentials of an existing one (the old token
    and agent key stop working). Raises ValidationFailed on a bad name or URL."""
    agent_url = clean_node_fields(name=name, agent_url=agent_url)
    issued = issue_token("n")
    node, _ = Node.objects.update_or_create(
        name=name,
        defaults={"agent_url": agent_url, "token_key_id": issued.key_id, "token_hash": issued.secret_hash},
    )
    return NodeCredentials(node=node, token=issued.token, agent_key=agent_key_for(node))


# --- enrollment: a one-time code, exchanged by the site's agent for the credentials -----------

UNUSABLE_TOKEN_HASH = "!"  # no SHA-256 hex digest equals it: a token of a node not enrolled yet never authenticates






@transaction.atomic
def node_create(*, name: str, agent_url: str, created_by, groups: list[str] = ()) -> tuple[Node, str]:
    """Create a node that has no usable credentials yet, usable by the members of `groups`,
    and its first enrollment code (shown once). Raises ValidationFailed on a bad name or
    URL, or a name taken."""
    agent_url = clean_node_fields(name=name, agent_url=agent_url)
    taken = ValidationFailed(f"name: a node named {name!r} already exists", field="name")
    if Node.objects.filter(name=name).exists():
        raise taken
    try:
        with transaction.atomic():  # a concurrent create of the same name: the unique index decides
            node = Node.objects.create(name=name, agent_url=agent_url, token_key_id=f"pending-{secrets.token_hex(8)}",
                                       token_hash=UNUSABLE_TOKEN_HASH)
    except IntegrityError as exc:
        raise taken from exc
    node_grant(node=node, groups=list(groups))
    return node, enrollment_code_issue(node=node, created_by=created_by)


@transaction.atomic
def enrollment_code_issue(*, node: Node, created_by) -> str:
    """A new one-time code for `node` (192-bit random; only its hash is stored), valid
    for FLPORTAL_ENROLLMENT_CODE_TTL_S. The node's earlier unused codes are deleted, so
    they are refused as wrong codes; its current credentials keep working until the new
    code is exchanged."""
    EnrollmentCode.objects.filter(node=node, used_at__isnull=True).delete()
    code = secrets.token_urlsafe(24)
    while code.startswith("-"):  # it would read as an option on the agent's command line
        code = secrets.token_urlsafe(24)
    EnrollmentCode.objects.create(node=node, code_hash=hash_secret(code), created_by=created_by)
    return code


def enrollment_command(*, portal_url: str, code: str) -> str:
    """The command line that enrolls a site's agent with `code` (shown by the admin and
    the REST API next to the code)."""
    return f"flportal-agent enroll --portal {shlex.quote(portal_url.rstrip('/'))} --code {shlex.quote(code)}"


@transaction.atomic
@sensitive_variables("code", "issued")
def node_enroll(*, code: str) -> NodeCredentials:
    """Exchange an enrollment code, once, for the node's long-lived credentials: a new
    token (the node's earlier one stops working) and the agent key derived from it.
    Refused, with nothing changed: EnrollmentInvalid (no such code, or one revoked by a
    newer one), EnrollmentUsed, EnrollmentExpired, NodeDisabled. The code is claimed by
    a conditional UPDATE, so of two concurrent exchanges only one wins."""
    if not isinstance(code, str) or not 0 < len(code) <= 200:
        raise EnrollmentInvalid("code: must be the enrollment code the portal issued (a string)", field="code")
    row = EnrollmentCode.objects.select_related("node").filter(code_hash=hash_secret(code.strip())).first()
    if row is None:
        raise EnrollmentInvalid("no such enrollment code: wrong, or replaced by a newer one; ask the portal's "
                                "administrators for a new code", field="code")
    now = timezone.now()
    _check_enrollable(row, now=now)
    if not EnrollmentCode.objects.filter(pk=row.pk, used_at__isnull=True).update(used_at=now):
        raise EnrollmentUsed("this enrollment code has just been used by another request", field="code")
    issued = issue_token("n")
    node = row.node
    Node.objects.filter(pk=node.pk).update(token_key_id=issued.key_id, token_hash=issued.secret_hash)
    node.token_key_id, node.token_hash = issued.key_id, issued.secret_hash
    return NodeCredentials(node=node, token=issued.token, agent_key=agent_key_for(node))


def _check_enrollable(row: EnrollmentCode, *, now) -> None:
    if row.used_at is not None:
        raise EnrollmentUsed(f"this enrollment code was used at {row.used_at:%Y-%m-%d %H:%M:%S} UTC; "
                             "ask the portal's administrators for a new one", field="code")
    if row.expires_at <= now:
        raise EnrollmentExpired(f"this enrollment code expired at {row.expires_at:%Y-%m-%d %H:%M:%S} UTC; "
                                "ask the portal's administrators for a new one", field="code")
    if not row.node.enabled:
        raise NodeDisabled(row.node.name)



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


def node_heartbeat(*, node: Node, version: str, datasets: list, resources: dict,
                   running_jobs: list | None = None) -> Node:
    """Record a heartbeat; a node that was offline comes online (and says so).
    `running_jobs`: the job ids its agent runs a trainer for (None: not reported). Raises
    InvalidReport for a malformed dataset or runs report (nothing is recorded then)."""
    datasets = clean_dataset_report(datasets)
    if running_jobs is not None and (not isinstance(running_jobs, list) or len(running_jobs) > 1000 or not all(
            isinstance(j, int) and not isinstance(j, bool) and 0 < j < 2**63 for j in running_jobs)):
        raise InvalidReport("runs: must be a list of job ids (1000 at most)")
    status = Node.Status.ONLINE if node.enabled else Node.Status.DISABLED
    fields = {"last_heartbeat_at": timezone.now(), "version": version[:64], "datasets": datasets,
              "resources": resources, "status": status}
    if running_jobs is not None:
        fields["running_jobs"] = sorted(set(running_jobs))
    # One UPDATE when the status stays what it was, as for almost every heartbeat (a
    # fleet of 1000 sites sends dozens a second); a second one, and the event, when it
    # changes. Concurrent heartbeats of one node may both see the change: two events.
    changed = not Node.objects.filter(pk=node.pk, status=status).update(**fields)
    if changed:
        Node.objects.filter(pk=node.pk).update(**fields)
    for name, value in fields.items():
        setattr(node, name, value)
    if changed:
        _status_changed(node, "its agent was heard from" if node.enabled else "heard from, but disabled")
    return node


def node_grant(*, node: Node, groups: list[str]) -> None:
    """Let the members of the named groups use `node` (the groups are made if new)."""
    node.user_groups.add(*(Group.objects.get_or_create(name=name)[0] for name in groups))


def node_set_enabled(*, node: Node, enabled: bool, actor=None) -> Node:
    """Enable or disable a node (a disabled one is refused on every call, nodes/auth.py);
    a stored event says who did."""
    with transaction.atomic():
        node = Node.objects.select_for_update().get(pk=node.pk)
        node.enabled = enabled
        node.status = _derived_status(node)
        node.save(update_fields=["enabled", "status"])
        _status_changed(node, f"{'enabled' if enabled else 'disabled'}" + (f" by {actor}" if actor else ""), actor)
    return node


def _status_changed(node: Node, why: str, actor=None) -> None:
    """Store the node's new status in its history and broadcast it after commit."""
    NodeEvent.objects.create(node=node, status=node.status, message=why[:300], actor=actor)
    events.node_status_changed(node)


def nodes_mark_stale_offline(*, listening_since=None) -> list[Node]:
    """Online nodes whose last heartbeat is older than the offline threshold go offline;
    none while the portal has been listening for less than that (`listening_since`: it
    was down until then, and heartbeats could not land)."""
    cutoff = timezone.now() - timedelta(seconds=settings.FLPORTAL_NODE_OFFLINE_AFTER_S)
    if listening_since is not None and listening_since > cutoff:
        return []
    changed = []
    with transaction.atomic():
        stale = Node.objects.select_for_update().filter(status=Node.Status.ONLINE, last_heartbeat_at__lt=cutoff)
        for node in stale:
            node.status = Node.Status.OFFLINE
            node.save(update_fields=["status"])
            _status_changed(node, f"silent for more than {settings.FLPORTAL_NODE_OFFLINE_AFTER_S:g} s")
            changed.append(node)
    return changed


def _derived_status(node: Node) -> str:
    if not node.enabled:
        return Node.Status.DISABLED
    if node.last_heartbeat_at is None:
        return Node.Status.OFFLINE
    age = (timezone.now() - node.last_heartbeat_at).total_seconds()
    return Node.Status.ONLINE if age < settings.FLPORTAL_NODE_OFFLINE_AFTER_S else Node.Status.OFFLINE
