"""The FL server: Celery tasks driven by database state. Each takes ids, calls one
service, and is safe to run twice (acks_late: a killed worker's task runs again)."""
import logging

from celery import shared_task
from django.conf import settings
from django.db import InterfaceError, OperationalError

from jobs.models import JobNode
from jobs.services import flow
from jobs.services.jobs import job_node_fail, job_node_run_started
from jobs.services.watchdog import watchdog_sweep
from nodes.agent_client import AgentError, agent_start_run, agent_stop_run

logger = logging.getLogger(__name__)

#: The FL server's steps retry a database that is briefly away (a restart, a failover):
#: 1, 2, 4 ... s apart (at most 30 s, with jitter), six times, instead of leaving the job
#: to the watchdog's next sweep or failing it. Every step is idempotent.
TRANSIENT = {"autoretry_for": (OperationalError, InterfaceError), "retry_backoff": True, "retry_backoff_max": 30,
             "max_retries": 6}


@shared_task(acks_late=True, time_limit=300, **TRANSIENT)
def job_start_task(job_id: int) -> None:
    flow.job_start(job_id=job_id)


@shared_task(acks_late=True, time_limit=1800, **TRANSIENT)
def round_deadline_task(round_id: int) -> None:
    if flow.round_deadline(round_id=round_id):
        flow.round_close(round_id=round_id)


@shared_task(acks_late=True, time_limit=1800, **TRANSIENT)
def round_close_task(round_id: int) -> None:
    """Aggregate a round that moved to aggregating (its last result came in, or its
    deadline passed, or the watchdog re-drives it). Single-flight: a second delivery
    returns at once while the first holds the round's lease."""
    flow.round_close(round_id=round_id)


@shared_task(bind=True, acks_late=True, max_retries=4, time_limit=120)
def agent_start_run_task(self, job_node_id: int) -> None:
    """Ask a node's agent to start the job's trainer; after the retries, the node is
    marked failed for the job (its rounds then follow the round policy)."""
    job_node = JobNode.objects.select_related("node", "job").get(pk=job_node_id)
    if job_node.job.is_terminal or job_node.agent_run_id:
        return
    try:
        run = agent_start_run(job_node.node, job_id=job_node.job_id, dataset=job_node.dataset)
    except AgentError as exc:
        if self.request.retries < self.max_retries:
            raise self.retry(exc=exc, countdown=min(2 ** self.request.retries, 10)) from exc
        job_node_fail(job_node_id=job_node_id, reason=str(exc))
        return
    job_node_run_started(job_node_id=job_node_id, run_id=run["run_id"])


@shared_task(acks_late=True, time_limit=120)
def agent_stop_run_task(job_node_id: int) -> None:
    job_node = JobNode.objects.select_related("node").get(pk=job_node_id)
    try:
        agent_stop_run(job_node.node, job_node.agent_run_id)
    except AgentError as exc:  # the trainer also exits by itself on `end`
        logger.warning("stopping run %s: %s", job_node.agent_run_id, exc)


@shared_task(acks_late=False, time_limit=120, expires=settings.WATCHDOG_INTERVAL_S * 2)
def watchdog() -> None:
    """Periodic (beat): re-drive what is overdue, fail what cannot progress."""
    watchdog_sweep()
