"""A disabled node is refused everywhere on the node-facing API, from its very next
call, and its trainers are told `end`; nothing it sends is recorded (issue: a disabled
node kept full access, and its update was aggregated)."""
import pytest

from jobs.models import Update
from nodes.models import Node
from nodes.services import node_set_enabled
from tests.conftest import BREAST_CANCER, node_auth
from tests.jobs.helpers import open_round, perturbed, row_counts, update_bytes
from tests.jobs.test_fl_api import HEARTBEAT, assert_error, evaluate, poll_while, upload

pytestmark = pytest.mark.django_db


@pytest.fixture
def disabled(started_job, nodes3):
    """site-a, selected for the open round 1 of a running job, then disabled."""
    creds = nodes3[0]
    node_set_enabled(node=creds.node, enabled=False)
    return creds


def auth(creds) -> dict:
    return {"Authorization": node_auth(creds)}


def test_its_heartbeat_is_refused_and_changes_nothing(client, disabled):
    before = Node.objects.get(pk=disabled.node.pk)
    response = client.post(HEARTBEAT, data={"version": "9", "datasets": [BREAST_CANCER], "resources": {}},
                           content_type="application/json", headers=auth(disabled))
    body = assert_error(response, 403, "node_disabled")
    assert "site-a" in body["message"]
    after = Node.objects.get(pk=disabled.node.pk)
    assert (after.status, after.last_heartbeat_at, after.version) == ("disabled", before.last_heartbeat_at,
                                                                     before.version)


def test_its_trainer_is_told_end(client, started_job, disabled):
    response = client.get(f"/api/v1/fl/jobs/{started_job.pk}/task", headers=auth(disabled))
    assert response.status_code == 200
    assert response.json() == {"action": "end", "reason": "node site-a is disabled by the portal's administrators"}


def test_a_waiting_long_poll_is_told_end_at_its_next_read(started_job, nodes3, monkeypatch):
    """A poll that began before the node was disabled (its round answered, so it waits)."""
    from jobs import fl_api

    monkeypatch.setattr(fl_api, "RECHECK_S", 0.2)
    creds = nodes3[0]
    Update.objects.create(round=open_round(started_job), node=creds.node, num_examples=1)  # answered: it waits
    response, seconds = poll_while(started_job, creds, lambda: node_set_enabled(node=creds.node, enabled=False))
    assert response is not None and response.json()["action"] == "end" and seconds < 2


def test_its_uploads_downloads_and_logs_are_refused_and_leave_nothing(client, started_job, disabled):
    rnd = open_round(started_job)
    before = row_counts()
    calls = [
        upload(client, rnd, disabled, update_bytes(perturbed(rnd, seed=1))),
        upload(client, rnd, disabled, update_bytes(perturbed(rnd, seed=1)), query="?wait=5"),
        evaluate(client, rnd, disabled, {"num_examples": 10, "metrics": {"loss": 0.1}}),
        client.post(f"/api/v1/fl/rounds/{rnd.pk}/cross-site", data={"results": []}, content_type="application/json",
                    headers=auth(disabled)),
        client.get(f"/api/v1/fl/jobs/{started_job.pk}/models/0", headers=auth(disabled)),
        client.get(f"/api/v1/fl/rounds/{rnd.pk}/models/site-b", headers=auth(disabled)),
        client.post(f"/api/v1/fl/jobs/{started_job.pk}/logs", data={"lines": ["hello"]},
                    content_type="application/json", headers=auth(disabled)),
    ]
    for response in calls:
        assert_error(response, 403, "node_disabled")
    assert row_counts() == before
    assert not Update.objects.filter(node=disabled.node).exists()


def test_enabled_again_it_takes_part_again(client, started_job, disabled):
    node_set_enabled(node=disabled.node, enabled=True)
    response = client.get(f"/api/v1/fl/jobs/{started_job.pk}/task", headers=auth(disabled))
    assert response.status_code == 200 and response.json()["action"] == "train"
