"""Who may use a node: its access list (groups). A user sees, in the pages and the API,
only the nodes their groups may use, and a job on any other node is refused as if the
node did not exist; staff see and use every node; a node with no group is staff's only.
Admin edits the list."""
import pytest
from django.contrib.auth.models import Group
from rest_framework.test import APIClient

from core.auth import api_token_create
from jobs.models import Job
from nodes.models import Node
from tests.conftest import BASE_SPEC, register_node

pytestmark = pytest.mark.django_db


@pytest.fixture
def worlds(nodes3, django_user_model):
    """site-a..c are the researchers' (conftest); site-x belongs to the group "oncology"."""
    x = register_node("site-x").node
    Node.objects.get(pk=x.pk).user_groups.set([Group.objects.create(name="oncology")])
    return x


def client_of(user) -> APIClient:
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Token {api_token_create(user=user)}")
    return client


def test_a_user_sees_only_the_nodes_their_groups_may_use(api_client, client, user, worlds):
    assert [n["name"] for n in api_client.get("/api/v1/nodes/").json()] == ["site-a", "site-b", "site-c"]
    client.force_login(user)
    page = client.get("/nodes/").content.decode()
    assert "site-a" in page and "site-x" not in page


def test_a_job_on_a_node_the_user_may_not_use_is_refused_like_one_that_does_not_exist(api_client, worlds):
    def create(nodes):
        return api_client.post("/api/v1/jobs/", {"name": "x", "nodes": nodes, "spec": BASE_SPEC}, format="json")

    forbidden, missing = create(["site-a", "site-x"]), create(["site-a", "site-zz"])
    assert forbidden.status_code == missing.status_code == 400
    assert forbidden.json()["field"] == missing.json()["field"] == "nodes"
    assert forbidden.json()["message"] == "nodes: no such node ['site-x']"
    assert missing.json()["message"] == "nodes: no such node ['site-zz']"
    assert Job.objects.count() == 0


def test_staff_see_and_use_every_node(worlds, django_user_model):
    staff = client_of(django_user_model.objects.create_user("ops", is_staff=True))
    names = [n["name"] for n in staff.get("/api/v1/nodes/").json()]
    assert names == ["site-a", "site-b", "site-c", "site-x"]
    created = staff.post("/api/v1/jobs/", {"name": "x", "nodes": ["site-a", "site-x"], "spec": BASE_SPEC},
                         format="json")
    assert created.status_code == 201, created.content


def test_a_node_with_no_group_is_staff_only(api_client, nodes3):
    Node.objects.get(name="site-c").user_groups.clear()
    assert [n["name"] for n in api_client.get("/api/v1/nodes/").json()] == ["site-a", "site-b"]


def test_admin_edits_the_access_list(admin_client, api_client, worlds):
    oncology = Group.objects.get(name="oncology")
    node = Node.objects.get(name="site-x")
    response = admin_client.post(f"/admin/nodes/node/{node.pk}/change/",
                                 {"name": "site-x", "agent_url": node.agent_url,
                                  "user_groups": [oncology.pk, Group.objects.get(name="researchers").pk]})
    assert response.status_code == 302, response.content.decode()[:2000]
    assert "site-x" in [n["name"] for n in api_client.get("/api/v1/nodes/").json()]


def test_node_register_grants_groups(tmp_path):
    from django.core.management import call_command

    call_command("node_register", "site-q", "--agent-url", "http://127.0.0.1:9", "--group", "lab", "--group", "icu",
                 stdout=open(tmp_path / "out", "w"))
    assert sorted(Node.objects.get(name="site-q").user_groups.values_list("name", flat=True)) == ["icu", "lab"]


def test_staff_create_a_node_with_its_access_list(worlds, api_client, django_user_model):
    staff = client_of(django_user_model.objects.create_user("ops", is_staff=True))
    created = staff.post("/api/v1/nodes/", {"name": "site-n", "agent_url": "http://10.0.0.9:8101",
                                            "groups": ["researchers", "radiology"]}, format="json")
    assert created.status_code == 201, created.content
    assert sorted(Node.objects.get(name="site-n").user_groups.values_list("name", flat=True)) == [
        "radiology", "researchers"]
    assert "site-n" in [n["name"] for n in api_client.get("/api/v1/nodes/").json()]
    refused = staff.post("/api/v1/nodes/", {"name": "site-m", "agent_url": "http://10.0.0.9:8101", "groups": "all"},
                         format="json")
    assert refused.status_code == 400 and refused.json()["field"] == "groups"
    assert not Node.objects.filter(name="site-m").exists()
