"""ASGI entry point: Django for HTTP (the node-facing FL API through its own handler,
without the browser middleware, behind a body-size guard), Channels for websockets
(session auth, origin checked)."""
import os

from django.core.asgi import get_asgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "flportal.settings")
django_asgi = get_asgi_application()

from channels.auth import AuthMiddlewareStack  # noqa: E402
from channels.routing import ProtocolTypeRouter, URLRouter  # noqa: E402
from channels.security.websocket import AllowedHostsOriginValidator  # noqa: E402
from django.conf import settings  # noqa: E402

from core.body_limit import BodyLimit  # noqa: E402
from core.node_api import NodeApiHandler  # noqa: E402
from jobs.routing import websocket_urlpatterns  # noqa: E402

NODE_API = "/api/v1/fl/"
node_api = BodyLimit(NodeApiHandler(), prefix=NODE_API, limit=settings.FLPORTAL_MAX_UPDATE_BYTES)


async def http(scope, receive, send):
    app = node_api if scope["path"].startswith(NODE_API) else django_asgi
    return await app(scope, receive, send)


application = ProtocolTypeRouter({
    "http": http,
    "websocket": AllowedHostsOriginValidator(AuthMiddlewareStack(URLRouter(websocket_urlpatterns))),
})
