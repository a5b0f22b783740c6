"""Nodes: registration and its credentials (hashed token, derived agent key), rotation,
refusals, enabling/disabling, going offline, and the admin."""
import hashlib
import hmac
import io
import json
from datetime import timedelta

import pytest
from django.apps import apps
from django.core.management import call_command
from django.utils import timezone

from core.errors import ValidationFailed
from nodes.models import Node, NodeEvent
from nodes.selectors import node_for_token
from nodes.services import agent_key_for, node_heartbeat, node_register, node_set_enabled, nodes_mark_stale_offline
from tests.conftest import BREAST_CANCER, create_job, register_node

pytestmark = pytest.mark.django_db


def heartbeat(client, token):
    return client.post("/api/v1/fl/heartbeat", data={"version": "1", "datasets": [BREAST_CANCER], "resources": {}},
                       content_type="application/json", headers={"Authorization": f"Node {token}"})


def every_stored_value() -> str:
    """Every row of every table, as text."""
    return "\n".join(str(row) for model in apps.get_models() for row in model.objects.values_list())


def test_register_issues_a_token_that_authenticates(client):
    creds = node_register(name="site-a", agent_url="http://10.0.0.5:8081/")

    assert node_for_token(creds.token) == creds.node
    assert heartbeat(client, creds.token).status_code == 200
    node = Node.objects.get(name="site-a")
    assert node.agent_url == "http://10.0.0.5:8081" and node.status == Node.Status.ONLINE


def test_the_token_secret_and_agent_key_are_stored_nowhere(client):
    creds = node_register(name="site-a", agent_url="http://agent:8081")
    heartbeat(client, creds.token)
    key_id, secret = creds.token.split(".", 1)
    node = Node.objects.get()

    assert node.token_key_id == key_id
    assert node.token_hash == hashlib.sha256(secret.encode()).hexdigest() != secret
    assert len(secret) >= 43  # 256 bits, url-safe base64
    stored = every_stored_value()
    assert key_id in stored  # the sanity check of the search itself
    assert secret not in stored and creds.token not in stored and creds.agent_key not in stored


def test_tokens_differ_between_nodes_and_a_token_only_opens_its_own_node():
    a = node_register(name="site-a", agent_url="http://a")
    b = node_register(name="site-b", agent_url="http://b")
    assert a.token != b.token and a.node.token_hash != b.node.token_hash
    key_a, secret_a = a.token.split(".", 1)
    key_b, secret_b = b.token.split(".", 1)
    assert node_for_token(f"{key_a}.{secret_b}") is None and node_for_token(f"{key_b}.{secret_a}") is None
    assert node_for_token(key_a) is None and node_for_token(f"{key_a}.") is None and node_for_token("") is None


def test_reregistering_rotates_the_credentials(client):
    old = node_register(name="site-a", agent_url="http://old:1")
    new = node_register(name="site-a", agent_url="https://new:2")

    assert new.node.pk == old.node.pk and Node.objects.count() == 1
    assert new.token != old.token and new.agent_key != old.agent_key
    body = heartbeat(client, old.token).json()
    assert body["error"] == "unauthenticated"
    assert heartbeat(client, old.token).status_code == 401
    assert heartbeat(client, new.token).status_code == 200
    assert Node.objects.get().agent_url == "https://new:2"


@pytest.mark.parametrize("name", ["", "site a", "site/a", "../a", "a.b", "site;drop", "-"])
def test_register_refuses_a_bad_name(name):
    with pytest.raises(ValidationFailed) as info:
        node_register(name=name, agent_url="http://agent")
    assert info.value.field == "name"
    assert Node.objects.count() == 0


@pytest.mark.parametrize("url", ["", "agent:8081", "ftp://agent", "file:///etc/passwd", "javascript:alert(1)"])
def test_register_refuses_a_bad_agent_url(url):
    with pytest.raises(ValidationFailed) as info:
        node_register(name="site-a", agent_url=url)
    assert info.value.field == "agent_url"
    assert Node.objects.count() == 0


def test_register_refuses_a_name_longer_than_the_column():
    with pytest.raises(ValidationFailed) as info:
        node_register(name="a" * 65, agent_url="http://agent")
    assert info.value.field == "name"


def test_the_register_command_prints_working_credentials_once(client):
    out = io.StringIO()
    call_command("node_register", "site-q", "--agent-url", "http://q:8081", "--json", stdout=out)
    printed = json.loads(out.getvalue())
    node = Node.objects.get(name="site-q")
    assert printed["node"] == "site-q" and printed["agent_key"] == agent_key_for(node)
    assert heartbeat(client, printed["token"]).status_code == 200


# --- the agent key -----------------------------------------------------------------------------

def test_agent_key_is_stable_per_node_differs_between_nodes_and_rotates(settings):
    a = node_register(name="site-a", agent_url="http://a")
    b = node_register(name="site-b", agent_url="http://b")
    node_a = Node.objects.get(pk=a.node.pk)

    assert agent_key_for(node_a) == agent_key_for(Node.objects.get(pk=a.node.pk)) == a.agent_key
    assert a.agent_key != b.agent_key
    expected = hmac.new(settings.SECRET_KEY.encode(), f"agent:{node_a.pk}:{node_a.token_key_id}".encode(),
                        hashlib.sha256).hexdigest()
    assert a.agent_key == expected  # docs/PROTOCOL.md, section 2

    rotated = node_register(name="site-a", agent_url="http://a")
    assert rotated.agent_key != a.agent_key and agent_key_for(Node.objects.get(pk=a.node.pk)) == rotated.agent_key

    settings.SECRET_KEY = "another-secret-key-for-this-test-only"
    assert agent_key_for(Node.objects.get(pk=a.node.pk)) != rotated.agent_key


