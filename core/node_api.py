"""The Django handler for the node-facing FL API (`/api/v1/fl/`), without the browser's
middleware.

Sessions, authentication by cookie, CSRF, messages and frame options mean nothing to a
node, which authenticates every request with its token (nodes/auth.py) and gets JSON or
safetensors back. Under ASGI each of Django's synchronous middlewares also costs thread
hand-offs per request (measured with yappi on bench/round_overhead.py: 17 sync_to_async
calls per FL request, most of them middleware), on the path of every task poll and
upload. Errors are still answered by the URLconf's handlers (JSON under /api/). The
handler is asynchronous only: uvicorn runs it.

Also here: what every node-facing view of the apps shares (a JSON body, domain errors
as JSON answers, a JSON 405 for a method it does not take).
"""
import functools

from asgiref.sync import iscoroutinefunction
from django.core.handlers.asgi import ASGIHandler
from django.core.handlers.exception import convert_exception_to_response

from core.errors import DomainError, InvalidNodeRequest, TooLarge, error_response, json_error
from core.parsing import parse_json


class NodeApiHandler(ASGIHandler):
    def load_middleware(self, is_async=False):
        """BaseHandler.load_middleware with, for all middleware, what the node API still
        needs of it: the Host header checked against ALLOWED_HOSTS (CommonMiddleware's
        check; a 400 otherwise) and `nosniff` (SecurityMiddleware's). Errors are answered
        by the URLconf's handlers (JSON under /api/, core/errors.py): an unknown path's 404
        inside, so it gets `nosniff` too; a Host's 400 outside."""
        self._view_middleware, self._template_response_middleware, self._exception_middleware = [], [], []
        get_response = convert_exception_to_response(self._get_response_async)

        async def checked(request):
            request.get_host()  # raises DisallowedHost, answered 400 (JSON)
            response = await get_response(request)
            response.headers.setdefault("X-Content-Type-Options", "nosniff")
            return response

        self._middleware_chain = convert_exception_to_response(checked)


def require_methods(*methods: str):
    """Django's `require_http_methods` for a sync or async view, with the 405 a JSON error
    (`method_not_allowed`, docs/PROTOCOL.md) and its `Allow` header."""

    def refusal(request):
        if request.method in methods:
            return None
        response = json_error(405, "method_not_allowed",
                              f"method {request.method[:20]} not allowed here; allowed: {', '.join(methods)}")
        response["Allow"] = ", ".join(methods)
        return response

    def decorator(view):
        if iscoroutinefunction(view):
            @functools.wraps(view)
            async def async_wrapper(request, *args, **kwargs):
                return refusal(request) or await view(request, *args, **kwargs)

            return async_wrapper

        @functools.wraps(view)
        def wrapper(request, *args, **kwargs):
            return refusal(request) or view(request, *args, **kwargs)

        return wrapper

    return decorator


def domain_errors(view):
    """A synchronous view whose DomainErrors are answered as JSON errors."""

    @functools.wraps(view)
    def wrapper(request, *args, **kwargs):
        try:
            return view(request, *args, **kwargs)
        except DomainError as exc:
            return error_response(exc)

    return wrapper


def json_body(request, limit: int = 1 << 20) -> dict:
    """The request's JSON object body; raises TooLarge past `limit` bytes and
    InvalidNodeRequest for anything but a JSON object."""
    if int(request.headers.get("Content-Length") or 0) > limit:
        raise TooLarge(f"body larger than {limit} bytes")
    try:
        body = parse_json(request.body or b"{}")
    except (ValueError, UnicodeDecodeError) as exc:
        raise InvalidNodeRequest(f"body is not JSON: {exc}") from exc
    if not isinstance(body, dict):
        raise InvalidNodeRequest("body must be a JSON object")
    return body
