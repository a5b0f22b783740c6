"""The portal's artifact storage failing is not blamed on the sites: an upload it cannot
store is answered 503 `storage_unavailable` (the trainer retries), recorded as an event,
and a round that fails for it says the storage failed; once the storage is back, the
same upload is accepted."""
import errno

import pytest

from jobs.models import Job, JobEvent, Update
from jobs.services import artifacts
from jobs.services.flow import round_deadline
from tests.jobs.helpers import open_round, perturbed, update_bytes
from tests.jobs.test_fl_api import assert_error, upload
from tests.jobs.test_services import time_travel_deadline

pytestmark = pytest.mark.django_db


@pytest.fixture
def read_only_storage(monkeypatch):
    def refuse(job_id):
        raise OSError(errno.EROFS, "Read-only file system")

    monkeypatch.setattr(artifacts, "upload_tempfile", refuse)
    return monkeypatch


def test_an_upload_the_storage_refuses_is_a_503_and_an_event_not_the_nodes_fault(client, started_job, nodes3,
                                                                                  read_only_storage):
    rnd = open_round(started_job)
    body = update_bytes(perturbed(rnd, seed=1))
    answer = assert_error(upload(client, rnd, nodes3[0], body), 503, "storage_unavailable")
    assert "Read-only file system" in answer["message"]
    assert not Update.objects.exists()
    event = JobEvent.objects.get(job=started_job, kind="storage_failed")
    assert event.node == nodes3[0].node and event.data["round"] == 1 and "Read-only" in event.data["error"]

    read_only_storage.undo()  # the storage is back: the trainer's retry is accepted
    assert upload(client, rnd, nodes3[0], body).status_code == 201


def test_a_round_that_fails_for_the_storage_names_the_storage(client, make_started_job, nodes3, read_only_storage):
    job = make_started_job(clients_required=2)
    rnd = open_round(job)
    for i, creds in enumerate(nodes3):
        assert_error(upload(client, rnd, creds, update_bytes(perturbed(rnd, seed=i))), 503, "storage_unavailable")
    time_travel_deadline(rnd)
    assert round_deadline(round_id=rnd.pk) is False
    job.refresh_from_db()
    assert job.status == Job.Status.FAILED
    assert job.status_reason.startswith("the portal's artifact storage failed ([Errno 30] Read-only file system)")
