"""Node enrollment with one-time codes: staff create a node (REST API or admin) and get a
code; the site's agent exchanges it once (`POST /api/v1/fl/enroll`) for the node's token
and agent key. Every refusal, through the real URLs."""
import hashlib
import logging
import re
from datetime import timedelta

import pytest
from django.apps import apps
from django.utils import timezone
from rest_framework.test import APIClient

from core.auth import api_token_create
from nodes import services
from nodes.exceptions import EnrollmentUsed
from nodes.models import EnrollmentCode, Node
from nodes.selectors import node_for_token
from nodes.services import agent_key_for, enrollment_code_issue, node_create, node_enroll, node_set_enabled
from tests.conftest import BREAST_CANCER, UNREACHABLE_AGENT

pytestmark = pytest.mark.django_db

CODE_IN_PAGE = re.compile(r"--code ([A-Za-z0-9_-]{20,})")


@pytest.fixture
def staff(django_user_model):
    return django_user_model.objects.create_user(username="ops", password="pw-ops", is_staff=True)


@pytest.fixture
def staff_api(staff):
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Token {api_token_create(user=staff)}")
    return client


def create_node(client, name="site-a", agent_url=UNREACHABLE_AGENT):
    return client.post("/api/v1/nodes/", {"name": name, "agent_url": agent_url}, format="json")


def enroll(client, code):
    return client.post("/api/v1/fl/enroll", data={"code": code}, content_type="application/json")


def heartbeat(client, token):
    return client.post("/api/v1/fl/heartbeat", data={"version": "1", "datasets": [BREAST_CANCER], "resources": {}},
                       content_type="application/json", headers={"Authorization": f"Node {token}"})


def assert_refused(response, status: int, error: str) -> dict:
    assert response.status_code == status, response.content
    assert response["Content-Type"].startswith("application/json")
    body = response.json()
    assert body["error"] == error and isinstance(body["message"], str) and body["message"]
    return body


def credentials_of(name: str) -> tuple[str, str]:
    node = Node.objects.get(name=name)
    return node.token_key_id, node.token_hash


def every_stored_value() -> str:
    """Every row of every table, as text."""
    return "\n".join(str(row) for model in apps.get_models() for row in model.objects.values_list())


# --- creating a node: the REST API ---------------------------------------------------------------

def test_staff_creates_a_node_through_the_api_and_gets_a_one_time_code(staff_api, staff):
    response = create_node(staff_api, agent_url="http://10.0.0.5:8101/")

    assert response.status_code == 201 and response["Cache-Control"] == "no-store"
    body = response.json()
    code = body["enrollment_code"]
    assert body["node"]["name"] == "site-a" and body["node"]["status"] == "offline" and body["node"]["enabled"]
    assert set(body["node"]) == {"id", "name", "status", "enabled", "last_heartbeat_at", "version", "datasets",
                                 "resources"}
    assert len(code) >= 32 and not code.startswith("-")
    assert body["command"] == f"flportal-agent enroll --portal http://testserver --code {code}"
    row = EnrollmentCode.objects.get()
    assert row.node.name == "site-a" and row.created_by == staff and row.used_at is None
    expected_expiry = timezone.now() + timedelta(seconds=86400)
    assert abs((row.expires_at - expected_expiry).total_seconds()) < 60
    assert body["expires_at"].startswith(row.expires_at.strftime("%Y-%m-%dT%H:%M"))
    assert Node.objects.get().agent_url == "http://10.0.0.5:8101"


def test_the_code_lifetime_is_a_setting(staff_api, settings):
    settings.FLPORTAL_ENROLLMENT_CODE_TTL_S = 600
    create_node(staff_api)
    assert abs((EnrollmentCode.objects.get().expires_at - timezone.now()).total_seconds() - 600) < 60


def test_a_session_signed_in_staff_user_creates_a_node_too(client, staff):
    client.force_login(staff)
    response = client.post("/api/v1/nodes/", {"name": "site-s", "agent_url": "http://s:1"},
                           content_type="application/json")
    assert response.status_code == 201 and enroll(client, response.json()["enrollment_code"]).status_code == 201


