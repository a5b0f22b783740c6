"""The watchdog's sweep: a job is never left running without a live path forward. It
re-drives through the FL server's own tasks (jobs/services/dispatch.py), and fails a
job through the coordinator's services."""
import logging
from datetime import timedelta

from django.conf import settings
from django.db import transaction
from django.utils import timezone

from jobs.models import Job, Round
from jobs.services import dispatch
from jobs.services.jobs import job_fail
from jobs.services.rounds import rounds_overdue, rounds_stuck_aggregating
from nodes.services import nodes_mark_stale_offline

logger = logging.getLogger(__name__)


def watchdog_sweep() -> dict:
    """Mark silent nodes offline; re-drive rounds past their deadline and aggregating
    rounds that nobody aggregates (their lease expired: the worker died; never one
    whose worker still renews its lease, however long it runs); restart jobs stuck
    queued; fail running jobs with no round in flight. Returns what it did, for logs
    and tests."""
    done = {"offline": [n.name for n in nodes_mark_stale_offline()]}
    done["deadline"] = rounds_overdue()
    for round_id in done["deadline"]:
        dispatch.queue_round_deadline(round_id, countdown=0)
    done["aggregating"] = rounds_stuck_aggregating(grace_s=settings.FLPORTAL_AGGREGATION_LEASE_S)
    for round_id in done["aggregating"]:
        dispatch.queue_round_close(round_id)
    done["queued"] = _jobs_stuck_queued()
    for job_id in done["queued"]:
        dispatch.queue_job_start(job_id)
    done["failed"] = _fail_running_without_round()
    if any(done.values()):
        logger.info("watchdog: %s", done)
    return done


def _jobs_stuck_queued() -> list[int]:
    cutoff = timezone.now() - timedelta(seconds=settings.FLPORTAL_STUCK_AFTER_S)
    return list(Job.objects.filter(status=Job.Status.QUEUED, queued_at__lt=cutoff).values_list("pk", flat=True))


def _fail_running_without_round() -> list[int]:
    in_flight = Round.objects.filter(status__in=[Round.Status.OPEN, Round.Status.AGGREGATING]).values("job_id")
    orphans = Job.objects.filter(status=Job.Status.RUNNING).exclude(pk__in=in_flight)
    failed = []
    for job_id in orphans.values_list("pk", flat=True):
        with transaction.atomic():
            job = Job.objects.select_for_update(no_key=True).filter(pk=job_id, status=Job.Status.RUNNING).first()
            if job and not job.rounds_set.filter(status__in=[Round.Status.OPEN, Round.Status.AGGREGATING]).exists():
                job_fail(job=job, reason="no round in flight and none can be opened (watchdog)")
                failed.append(job_id)
    return failed
