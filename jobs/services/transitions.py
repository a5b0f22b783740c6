"""The two state machines. Nothing else writes a job's or a round's status."""
from django.utils import timezone

from jobs import events
from jobs.exceptions import JobStateError, RoundStateError
from jobs.models import Job, JobEvent, Round

JOB_TRANSITIONS = {
    Job.Status.DRAFT: {Job.Status.QUEUED, Job.Status.CANCELLED},
    Job.Status.QUEUED: {Job.Status.RUNNING, Job.Status.FAILED, Job.Status.CANCELLED},
    Job.Status.RUNNING: {Job.Status.SUCCEEDED, Job.Status.FAILED, Job.Status.CANCELLED},
}
ROUND_TRANSITIONS = {
    Round.Status.OPEN: {Round.Status.AGGREGATING, Round.Status.FAILED},
    Round.Status.AGGREGATING: {Round.Status.CLOSED, Round.Status.FAILED},
}
_JOB_TIMESTAMPS = {Job.Status.QUEUED: "queued_at", Job.Status.RUNNING: "started_at"}


def job_transition(job: Job, new: str, *, reason: str = "", actor=None) -> Job:
    """Move a (locked) job to `new`, stamp it, store a JobEvent, broadcast after commit.
    Raises JobStateError for a transition the state machine does not allow."""
    if new not in JOB_TRANSITIONS.get(job.status, set()):
        raise JobStateError(f"job {job.pk} cannot go from {job.status} to {new}")
    old, job.status, job.status_reason = job.status, new, reason
    fields = ["status", "status_reason"]
    stamp = "finished_at" if new in Job.TERMINAL else _JOB_TIMESTAMPS.get(new)
    if stamp:
        setattr(job, stamp, timezone.now())
        fields.append(stamp)
    job.save(update_fields=fields)
    message = f"{old} → {new}" + (f": {reason}" if reason else "")
    event = JobEvent.objects.create(job=job, kind="status", message=message, actor=actor,
                                    data={"from": old, "to": new, "reason": reason})
    events.job_status_changed(job, event)
    return job


def round_transition(rnd: Round, new: str, *, reason: str = "") -> Round:
    """Move a (locked) round to `new`. Raises RoundStateError when not allowed."""
    if new not in ROUND_TRANSITIONS.get(rnd.status, set()):
        raise RoundStateError(f"round {rnd.number} ({rnd.kind}) cannot go from {rnd.status} to {new}")
    rnd.status, rnd.status_reason = new, reason
    fields = ["status", "status_reason"]
    if new == Round.Status.AGGREGATING:
        rnd.aggregating_at = timezone.now()
        fields.append("aggregating_at")
    elif new in (Round.Status.CLOSED, Round.Status.FAILED):
        rnd.closed_at = timezone.now()
        fields.append("closed_at")
    rnd.save(update_fields=fields)
    message = f"round {rnd.number} ({rnd.kind}) {new}" + (f": {reason}" if reason else "")
    event = JobEvent.objects.create(job_id=rnd.job_id, kind=f"round_{new}", message=message,
                                    data={"round": rnd.number, "kind": rnd.kind, "status": new, "reason": reason})
    events.round_changed(rnd, event)
    return rnd
