"""Every error under /api/ is JSON `{"error", "message"}` (docs/PROTOCOL.md), whoever
answers it: the URL router (404), the FL API's method check (405), Django's handlers
for a bad request (400, 413) or a refusal (403); pages outside /api/ keep Django's HTML.
Ids past what the database holds are a 404, not a 500."""
import json

import pytest
from asgiref.sync import async_to_sync
from channels.testing import HttpCommunicator
from django.core.exceptions import DisallowedHost, PermissionDenied, RequestDataTooBig
from django.http import Http404
from django.test import Client, RequestFactory
from django.urls import Resolver404, reverse

from core import errors
from tests.conftest import NODE_NAMES, node_auth

TOO_BIG = "99999999999999999999"  # > 2^63: an OverflowError once it reaches the database
LARGEST = "999999999999999999"  # 18 digits: still an id (< 2^63), just not one that exists


def assert_json_error(response, status, code):
    assert response.status_code == status, response.content
    assert response["Content-Type"] == "application/json"
    body = json.loads(response.content)
    assert body["error"] == code and isinstance(body["message"], str) and body["message"]
    return body


def assert_html(response, status):
    assert response.status_code == status
    assert response["Content-Type"].startswith("text/html")


def asgi(method: str, path: str, *, headers=(), body: bytes = b"", host: bytes = b"localhost"):
    """One request through the real ASGI app (flportal.asgi.application: the FL API
    through its own handler); (status, headers by lower-case name, body)."""
    from flportal.asgi import application

    async def run():
        communicator = HttpCommunicator(application, method, path, body=body, headers=[(b"host", host), *headers])
        try:
            return await communicator.get_response(timeout=20)
        finally:
            await communicator.wait()

    response = async_to_sync(run)()
    return response["status"], {k.lower(): v for k, v in response["headers"]}, response["body"]


def assert_asgi_json_error(answer, status, code):
    got_status, headers, body = answer
    assert got_status == status, body
    assert headers[b"content-type"] == b"application/json"
    body = json.loads(body)
    assert body["error"] == code and isinstance(body["message"], str) and body["message"]
    return body


# --- 404: no URL matches --------------------------------------------------------------------

@pytest.mark.django_db
@pytest.mark.parametrize("path", ["/api/v1/nope/", "/api/v1/fl/nope", "/api/nope", "/api/v1/jobs/1/nope/",
                                  "/api/v1/fl/jobs/abc/task", "/api/v1/fl/jobs/-1/task"])
def test_an_unknown_path_under_the_api_is_a_json_404(api_client, path):
    body = assert_json_error(api_client.get(path), 404, "not_found")
    assert "tried" not in body["message"]  # the resolver's patterns are not shown


@pytest.mark.django_db
def test_an_unknown_page_outside_the_api_keeps_djangos_html_404(client):
    assert_html(client.get("/nope/"), 404)


@pytest.mark.parametrize("path", ["/api/v1/fl/nope", "/api/v1/fl/", "/api/v1/fl/jobs/1/task/extra"])
def test_an_unknown_fl_path_through_the_asgi_app_is_a_json_404(path):
    answer = asgi("GET", path)
    assert_asgi_json_error(answer, 404, "not_found")
    assert answer[1][b"x-content-type-options"] == b"nosniff"


# --- 405: a method the FL API does not take --------------------------------------------------

FL_WRONG_METHODS = [
    ("GET", "/api/v1/fl/rounds/1/update", "POST"),
    ("GET", "/api/v1/fl/rounds/1/evaluation", "POST"),
    ("GET", "/api/v1/fl/rounds/1/cross-site", "POST"),
    ("GET", "/api/v1/fl/jobs/1/logs", "POST"),
    ("GET", "/api/v1/fl/heartbeat", "POST"),
    ("POST", "/api/v1/fl/jobs/1/task", "GET"),
    ("DELETE", "/api/v1/fl/jobs/1/models/1", "GET"),
    ("PUT", "/api/v1/fl/rounds/1/models/site-a", "GET"),
]


@pytest.mark.django_db
@pytest.mark.parametrize(("method", "path", "allowed"), FL_WRONG_METHODS)
def test_a_wrong_method_on_the_fl_api_is_a_json_405(client, nodes3, method, path, allowed):
    response = client.generic(method, path, headers={"Authorization": node_auth(nodes3[0])})
    body = assert_json_error(response, 405, "method_not_allowed")
    assert response["Allow"] == allowed and allowed in body["message"]


