"""The Django handler for the node-facing FL API (`/api/v1/fl/`), without the browser's
middleware.

Sessions, authentication by cookie, CSRF, messages and frame options mean nothing to a
node, which authenticates every request with its token (nodes/auth.py) and gets JSON or
safetensors back. Under ASGI each of Django's synchronous middlewares also costs thread
hand-offs per request (measured with yappi on bench/round_overhead.py: 17 sync_to_async
calls per FL request, most of them middleware), on the path of every task poll and
upload. Errors are still answered by the URLconf's handlers (JSON under /api/).
"""
from django.core.handlers.asgi import ASGIHandler
from django.core.handlers.exception import convert_exception_to_response


class NodeApiHandler(ASGIHandler):
    def load_middleware(self, is_async=False):
        """BaseHandler.load_middleware with an empty middleware list."""
        self._view_middleware, self._template_response_middleware, self._exception_middleware = [], [], []
        self._middleware_chain = convert_exception_to_response(
            self._get_response_async if is_async else self._get_response)
