"""Authentication of node-facing requests: `Authorization: Node <token>`."""
import functools

from asgiref.sync import sync_to_async

from core.errors import json_error
from nodes.selectors import node_for_token


def node_from_request(request):
    scheme, _, token = request.headers.get("Authorization", "").partition(" ")
    return node_for_token(token) if scheme == "Node" else None


def _unauthenticated():
    return json_error(401, "unauthenticated", "missing or invalid node token (Authorization: Node <token>)")


def node_required(view):
    """For sync views: sets request.node or answers 401."""

    @functools.wraps(view)
    def wrapper(request, *args, **kwargs):
        request.node = node_from_request(request)
        if request.node is None:
            return _unauthenticated()
        return view(request, *args, **kwargs)

    return wrapper


def async_node_required(view):
    @functools.wraps(view)
    async def wrapper(request, *args, **kwargs):
        request.node = await sync_to_async(node_from_request)(request)
        if request.node is None:
            return _unauthenticated()
        return await view(request, *args, **kwargs)

    return wrapper