@pytest.mark.parametrize(("method", "path", "allowed"), FL_WRONG_METHODS)
def test_a_wrong_method_on_the_fl_api_through_the_asgi_app_is_a_json_405(method, path, allowed):
    """Refused before authentication, by the node API's own handler."""
    answer = asgi(method, path)
    assert_asgi_json_error(answer, 405, "method_not_allowed")
    assert answer[1][b"allow"] == allowed.encode()


@pytest.mark.django_db(transaction=True)
def test_the_fl_api_still_answers_the_methods_it_takes_through_the_asgi_app(nodes3):
    body = json.dumps({"version": "x", "datasets": [], "resources": {}}).encode()
    status, _, answer = asgi("POST", "/api/v1/fl/heartbeat", body=body, headers=[
        (b"authorization", node_auth(nodes3[0]).encode()), (b"content-type", b"application/json"),
        (b"content-length", str(len(body)).encode())])
    assert status == 200 and json.loads(answer)["node"] == NODE_NAMES[0]
    status, _, answer = asgi("GET", "/api/v1/fl/jobs/1/task", headers=[(b"authorization", b"Node wrong")])
    assert_asgi_json_error((status, {b"content-type": b"application/json"}, answer), 401, "unauthenticated")


@pytest.mark.django_db
def test_a_wrong_method_on_the_rest_api_is_a_json_405(api_client):
    assert_json_error(api_client.delete("/api/v1/catalog/"), 405, "method_not_allowed")


# --- 400, 413: a request Django refuses -------------------------------------------------------

@pytest.mark.django_db
@pytest.mark.parametrize("path", ["/api/v1/jobs/", "/api/v1/fl/heartbeat", "/api/v1/nope/"])
def test_a_host_not_allowed_under_the_api_is_a_json_400(client, path):
    assert_json_error(client.get(path, HTTP_HOST="evil.example"), 400, "bad_request")


@pytest.mark.django_db
def test_a_host_not_allowed_outside_the_api_keeps_djangos_html_400(client):
    assert_html(client.get("/login/", HTTP_HOST="evil.example"), 400)


def test_a_host_not_allowed_on_the_fl_api_through_the_asgi_app_is_a_json_400():
    assert_asgi_json_error(asgi("POST", "/api/v1/fl/heartbeat", host=b"evil.example"), 400, "bad_request")


@pytest.mark.django_db
def test_a_body_over_data_upload_max_memory_size_on_the_rest_api_is_a_json_413(api_client, settings, nodes3):
    settings.DATA_UPLOAD_MAX_MEMORY_SIZE = 1000
    body = json.dumps({"name": "x" * 2000, "nodes": list(NODE_NAMES), "spec": {}})
    response = api_client.post("/api/v1/jobs/", data=body, content_type="application/json")
    assert "1000" in assert_json_error(response, 413, "too_large")["message"]


# --- 403: a refusal -----------------------------------------------------------------------------

@pytest.mark.django_db
def test_a_csrf_failure_on_a_session_authenticated_api_post_is_a_json_403(user, nodes3):
    client = Client(enforce_csrf_checks=True)
    client.force_login(user)
    body = json.dumps({"name": "bc", "nodes": list(NODE_NAMES), "spec": {}})
    response = client.post("/api/v1/jobs/", data=body, content_type="application/json")
    assert "CSRF" in assert_json_error(response, 403, "permission_denied")["message"]


# --- the handlers themselves -----------------------------------------------------------------------

HANDLERS = [
    (errors.bad_request, DisallowedHost("evil.example"), 400, "bad_request"),
    (errors.bad_request, RequestDataTooBig("too big"), 413, "too_large"),
    (errors.permission_denied, PermissionDenied(), 403, "forbidden"),
    (errors.page_not_found, Resolver404({"path": "x", "tried": []}), 404, "not_found"),
    (errors.page_not_found, Http404("no such job"), 404, "not_found"),
]


@pytest.mark.parametrize(("handler", "exception", "status", "code"), HANDLERS)
def test_the_error_handlers_answer_json_under_the_api(handler, exception, status, code):
    assert_json_error(handler(RequestFactory().get("/api/v1/jobs/"), exception=exception), status, code)


