"""Domain errors and the one place that turns them into HTTP answers."""
from django.conf import settings
from django.core.exceptions import DisallowedHost, RequestDataTooBig
from django.http import JsonResponse
from django.urls import Resolver404
from django.views import defaults
from rest_framework.views import exception_handler


class DomainError(Exception):
    """Base of every error a service raises on purpose. `code` is machine-readable,
    the message is for a person; `status` is the HTTP status an API answers with."""

    code = "invalid"
    status = 400

    def __init__(self, message: str, *, field: str | None = None):
        super().__init__(message)
        self.message = message
        self.field = field

    def as_dict(self) -> dict:
        body = {"error": self.code, "message": self.message}
        if self.field:
            body["field"] = self.field
        return body


class ValidationFailed(DomainError):
    code = "invalid"


class NotFound(DomainError):
    code = "not_found"
    status = 404


class Forbidden(DomainError):
    code = "forbidden"
    status = 403


class Conflict(DomainError):
    code = "conflict"
    status = 409


class InvalidNodeRequest(ValidationFailed):
    """A node's request body or header the FL API cannot take (docs/PROTOCOL.md calls
    every such refusal `invalid_update`, whichever endpoint it came to)."""

    code = "invalid_update"


class TooLarge(DomainError):
    code = "too_large"
    status = 413


def error_response(exc: DomainError) -> JsonResponse:
    return JsonResponse(exc.as_dict(), status=exc.status)


def json_error(status: int, code: str, message: str) -> JsonResponse:
    return JsonResponse({"error": code, "message": message}, status=status)


def _under_api(request) -> bool:
    return request.path.startswith("/api/")


def bad_request(request, exception=None):
    """400 handler (a SuspiciousOperation: a Host not in ALLOWED_HOSTS, a malformed body,
    a body over DATA_UPLOAD_MAX_MEMORY_SIZE, which is a 413 `too_large` under /api/):
    JSON under /api/, Django's page elsewhere."""
    if _under_api(request):
        if isinstance(exception, RequestDataTooBig):
            return json_error(413, "too_large",
                              f"request body larger than {settings.DATA_UPLOAD_MAX_MEMORY_SIZE} bytes")
        if isinstance(exception, DisallowedHost):
            return json_error(400, "bad_request", "the request's Host header names no host this portal serves")
        return json_error(400, "bad_request", "malformed request")
    return defaults.bad_request(request, exception)


def permission_denied(request, exception=None):
    """403 handler: JSON under /api/, Django's page elsewhere."""
    if _under_api(request):
        return json_error(403, "forbidden", str(exception or "") or "permission denied")
    return defaults.permission_denied(request, exception)


def page_not_found(request, exception=None):
    """404 handler (no URL matches, or a view raised Http404): JSON under /api/, Django's
    page elsewhere. The resolver's own message (the patterns it tried) is not shown."""
    if _under_api(request):
        message = "" if exception is None or isinstance(exception, Resolver404) else str(exception)
        return json_error(404, "not_found", message or f"no such endpoint: {request.path[:200]}")
    return defaults.page_not_found(request, exception)


def server_error(request, *args, **kwargs):
    """500 handler: JSON under /api/ (nodes and automation parse it), Django's page elsewhere."""
    if _under_api(request):
        return json_error(500, "server_error", "internal error; the portal's log has the details")
    return defaults.server_error(request, *args, **kwargs)


def api_exception_handler(exc, context):
    """DRF's handler, plus domain errors; every error body has `error` and `message`."""
    if isinstance(exc, DomainError):
        return error_response(exc)
    response = exception_handler(exc, context)
    if response is not None and isinstance(response.data, dict) and "error" not in response.data:
        detail = response.data.get("detail")
        code = getattr(detail, "code", None) or "invalid"
        message = str(detail) if detail is not None else _flatten(response.data)
        fields = {} if detail is not None else {"field": str(next(iter(response.data), "")), "fields": response.data}
        response.data = {"error": code, "message": message, **fields}
    return response


def _flatten(data: dict) -> str:
    parts = []
    for field, errors in data.items():
        text = "; ".join(str(e) for e in errors) if isinstance(errors, list) else str(errors)
        parts.append(f"{field}: {text}")
    return " ".join(parts)
