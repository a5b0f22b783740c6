"""Domain errors and the one place that turns them into HTTP answers."""
from django.http import JsonResponse
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


def server_error(request, *args, **kwargs):
    """500 handler: JSON under /api/ (nodes and automation parse it), Django's page elsewhere."""
    if request.path.startswith("/api/"):
        return json_error(500, "server_error", "internal error; the portal's log has the details")
    from django.views.defaults import server_error as html_server_error

    return html_server_error(request, *args, **kwargs)


def api_exception_handler(exc, context):
    """DRF's handler, plus domain errors; every error body has `error` and `message`."""
    if isinstance(exc, DomainError):
        return error_response(exc)
    response = exception_handler(exc, context)
    if response is not None and isinstance(response.data, dict) and "error" not in response.data:
        detail = response.data.get("detail")
        code = getattr(detail, "code", None) or "invalid"
        message = str(detail) if detail is not None else _flatten(response.data)
        response.data = {"error": code, "message": message, **({} if detail is not None else {"fields": response.data})}
    return response


def _flatten(data: dict) -> str:
    parts = []
    for field, errors in data.items():
        text = "; ".join(str(e) for e in errors) if isinstance(errors, list) else str(errors)
        parts.append(f"{field}: {text}")
    return " ".join(parts)
