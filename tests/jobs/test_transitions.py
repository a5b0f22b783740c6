"""The two state machines: every legal transition works and is recorded; every other
pair of states is refused and changes nothing."""
import itertools

import pytest

from jobs.exceptions import JobStateError, RoundStateError
from jobs.models import Job, JobEvent, Round
from jobs.services.transitions import JOB_TRANSITIONS, ROUND_TRANSITIONS, job_transition, round_transition

pytestmark = pytest.mark.django_db

J = Job.Status
R = Round.Status

# The specification (docs/STATES.md), written out here rather than read from the code.
LEGAL_JOB = {
    (J.DRAFT, J.QUEUED), (J.DRAFT, J.CANCELLED),
    (J.QUEUED, J.RUNNING), (J.QUEUED, J.FAILED), (J.QUEUED, J.CANCELLED),
    (J.RUNNING, J.SUCCEEDED), (J.RUNNING, J.FAILED), (J.RUNNING, J.CANCELLED),
}
ILLEGAL_JOB = sorted(set(itertools.product(J.values, J.values)) - LEGAL_JOB)
LEGAL_ROUND = {(R.OPEN, R.AGGREGATING), (R.OPEN, R.FAILED), (R.AGGREGATING, R.CLOSED), (R.AGGREGATING, R.FAILED)}
ILLEGAL_ROUND = sorted(set(itertools.product(R.values, R.values)) - LEGAL_ROUND)

# How to reach each job status from draft, through legal transitions only.
JOB_PATH = {
    J.DRAFT: [], J.QUEUED: [J.QUEUED], J.RUNNING: [J.QUEUED, J.RUNNING],
    J.SUCCEEDED: [J.QUEUED, J.RUNNING, J.SUCCEEDED], J.FAILED: [J.QUEUED, J.FAILED], J.CANCELLED: [J.CANCELLED],
}
ROUND_PATH = {R.OPEN: [], R.AGGREGATING: [R.AGGREGATING], R.CLOSED: [R.AGGREGATING, R.CLOSED], R.FAILED: [R.FAILED]}
STAMPS = ["queued_at", "started_at", "finished_at"]


def job_in(job, status):
    for step in JOB_PATH[status]:
        job_transition(job, step, reason="setup")
    job.refresh_from_db()
    assert job.status == status
    return job


def round_in(job, status):
    rnd = Round.objects.get(job=job, number=1, kind=Round.Kind.TRAIN)
    for step in ROUND_PATH[status]:
        round_transition(rnd, step, reason="setup")
    rnd.refresh_from_db()
    assert rnd.status == status
    return rnd


def test_the_code_allows_exactly_the_specified_transitions():
    assert {(a, b) for a, targets in JOB_TRANSITIONS.items() for b in targets} == LEGAL_JOB
    assert {(a, b) for a, targets in ROUND_TRANSITIONS.items() for b in targets} == LEGAL_ROUND
    assert len(ILLEGAL_JOB) == 36 - 8 and len(ILLEGAL_ROUND) == 16 - 4


@pytest.mark.parametrize(("old", "new"), sorted(LEGAL_JOB))
def test_legal_job_transition_moves_stamps_and_records(job, user, old, new):
    job = job_in(job, old)
    before = {name: getattr(job, name) for name in STAMPS}
    events_before = JobEvent.objects.filter(job=job).count()

    returned = job_transition(job, new, reason="because", actor=user)

    assert returned.status == new
    job.refresh_from_db()
    assert job.status == new and job.status_reason == "because"
    event = JobEvent.objects.filter(job=job).latest("id")
    assert JobEvent.objects.filter(job=job).count() == events_before + 1
    assert event.kind == "status" and event.actor == user
    assert event.data == {"from": old, "to": new, "reason": "because"}
    assert old in event.message and new in event.message and "because" in event.message
    stamp = "finished_at" if new in Job.TERMINAL else {J.QUEUED: "queued_at", J.RUNNING: "started_at"}[new]
    assert getattr(job, stamp) is not None
    assert {n: getattr(job, n) for n in STAMPS if n != stamp} == {n: v for n, v in before.items() if n != stamp}


@pytest.mark.parametrize(("old", "new"), ILLEGAL_JOB)
def test_illegal_job_transition_is_refused_and_changes_nothing(job, user, old, new):
    job = job_in(job, old)
    snapshot = Job.objects.filter(pk=job.pk).values().get()
    events_before = JobEvent.objects.filter(job=job).count()

    with pytest.raises(JobStateError) as info:
        job_transition(job, new, reason="nope", actor=user)

    assert info.value.code == "illegal_transition" and info.value.status == 409
    assert old in info.value.message and new in info.value.message
    assert job.status == old  # the in-memory object is untouched too
    assert Job.objects.filter(pk=job.pk).values().get() == snapshot
    assert JobEvent.objects.filter(job=job).count() == events_before


@pytest.mark.parametrize(("old", "new"), sorted(LEGAL_ROUND))
def test_legal_round_transition_moves_stamps_and_records(started_job, old, new):
    rnd = round_in(started_job, old)
    events_before = JobEvent.objects.filter(job=started_job).count()

    round_transition(rnd, new, reason="because")

    rnd.refresh_from_db()
    assert rnd.status == new and rnd.status_reason == "because"
    event = JobEvent.objects.filter(job=started_job).latest("id")
    assert JobEvent.objects.filter(job=started_job).count() == events_before + 1
    assert event.kind == f"round_{new}"
    assert event.data == {"round": 1, "kind": "train", "status": new, "reason": "because"}
    if new == R.AGGREGATING:
        assert rnd.aggregating_at is not None and rnd.closed_at is None
    else:
        assert rnd.closed_at is not None


@pytest.mark.parametrize(("old", "new"), ILLEGAL_ROUND)
def test_illegal_round_transition_is_refused_and_changes_nothing(started_job, old, new):
    rnd = round_in(started_job, old)
    snapshot = Round.objects.filter(pk=rnd.pk).values().get()
    events_before = JobEvent.objects.filter(job=started_job).count()

    with pytest.raises(RoundStateError) as info:
        round_transition(rnd, new, reason="nope")

    assert info.value.code == "illegal_transition" and info.value.status == 409
    assert rnd.status == old
    assert Round.objects.filter(pk=rnd.pk).values().get() == snapshot
    assert JobEvent.objects.filter(job=started_job).count() == events_before