def test_a_duplicate_or_bad_name_or_url_is_refused_naming_the_field(staff_api):
    assert create_node(staff_api).status_code == 201
    for name, url, field in [("site-a", "http://other:1", "name"), ("global", "http://g:1", "name"),
                             ("bad name", "http://b:1", "name"), ("site-b", "ftp://b", "agent_url")]:
        body = assert_refused(create_node(staff_api, name=name, agent_url=url), 400, "invalid")
        assert body["field"] == field, body
    assert list(Node.objects.values_list("name", flat=True)) == ["site-a"]
    assert EnrollmentCode.objects.count() == 1
    assert Node.objects.get().agent_url == UNREACHABLE_AGENT


def test_a_non_staff_user_cannot_create_nodes_or_issue_codes(api_client, staff_api):
    assert_refused(create_node(api_client), 403, "permission_denied")
    assert Node.objects.count() == 0 and EnrollmentCode.objects.count() == 0

    code = create_node(staff_api, name="site-b").json()["enrollment_code"]
    assert_refused(api_client.post("/api/v1/nodes/site-b/enrollment-code/", format="json"), 403,
                   "permission_denied")
    assert EnrollmentCode.objects.count() == 1 and enroll(APIClient(), code).status_code == 201
    listed = api_client.get("/api/v1/nodes/")  # listing is open to every signed-in user, for the nodes
    assert listed.status_code == 200 and [n["name"] for n in listed.json()] == []  # they may use (none here)


def test_an_unauthenticated_request_cannot_create_a_node():
    anonymous = APIClient()
    response = create_node(anonymous)
    assert response.status_code in (401, 403)
    assert_refused(response, response.status_code, "not_authenticated")
    assert_refused(anonymous.post("/api/v1/nodes/site-a/enrollment-code/"), response.status_code,
                   "not_authenticated")
    assert_refused(anonymous.get("/api/v1/nodes/"), response.status_code, "not_authenticated")
    assert Node.objects.count() == 0 and EnrollmentCode.objects.count() == 0


def test_a_created_node_cannot_authenticate_before_enrollment(client, staff):
    node, _ = node_create(name="site-a", agent_url="http://a:1", created_by=staff)

    key_id = node.token_key_id
    for secret in ["", "!", "x", node.token_hash, hashlib.sha256(b"").hexdigest()]:
        assert node_for_token(f"{key_id}.{secret}") is None
        assert_refused(heartbeat(client, f"{key_id}.{secret}"), 401, "unauthenticated")
    assert Node.objects.get().last_heartbeat_at is None


def test_a_new_code_from_the_api_revokes_the_earlier_one(staff_api, client):
    first = create_node(staff_api).json()["enrollment_code"]
    response = staff_api.post("/api/v1/nodes/site-a/enrollment-code/", format="json")

    assert response.status_code == 201 and response["Cache-Control"] == "no-store"
    second = response.json()["enrollment_code"]
    assert second != first and response.json()["command"].endswith(f"--code {second}")
    assert response.json()["node"]["name"] == "site-a"
    assert_refused(enroll(client, first), 400, "enrollment_invalid")
    assert enroll(client, second).status_code == 201
    assert EnrollmentCode.objects.count() == 1  # the revoked one is gone, the used one is kept


def test_a_code_for_an_unknown_node_is_404(staff_api):
    assert_refused(staff_api.post("/api/v1/nodes/nowhere/enrollment-code/", format="json"), 404, "not_found")


# --- exchanging a code ---------------------------------------------------------------------------

def test_the_code_exchanges_once_for_credentials_that_work(staff_api, client):
    code = create_node(staff_api).json()["enrollment_code"]
    pending_key_id, _ = credentials_of("site-a")

    response = enroll(client, code)

    assert response.status_code == 201 and response["Cache-Control"] == "no-store"
    body = response.json()
    node = Node.objects.get(name="site-a")
    assert body == {"node": "site-a", "token": body["token"], "agent_key": agent_key_for(node),
                    "agent_url": UNREACHABLE_AGENT, "heartbeat_interval_s": 5.0}
    assert node.token_key_id != pending_key_id and body["token"].startswith(f"{node.token_key_id}.")
    assert heartbeat(client, body["token"]).status_code == 200
    assert Node.objects.get(name="site-a").status == Node.Status.ONLINE
    assert EnrollmentCode.objects.get().used_at is not None