@pytest.mark.parametrize(("handler", "exception", "status", "code"), HANDLERS)
def test_the_error_handlers_answer_djangos_pages_elsewhere(handler, exception, status, code):
    response = handler(RequestFactory().get("/jobs/"), exception=exception)
    assert response.status_code == {413: 400}.get(status, status)
    assert response["Content-Type"].startswith("text/html")


def test_the_url_handlers_are_the_json_ones():
    from flportal import urls

    assert (urls.handler400, urls.handler403, urls.handler404, urls.handler500) == (
        "core.errors.bad_request", "core.errors.permission_denied", "core.errors.page_not_found",
        "core.errors.server_error")


def test_the_error_handlers_pass_djangos_url_checks():
    from django.core.checks.urls import check_custom_error_handlers

    assert check_custom_error_handlers(None) == []


# --- ids past the database's integers ------------------------------------------------------------

@pytest.mark.django_db
@pytest.mark.parametrize("path", [
    f"/api/v1/fl/jobs/{TOO_BIG}/task",
    f"/api/v1/fl/jobs/1/models/{TOO_BIG}",
    f"/api/v1/fl/rounds/{TOO_BIG}/models/site-a",
])
def test_an_id_past_the_databases_range_on_the_fl_api_is_a_json_404(client, nodes3, path):
    assert_json_error(client.get(path, headers={"Authorization": node_auth(nodes3[0])}), 404, "not_found")


@pytest.mark.django_db
@pytest.mark.parametrize("path", [
    f"/api/v1/fl/rounds/{TOO_BIG}/update", f"/api/v1/fl/rounds/{TOO_BIG}/evaluation",
    f"/api/v1/fl/rounds/{TOO_BIG}/cross-site", f"/api/v1/fl/jobs/{TOO_BIG}/logs",
])
def test_an_id_past_the_databases_range_in_an_fl_post_is_a_json_404(client, nodes3, path):
    response = client.post(path, data="{}", content_type="application/json",
                           headers={"Authorization": node_auth(nodes3[0])})
    assert_json_error(response, 404, "not_found")


def test_an_id_past_the_databases_range_through_the_asgi_app_is_a_json_404():
    assert_asgi_json_error(asgi("GET", f"/api/v1/fl/jobs/{TOO_BIG}/task"), 404, "not_found")


@pytest.mark.django_db
@pytest.mark.parametrize("path", [
    f"/api/v1/jobs/{TOO_BIG}/", f"/api/v1/jobs/{TOO_BIG}/start/", f"/api/v1/jobs/{TOO_BIG}/rounds/",
    f"/api/v1/jobs/{TOO_BIG}/metrics/", f"/api/v1/jobs/{TOO_BIG}/events/", f"/api/v1/jobs/{TOO_BIG}/models/",
    f"/api/v1/jobs/1/models/{TOO_BIG}/download/", f"/api/v1/jobs/{TOO_BIG}/cross-site/",
])
def test_an_id_past_the_databases_range_on_the_rest_api_is_a_json_404(api_client, path):
    assert_json_error(api_client.get(path), 404, "not_found")


@pytest.mark.django_db
def test_the_largest_id_the_urls_take_reaches_the_view(api_client, client, started_job, nodes3):
    """18 digits still route: the views answer their own 404 for a job there is not."""
    assert_json_error(api_client.get(f"/api/v1/jobs/{LARGEST}/"), 404, "not_found")
    assert_json_error(api_client.get(f"/api/v1/jobs/{started_job.pk}/models/{LARGEST}/download/"), 404, "not_found")
    response = client.get(f"/api/v1/fl/jobs/{LARGEST}/task", headers={"Authorization": node_auth(nodes3[0])})
    assert_json_error(response, 404, "not_found")
    assert api_client.get(f"/api/v1/jobs/{started_job.pk}/").json()["id"] == started_job.pk


@pytest.mark.django_db
def test_an_id_past_the_databases_range_on_a_page_is_djangos_html_404(client, user):
    client.force_login(user)
    assert_html(client.get(f"/jobs/{TOO_BIG}/"), 404)


def test_ids_reverse_through_the_converter():
    assert reverse("job-detail", kwargs={"job_id": 42}) == "/jobs/42/"
