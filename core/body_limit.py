"""Refuse oversized request bodies before Django spools them. Django's ASGI handler
reads a whole body before calling the view, so the FL API's upload limit must be
enforced here: at once from Content-Length, or while streaming a chunked body."""
import json


class BodyLimit:
    def __init__(self, app, *, prefix: str, limit: int):
        self.app, self.prefix, self.limit = app, prefix, limit

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or not scope["path"].startswith(self.prefix):
            return await self.app(scope, receive, send)
        length = dict(scope.get("headers") or []).get(b"content-length")
        if length is not None and length.isdigit() and int(length) > self.limit:
            return await self._refuse(send, int(length))
        state = {"seen": 0, "over": False, "started": False}

        async def limited_receive():
            message = await receive()
            if message["type"] == "http.request":
                state["seen"] += len(message.get("body", b""))
                if state["seen"] > self.limit:
                    state["over"] = True
                    return {"type": "http.disconnect"}
            return message

        async def tracking_send(message):
            if message["type"] == "http.response.start":
                state["started"] = True
            await send(message)

        await self.app(scope, limited_receive, tracking_send)
        if state["over"] and not state["started"]:
            await self._refuse(send, state["seen"])

    async def _refuse(self, send, size: int):
        message = f"request body of {size}+ bytes exceeds the limit of {self.limit} bytes"
        body = json.dumps({"error": "too_large", "message": message}).encode()
        await send({"type": "http.response.start", "status": 413,
                    "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                                (b"connection", b"close")]})
        await send({"type": "http.response.body", "body": body})
