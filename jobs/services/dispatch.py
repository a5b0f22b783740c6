"""The one seam between services and Celery: services queue the FL server's tasks
here, by name, once their transaction commits (a worker must never look for a row
that is not committed yet). Services never import jobs.tasks, and jobs.tasks imports
services, so the imports point one way; tests replace `send`.

Outside a transaction (the watchdog's sweep) a task is sent at once."""
import logging
from functools import partial

from celery import current_app
from django.db import transaction

TASKS = "jobs.tasks"
logger = logging.getLogger(__name__)


def send(name: str, args: tuple, **options) -> None:
    """Send the task `jobs.tasks.<name>` to the broker."""
    current_app.send_task(f"{TASKS}.{name}", args=args, **options)


def _on_commit(name: str, *args, **options) -> None:
    transaction.on_commit(partial(_send_queued, name, args, options))


def _send_queued(name: str, args: tuple, options: dict) -> None:
    """After commit: the request or task that committed must not fail now (a client that
    sees an error would retry what is already done). A task that could not be queued (the
    broker is down) is left to the watchdog, which re-drives every state it would have
    moved: a job queued, a round past its deadline or aggregating without a lease."""
    try:
        send(name, args, **options)  # looked up now, so that a test's replacement of `send` is used
    except Exception:
        logger.exception("could not queue %s%s; the watchdog re-drives what it was for", name, args)


def queue_job_start(job_id: int) -> None:
    _on_commit("job_start_task", job_id)


def queue_round_deadline(round_id: int, *, countdown: float) -> None:
    _on_commit("round_deadline_task", round_id, countdown=countdown)


def queue_round_close(round_id: int) -> None:
    _on_commit("round_close_task", round_id)


def queue_agent_start_run(job_node_id: int) -> None:
    _on_commit("agent_start_run_task", job_node_id)


def queue_agent_stop_run(job_node_id: int) -> None:
    _on_commit("agent_stop_run_task", job_node_id)
