"""Each node's part in a job says how it ended: finished (its result was in the job's
last round), dropped (the job succeeded without it; since when), stopped (the job
failed or was cancelled while it took part), failed (it could not take part)."""
import pytest

from jobs.models import Job, JobNode
from jobs.services.flow import round_deadline
from jobs.services.jobs import job_cancel, job_node_fail, job_node_run_started
from tests.jobs.helpers import close, open_round, submit_eval, submit_train
from tests.jobs.test_services import time_travel_deadline

pytestmark = pytest.mark.django_db


def outcomes(job) -> dict[str, tuple[str, str]]:
    return {jn.node.name: (jn.status, jn.status_reason) for jn in job.job_nodes.select_related("node")}


def answer(rnd, nodes, tmp_path):
    for i, creds in enumerate(nodes):
        if rnd.kind == "train":
            submit_train(rnd, creds.node, tmp_path, seed=i, num_examples=10)
        else:
            submit_eval(rnd, creds.node, num_examples=10, metrics={"loss": 0.5})


def test_a_node_that_died_mid_job_ends_dropped_and_the_others_finished(make_started_job, nodes3, tmp_path):
    job = make_started_job(rounds=3, clients_required=2)
    for number in (1, 2, 3):
        train = open_round(job)
        answer(train, nodes3 if number == 1 else nodes3[:2], tmp_path)  # site-c dies after round 1
        if number > 1:
            time_travel_deadline(train)
            assert round_deadline(round_id=train.pk) is True
        close(train)
    evaluate = open_round(job)
    answer(evaluate, nodes3[:2], tmp_path)
    time_travel_deadline(evaluate)
    assert round_deadline(round_id=evaluate.pk) is True
    close(evaluate)

    job.refresh_from_db()
    assert job.status == Job.Status.SUCCEEDED
    assert outcomes(job) == {"site-a": ("finished", ""), "site-b": ("finished", ""),
                             "site-c": ("dropped", "no result since round 2 (train)")}


@pytest.mark.parametrize("ending", ["cancel", "deadline"])
def test_a_job_that_fails_or_is_cancelled_stops_every_node_that_took_part(make_started_job, nodes3, ending):
    job = make_started_job(rounds=2, clients_required=3)
    for creds in nodes3[:2]:
        job_node_run_started(job_node_id=JobNode.objects.get(job=job, node=creds.node).pk, run_id=f"run-{creds.node}")
    job_node_fail(job_node_id=JobNode.objects.get(job=job, node=nodes3[2].node).pk, reason="agent unreachable")
    if ending == "cancel":
        job_cancel(job=job)
    else:
        time_travel_deadline(open_round(job))
        round_deadline(round_id=open_round(job).pk)
    job.refresh_from_db()
    assert job.status == (Job.Status.CANCELLED if ending == "cancel" else Job.Status.FAILED)
    word = "cancelled" if ending == "cancel" else "failed"
    assert outcomes(job) == {"site-a": ("stopped", f"job {word}"), "site-b": ("stopped", f"job {word}"),
                             "site-c": ("failed", "agent unreachable")}
