from core.errors import NotFound
from core.tokens import secret_matches, split_token
from nodes.models import EnrollmentCode, Node


def node_for_token(token: str) -> Node | None:
    """The node a `<key_id>.<secret>` token belongs to, or None."""
    parts = split_token(token)
    if parts is None:
        return None
    node = next(iter(Node.objects.filter(token_key_id=parts[0]).order_by()[:1]), None)  # a unique key: no ORDER BY
    if node is None or not secret_matches(parts[1], node.token_hash):
        return None
    return node


def nodes_usable_by(user):
    """The nodes `user` may see and run jobs on: every node for staff, else those one of
    the user's groups may use (the node's access list)."""
    if user.is_staff:
        return Node.objects.all()
    return Node.objects.filter(pk__in=Node.user_groups.through.objects.filter(
        group__in=user.groups.all()).values("node_id"))


def node_get(*, name: str) -> Node:
    """The node named `name`; raises NotFound."""
    node = Node.objects.filter(name=name).first()
    if node is None:
        raise NotFound(f"no node named {name[:64]!r}")
    return node


def enrollment_code_pending(*, node: Node) -> EnrollmentCode | None:
    """The node's unused enrollment code (there is at most one), or None."""
    return node.enrollment_codes.filter(used_at__isnull=True).order_by("-created_at").first()
