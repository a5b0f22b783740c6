"""The seam to the Celery tasks (jobs/services/dispatch.py): every name it sends is a
task of jobs.tasks, and a broker that refuses a task after commit does not turn a
request that committed into an error; the watchdog re-drives what it was for."""
import inspect
from datetime import timedelta

import pytest
from django.utils import timezone
from kombu.exceptions import OperationalError

from flportal.celery import app
from jobs import tasks
from jobs.models import Job
from jobs.services import dispatch
from jobs.services.watchdog import watchdog_sweep
from tests.conftest import BASE_SPEC, NODE_NAMES


def test_every_task_dispatch_sends_is_a_task_of_the_fl_server():
    source = inspect.getsource(dispatch)
    names = {name for name in dir(tasks) if getattr(getattr(tasks, name), "name", "").startswith("jobs.tasks.")}
    sent = {part.split('"')[1] for part in source.split("_on_commit(")[1:] if part.startswith('"')}
    assert sent and sent <= names, sent - names
    assert all(f"jobs.tasks.{name}" in app.tasks for name in sent)


@pytest.mark.django_db
def test_a_committed_start_answers_201_while_the_broker_is_down_and_the_watchdog_starts_it_later(
        api_client, nodes3, monkeypatch, django_capture_on_commit_callbacks, settings):
    sent = []

    def broker_down(name, args, **options):
        raise OperationalError("Error 111 connecting to 127.0.0.1:6379. Connection refused.")

    monkeypatch.setattr(dispatch, "send", broker_down)
    with django_capture_on_commit_callbacks(execute=True):
        response = api_client.post("/api/v1/jobs/", {"name": "bc", "nodes": list(NODE_NAMES), "spec": BASE_SPEC,
                                                     "start": True}, format="json")
    assert response.status_code == 201, response.content
    job = Job.objects.get(pk=response.json()["id"])
    assert job.status == Job.Status.QUEUED and Job.objects.count() == 1

    monkeypatch.setattr(dispatch, "send", lambda name, args, **options: sent.append((name, args)))
    stuck_since = timezone.now() - timedelta(seconds=settings.FLPORTAL_STUCK_AFTER_S + 1)
    Job.objects.filter(pk=job.pk).update(queued_at=stuck_since)
    with django_capture_on_commit_callbacks(execute=True):
        assert watchdog_sweep()["queued"] == [job.pk]
    assert sent == [("job_start_task", (job.pk,))]