# --- enabled, online, offline --------------------------------------------------------------------

def test_disabling_a_node_keeps_it_out_of_new_jobs(user):
    creds = register_node("site-a")
    register_node("site-b")
    node_set_enabled(node=creds.node, enabled=False)

    node = Node.objects.get(pk=creds.node.pk)
    assert node.status == Node.Status.DISABLED and not node.enabled
    node_heartbeat(node=node, version="2", datasets=[BREAST_CANCER], resources={})
    assert Node.objects.get(pk=node.pk).status == Node.Status.DISABLED  # a heartbeat does not re-enable
    with pytest.raises(ValidationFailed) as info:
        create_job(user, [node, Node.objects.get(name="site-b")])
    assert info.value.field == "nodes" and "site-a" in info.value.message

    node_set_enabled(node=node, enabled=True)
    assert Node.objects.get(pk=node.pk).status == Node.Status.ONLINE  # its heartbeat is recent
    assert create_job(user, [node]).status == "draft"


def test_enabling_a_silent_node_leaves_it_offline(settings):
    creds = register_node("site-a", online=False)
    node_set_enabled(node=creds.node, enabled=False)
    node_set_enabled(node=creds.node, enabled=True)
    assert Node.objects.get(pk=creds.node.pk).status == Node.Status.OFFLINE


def test_silent_nodes_go_offline_and_come_back_with_a_heartbeat(settings):
    settings.FLPORTAL_NODE_OFFLINE_AFTER_S = 15
    a, b = register_node("site-a"), register_node("site-b")
    Node.objects.filter(pk=a.node.pk).update(last_heartbeat_at=timezone.now() - timedelta(seconds=20))

    assert [n.name for n in nodes_mark_stale_offline()] == ["site-a"]
    assert Node.objects.get(pk=a.node.pk).status == Node.Status.OFFLINE
    assert Node.objects.get(pk=b.node.pk).status == Node.Status.ONLINE

    node_heartbeat(node=a.node, version="1", datasets=[], resources={})
    assert Node.objects.get(pk=a.node.pk).status == Node.Status.ONLINE
    assert nodes_mark_stale_offline() == []


# --- admin ------------------------------------------------------------------------------------

@pytest.fixture
def admin_client_(client, django_user_model):
    admin = django_user_model.objects.create_superuser(username="root", password="pw", email="root@example.org")
    client.force_login(admin)
    return client


def test_node_admin_lists_nodes_and_adds_them_by_enrollment(admin_client_):
    register_node("site-a")
    register_node("site-b", online=False)

    page = admin_client_.get("/admin/nodes/node/")
    assert page.status_code == 200
    assert b"site-a" in page.content and b"site-b" in page.content
    assert b"/admin/nodes/node/add/" in page.content  # tests/nodes/test_enrollment.py: adding a node
    assert admin_client_.get("/admin/nodes/node/add/").status_code == 200
    assert admin_client_.get("/admin/jobs/job/").status_code == 200
    assert admin_client_.get("/admin/jobs/job/add/").status_code == 403


def test_node_admin_change_page_shows_no_editable_credentials(admin_client_):
    creds = register_node("site-a")
    page = admin_client_.get(f"/admin/nodes/node/{creds.node.pk}/change/")
    assert page.status_code == 200
    assert b'name="token_hash"' not in page.content and b'name="token_key_id"' not in page.content
    assert creds.token.split(".", 1)[1].encode() not in page.content


def test_node_admin_disable_action_uses_the_service(admin_client_):
    creds = register_node("site-a")
    response = admin_client_.post("/admin/nodes/node/", {"action": "disable", "_selected_action": [creds.node.pk]})
    assert response.status_code == 302
    node = Node.objects.get(pk=creds.node.pk)
    assert node.status == Node.Status.DISABLED and not node.enabled


def test_the_node_admin_is_for_staff_only(client, user):
    client.force_login(user)
    response = client.get("/admin/nodes/node/")
    assert response.status_code == 302 and "/admin/login/" in response["Location"]


# --- history ---------------------------------------------------------------------------------------

def test_every_status_change_is_a_stored_event_shown_in_the_admin(admin_client, django_user_model, settings):
    settings.FLPORTAL_NODE_OFFLINE_AFTER_S = 15
    creds = register_node("site-a")  # offline → online: heard from
    Node.objects.filter(pk=creds.node.pk).update(last_heartbeat_at=timezone.now() - timedelta(seconds=20))
    nodes_mark_stale_offline()
    admin = django_user_model.objects.get(username="admin")
    node_set_enabled(node=creds.node, enabled=False, actor=admin)
    history = [(e.status, e.message, e.actor) for e in NodeEvent.objects.filter(node=creds.node).order_by("id")]
    assert history == [("online", "its agent was heard from", None), ("offline", "silent for more than 15 s", None),
                       ("disabled", "disabled by admin", admin)]
    page = admin_client.get(f"/admin/nodes/node/{creds.node.pk}/change/").content.decode()
    assert "disabled: disabled by admin" in page and "offline: silent for more than 15 s" in page
    node_heartbeat(node=Node.objects.get(pk=creds.node.pk), version="1", datasets=[], resources={})
    assert NodeEvent.objects.filter(node=creds.node).count() == 3  # a disabled node's beat changes nothing
