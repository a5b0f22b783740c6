"""The watchdog's sweep: a job is never left running without a live path forward. It
re-drives through the FL server's own tasks (jobs/services/dispatch.py), and fails a
job through the coordinator's services."""
import logging
from datetime import timedelta

from django.conf import settings
from django.db import transaction
from django.utils import timezone

from jobs.models import Job, JobNode, Round, WatchdogClock
from jobs.services import dispatch
from jobs.services.job_events import job_event_record
from jobs.services.jobs import job_fail, job_node_trainer_lost
from jobs.services.rounds import rounds_overdue, rounds_stuck_aggregating
from nodes.models import Node
from nodes.services import nodes_mark_stale_offline

logger = logging.getLogger(__name__)


def watchdog_sweep() -> dict:
    """Mark silent nodes offline; re-drive rounds past their deadline and aggregating
    rounds that nobody aggregates (their lease expired: the worker died; never one
    whose worker still renews its lease, however long it runs); restart jobs stuck
    queued; ask for a new trainer where a node's agent runs none for its running job
    any more (the agent restarted); fail running jobs with no round in flight. Returns
    what it did, for logs and tests."""
    done = {"offline": [n.name for n in nodes_mark_stale_offline(listening_since=_listening_since())]}
    done["deadline"] = rounds_overdue()
    for round_id in done["deadline"]:
        dispatch.queue_round_deadline(round_id, countdown=0)
    _redrive_events(done["deadline"], "past its deadline and still open (its deadline task was lost or late)")
    done["aggregating"] = rounds_stuck_aggregating(grace_s=settings.FLPORTAL_AGGREGATION_LEASE_S)
    for round_id in done["aggregating"]:
        dispatch.queue_round_close(round_id)
    _redrive_events(done["aggregating"], "aggregating, and nobody is (its worker stopped, or its close was lost)")
    done["queued"] = _jobs_stuck_queued()
    for job_id in done["queued"]:
        dispatch.queue_job_start(job_id)
    done["trainers"] = _trainers_gone()
    for job_node_id in done["trainers"]:
        job_node_trainer_lost(job_node_id=job_node_id)
    done["failed"] = _fail_running_without_round()
    if any(done.values()):
        logger.info("watchdog: %s", done)
    return done


def _redrive_events(round_ids: list[int], why: str) -> None:
    """A `redrive` event on each round's job: the job page says why its round moved late."""
    for job_id, number, kind in Round.objects.filter(pk__in=round_ids).values_list("job_id", "number", "kind"):
        job_event_record(job_id=job_id, kind="redrive", data={"round": number, "kind": kind},
                         message=f"round {number} ({kind}) {why}: the watchdog drives it on")


def _listening_since():
    """Since when the watchdog has swept without a gap of more than two intervals (its
    own clock row): after a gap, from now."""
    now = timezone.now()
    with transaction.atomic():
        clock, created = WatchdogClock.objects.select_for_update().get_or_create(
            pk=1, defaults={"last_sweep_at": now, "listening_since": now})
        if not created:
            if (now - clock.last_sweep_at).total_seconds() > 2 * settings.WATCHDOG_INTERVAL_S:
                clock.listening_since = now
            clock.last_sweep_at = now
            clock.save(update_fields=["last_sweep_at", "listening_since"])
    return clock.listening_since


def _jobs_stuck_queued() -> list[int]:
    cutoff = timezone.now() - timedelta(seconds=settings.FLPORTAL_STUCK_AFTER_S)
    return list(Job.objects.filter(status=Job.Status.QUEUED, queued_at__lt=cutoff).values_list("pk", flat=True))


def _trainers_gone() -> list[int]:
    """Ids of the running JobNodes of running jobs whose node is online and, in a
    heartbeat received well after the trainer started (two heartbeat intervals, at
    least 5 s: one built before the start may arrive after it), reported no trainer for
    the job."""
    now = timezone.now()
    margin = timedelta(seconds=max(5.0, 2 * settings.FLPORTAL_HEARTBEAT_INTERVAL_S))
    candidates = (JobNode.objects.filter(job__status=Job.Status.RUNNING, status=JobNode.Status.RUNNING,
                                         node__status=Node.Status.ONLINE, node__running_jobs__isnull=False,
                                         run_started_at__lt=now - margin)
                  .values_list("pk", "job_id", "run_started_at", "node__last_heartbeat_at", "node__running_jobs"))
    return [pk for pk, job_id, started, heard, running in candidates
            if heard is not None and heard > started + margin and job_id not in running]


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