def test_replaying_a_code_is_refused_and_changes_nothing(staff_api, client):
    code = create_node(staff_api).json()["enrollment_code"]
    token = enroll(client, code).json()["token"]
    before = credentials_of("site-a")
    used_at = EnrollmentCode.objects.get().used_at

    body = assert_refused(enroll(client, code), 409, "enrollment_used")

    assert "token" not in body and "agent_key" not in body
    assert credentials_of("site-a") == before and EnrollmentCode.objects.get().used_at == used_at
    assert heartbeat(client, token).status_code == 200


def test_an_expired_code_is_refused(staff_api, client):
    code = create_node(staff_api).json()["enrollment_code"]
    EnrollmentCode.objects.update(expires_at=timezone.now() - timedelta(seconds=1))
    before = credentials_of("site-a")

    assert_refused(enroll(client, code), 410, "enrollment_expired")
    assert credentials_of("site-a") == before and EnrollmentCode.objects.get().used_at is None


@pytest.mark.parametrize("body", [{"code": "not-a-code-the-portal-issued"}, {"code": ""}, {"code": 7},
                                  {"code": None}, {}, {"code": "x" * 300}])
def test_a_wrong_code_is_refused(staff_api, client, body):
    create_node(staff_api)
    before = credentials_of("site-a")

    response = client.post("/api/v1/fl/enroll", data=body, content_type="application/json")

    assert_refused(response, 400, "enrollment_invalid")
    assert credentials_of("site-a") == before and EnrollmentCode.objects.get().used_at is None


def test_a_malformed_body_or_another_method_is_refused(client):
    assert_refused(client.post("/api/v1/fl/enroll", data=b"{not json", content_type="application/json"), 400,
                   "invalid_update")
    assert_refused(client.post("/api/v1/fl/enroll", data=[1], content_type="application/json"), 400,
                   "invalid_update")
    response = client.get("/api/v1/fl/enroll")
    assert_refused(response, 405, "method_not_allowed")
    assert response["Allow"] == "POST"


def test_a_code_of_a_disabled_node_is_refused_until_it_is_enabled(staff_api, client):
    code = create_node(staff_api).json()["enrollment_code"]
    node_set_enabled(node=Node.objects.get(name="site-a"), enabled=False)
    before = credentials_of("site-a")

    assert_refused(enroll(client, code), 403, "node_disabled")
    assert credentials_of("site-a") == before and EnrollmentCode.objects.get().used_at is None

    node_set_enabled(node=Node.objects.get(name="site-a"), enabled=True)
    assert enroll(client, code).status_code == 201  # the refusal did not spend the code


def test_enrolling_again_rotates_the_credentials(staff_api, client):
    create_node(staff_api)
    node = Node.objects.get(name="site-a")
    old = node_enroll(code=enrollment_code_issue(node=node, created_by=None))
    new = enroll(client, enrollment_code_issue(node=node, created_by=None)).json()

    assert new["token"] != old.token and new["agent_key"] != old.agent_key
    assert_refused(heartbeat(client, old.token), 401, "unauthenticated")
    assert heartbeat(client, new["token"]).status_code == 200


def test_of_two_concurrent_exchanges_only_one_wins(staff, monkeypatch):
    """The other exchange claims the code after this one checked it and before it claims
    it (what two requests at once can do): the conditional UPDATE refuses the late one,
    before it issues anything."""
    node, code = node_create(name="site-a", agent_url="http://a:1", created_by=staff)
    check, issued = services._check_enrollable, []

    def check_then_lose_the_race(row, *, now):
        check(row, now=now)  # passes: the code is unused, as this request read it
        EnrollmentCode.objects.filter(pk=row.pk).update(used_at=now)  # the other request claims it meanwhile

    monkeypatch.setattr(services, "_check_enrollable", check_then_lose_the_race)
    monkeypatch.setattr(services, "issue_token", lambda prefix: issued.append(prefix))
    with pytest.raises(EnrollmentUsed) as info:
        node_enroll(code=code)

    assert "just been used" in info.value.message and issued == []
    assert Node.objects.get().token_key_id == node.token_key_id


