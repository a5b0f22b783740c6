"""A site whose agent restarted rejoins the running job: its heartbeats say which jobs
it runs a trainer for, and the watchdog asks it for a new trainer for a running job it
no longer runs one for, with an event; after MAX_TRAINER_STARTS the node is failed for
the job instead of being asked forever."""
from datetime import timedelta

import pytest
from django.utils import timezone

from jobs.models import JobEvent, JobNode
from jobs.services import dispatch
from jobs.services.jobs import MAX_TRAINER_STARTS, job_node_run_started
from jobs.services.watchdog import watchdog_sweep
from nodes.models import Node
from nodes.services import node_heartbeat
from tests.conftest import BREAST_CANCER, node_auth

pytestmark = pytest.mark.django_db


@pytest.fixture
def sent(monkeypatch):
    calls = []
    monkeypatch.setattr(dispatch, "send", lambda name, args, **options: calls.append((name, args)))
    return calls


def sweep(django_capture_on_commit_callbacks) -> dict:
    with django_capture_on_commit_callbacks(execute=True):
        return watchdog_sweep()


def running(job, creds, *, started_ago: float = 60) -> JobNode:
    jn = JobNode.objects.get(job=job, node=creds.node)
    job_node_run_started(job_node_id=jn.pk, run_id=f"run-{jn.pk}")
    JobNode.objects.filter(pk=jn.pk).update(run_started_at=timezone.now() - timedelta(seconds=started_ago))
    return jn


def beat(creds, running_jobs):
    node_heartbeat(node=Node.objects.get(pk=creds.node.pk), version="1", datasets=[BREAST_CANCER], resources={},
                   running_jobs=running_jobs)


def test_a_restarted_agent_gets_a_new_trainer_for_the_running_job(started_job, nodes3, sent,
                                                                  django_capture_on_commit_callbacks):
    a, b = running(started_job, nodes3[0]), running(started_job, nodes3[1])
    beat(nodes3[0], [])  # site-a's agent restarted: it runs nothing
    beat(nodes3[1], [started_job.pk])

    done = sweep(django_capture_on_commit_callbacks)

    assert done["trainers"] == [a.pk]
    assert sent == [("agent_start_run_task", (a.pk,))]
    a.refresh_from_db()
    assert (a.status, a.agent_run_id) == (JobNode.Status.SELECTED, "")
    event = JobEvent.objects.get(job=started_job, kind="trainer_lost")
    assert event.node == nodes3[0].node and "asking it for a new one" in event.message
    assert JobNode.objects.get(pk=b.pk).status == JobNode.Status.RUNNING
    assert sweep(django_capture_on_commit_callbacks)["trainers"] == []  # asked once, not at every sweep


def test_no_new_trainer_is_asked_for_too_early_or_without_a_report(started_job, nodes3, sent,
                                                                   django_capture_on_commit_callbacks):
    running(started_job, nodes3[0], started_ago=1)  # a heartbeat built before the start may still arrive
    beat(nodes3[0], [])
    running(started_job, nodes3[1])
    beat(nodes3[1], None)  # an agent that does not report its runs
    assert sweep(django_capture_on_commit_callbacks)["trainers"] == []
    assert sent == []


def test_a_trainer_that_keeps_stopping_fails_the_node_for_the_job(started_job, nodes3, sent,
                                                                  django_capture_on_commit_callbacks):
    jn = JobNode.objects.get(job=started_job, node=nodes3[0].node)
    for _ in range(MAX_TRAINER_STARTS):
        running(started_job, nodes3[0])
        beat(nodes3[0], [])
        sweep(django_capture_on_commit_callbacks)
    jn.refresh_from_db()
    assert jn.status == JobNode.Status.FAILED and f"stopped {MAX_TRAINER_STARTS} times" in jn.status_reason
    assert [name for name, _ in sent].count("agent_start_run_task") == MAX_TRAINER_STARTS - 1


@pytest.mark.parametrize("runs", ["1", [True], ["1"], [0], list(range(1001))])
def test_a_malformed_runs_report_is_refused(client, nodes3, runs):
    response = client.post("/api/v1/fl/heartbeat", data={"version": "1", "datasets": [], "resources": {},
                                                         "runs": runs},
                           content_type="application/json", headers={"Authorization": node_auth(nodes3[0])})
    assert response.status_code == 400 and response.json()["error"] == "invalid_update"
    assert Node.objects.get(pk=nodes3[0].node.pk).running_jobs is None
