"""Authentication of node-facing requests: `Authorization: Node <token>`. A disabled
node is refused on every call (403 `node_disabled`), from the moment it is disabled:
its node is read from the database on every request. Only its trainers' task polls get
an answer, `end` (jobs/services/node_tasks.py), so that they stop."""
import functools

from asgiref.sync import sync_to_async

from core.errors import error_response, json_error
from nodes.exceptions import NodeDisabled
from nodes.selectors import node_for_token


def node_from_request(request):
    scheme, _, token = request.headers.get("Authorization", "").partition(" ")
    return node_for_token(token) if scheme == "Node" else None


def _refusal(node, disabled_ok: bool):
    """The answer for a request `node` may not make, or None."""
    if node is None:
        return json_error(401, "unauthenticated", "missing or invalid node token (Authorization: Node <token>)")
    if not node.enabled and not disabled_ok:
        return error_response(NodeDisabled(node.name))
    return None


def node_required(view=None, *, disabled_ok: bool = False):
    """For sync views: sets request.node, or answers 401 (no such node) or 403 (a
    disabled node, unless `disabled_ok`: the view answers it itself)."""
    if view is None:
        return functools.partial(node_required, disabled_ok=disabled_ok)

    @functools.wraps(view)
    def wrapper(request, *args, **kwargs):
        request.node = node_from_request(request)
        return _refusal(request.node, disabled_ok) or view(request, *args, **kwargs)

    return wrapper


def async_node_required(view=None, *, disabled_ok: bool = False):
    """`node_required` for async views."""
    if view is None:
        return functools.partial(async_node_required, disabled_ok=disabled_ok)

    @functools.wraps(view)
    async def wrapper(request, *args, **kwargs):
        request.node = await sync_to_async(node_from_request)(request)
        return _refusal(request.node, disabled_ok) or await view(request, *args, **kwargs)

    return wrapper