def test_only_the_hash_of_the_code_is_stored(staff_api, client):
    code = create_node(staff_api).json()["enrollment_code"]
    row = EnrollmentCode.objects.get()

    assert row.code_hash == hashlib.sha256(code.encode()).hexdigest()
    stored = every_stored_value()
    assert row.code_hash in stored  # the sanity check of the search itself
    assert code not in stored

    body = enroll(client, code).json()
    stored = every_stored_value()
    assert code not in stored and body["token"] not in stored and body["agent_key"] not in stored
    assert body["token"].split(".", 1)[1] not in stored


def test_neither_the_code_nor_the_credentials_are_logged(staff_api, client, caplog):
    caplog.set_level(logging.DEBUG)
    code = create_node(staff_api).json()["enrollment_code"]
    body = enroll(client, code).json()
    enroll(client, code)  # refused: 409
    assert caplog.records  # the refusal is logged (a 4xx), without the code
    for secret in (code, body["token"], body["agent_key"]):
        assert secret not in caplog.text


# --- the admin -----------------------------------------------------------------------------------

def test_the_admin_adds_a_node_and_shows_its_code_once(admin_client, admin_user):
    form = admin_client.get("/admin/nodes/node/add/")
    assert form.status_code == 200
    assert b'name="name"' in form.content and b'name="agent_url"' in form.content
    assert b"token_hash" not in form.content and b"token_key_id" not in form.content

    response = admin_client.post("/admin/nodes/node/add/", {"name": "site-h", "agent_url": "http://10.0.0.7:8101/"},
                                 follow=True)

    assert response.status_code == 200
    page = response.content.decode()
    code = CODE_IN_PAGE.search(page).group(1)
    assert f"flportal-agent enroll --portal http://testserver --code {code}" in page
    row = EnrollmentCode.objects.get()
    assert row.node.name == "site-h" and row.created_by == admin_user
    assert row.code_hash == hashlib.sha256(code.encode()).hexdigest()
    assert f"{timezone.localtime(row.expires_at):%Y-%m-%d %H:%M}" in page
    assert Node.objects.get().agent_url == "http://10.0.0.7:8101"
    assert code not in admin_client.get(f"/admin/nodes/node/{row.node.pk}/change/").content.decode()  # once
    assert enroll(admin_client, code).status_code == 201


def test_the_admin_add_form_refuses_what_the_service_refuses(admin_client, staff):
    node_create(name="site-a", agent_url="http://a:1", created_by=staff)
    for name, url in [("global", "http://g:1"), ("site-a", "http://other:1"), ("site-b", "ftp://b.example.org")]:
        response = admin_client.post("/admin/nodes/node/add/", {"name": name, "agent_url": url})
        assert response.status_code == 200 and response.context["adminform"].form.errors
    assert list(Node.objects.values_list("name", flat=True)) == ["site-a"]
    assert EnrollmentCode.objects.count() == 1


def test_the_admin_action_issues_a_new_code_that_revokes_the_earlier_one(admin_client, staff, client):
    node, first = node_create(name="site-a", agent_url="http://a:1", created_by=staff)

    response = admin_client.post("/admin/nodes/node/", {"action": "issue_enrollment_code",
                                                        "_selected_action": [node.pk]}, follow=True)

    assert response.status_code == 200
    second = CODE_IN_PAGE.search(response.content.decode()).group(1)
    assert second != first
    assert_refused(enroll(client, first), 400, "enrollment_invalid")
    assert enroll(client, second).status_code == 201


def test_the_admin_change_page_keeps_the_credentials_read_only(admin_client, staff):
    node, _ = node_create(name="site-a", agent_url="http://a:1", created_by=staff)
    page = admin_client.get(f"/admin/nodes/node/{node.pk}/change/")
    assert page.status_code == 200
    assert b'name="token_hash"' not in page.content and b'name="token_key_id"' not in page.content
    assert node.token_key_id.encode() in page.content  # shown, not editable
