"""Recording a job's events that are not transitions (a leaf: the job and round
services both use it)."""
from jobs import events
from jobs.models import Job, JobEvent


def job_event_record(*, job: Job | None = None, job_id: int | None = None, kind: str, message: str,
                     actor=None, node=None, data=None) -> JobEvent:
    """Store a JobEvent of `job` (or `job_id`) and broadcast it after commit (logs,
    results accepted, rounds opened, node actions)."""
    event = JobEvent.objects.create(job_id=job.pk if job is not None else job_id, kind=kind, message=message,
                                    actor=actor, node=node, data=data or {})
    events.job_event(event)
    return event
