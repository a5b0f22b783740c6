"""Forms need their CSRF token (sign-in, sign-out, admin), and an API token is no way
into the admin or the pages: it authenticates the REST API only."""
import pytest
from django.test import Client

pytestmark = pytest.mark.django_db


@pytest.fixture
def csrf_client():
    return Client(enforce_csrf_checks=True)


def test_sign_in_without_the_csrf_token_is_refused(csrf_client, user):
    response = csrf_client.post("/login/", {"username": "alice", "password": "pw-alice"})
    assert response.status_code == 403
    assert "_auth_user_id" not in csrf_client.session


def test_sign_in_with_the_token_works(csrf_client, user):
    csrf_client.get("/login/")
    response = csrf_client.post("/login/", {"username": "alice", "password": "pw-alice",
                                            "csrfmiddlewaretoken": csrf_client.cookies["csrftoken"].value})
    assert response.status_code == 302 and csrf_client.session["_auth_user_id"] == str(user.pk)


def test_sign_out_and_admin_writes_without_the_token_are_refused(csrf_client, django_user_model):
    admin = django_user_model.objects.create_superuser("root", password="pw-root")
    csrf_client.force_login(admin)
    assert csrf_client.post("/logout/").status_code == 403
    assert csrf_client.post("/admin/nodes/node/", {"action": "disable", "_selected_action": []}).status_code == 403
    assert csrf_client.session["_auth_user_id"] == str(admin.pk)  # still signed in


@pytest.mark.parametrize("url", ["/admin/", "/admin/nodes/node/", "/", "/nodes/"])
def test_an_api_token_opens_neither_the_admin_nor_the_pages(client, django_user_model, url):
    from core.auth import api_token_create

    staff = django_user_model.objects.create_superuser("root", password="pw-root")
    response = client.get(url, headers={"Authorization": f"Token {api_token_create(user=staff)}"})
    assert response.status_code == 302 and "/login/" in response["Location"]
