"""The one seam between services and Celery: services queue the FL server's tasks
here, by name, once their transaction commits (a worker must never look for a row
that is not committed yet). Services never import jobs.tasks, and jobs.tasks imports
services, so the imports point one way; tests replace `send`.

Outside a transaction (the watchdog's sweep) a task is sent at once."""
from functools import partial

from celery import current_app
from django.db import transaction

TASKS = "jobs.tasks"


def send(name: str, args: tuple, **options) -> None:
    """Send the task `jobs.tasks.<name>` to the broker."""
    current_app.send_task(f"{TASKS}.{name}", args=args, **options)


def _on_commit(name: str, *args, **options) -> None:
    transaction.on_commit(partial(_send_queued, name, args, options))


def _send_queued(name: str, args: tuple, options: dict) -> None:
    send(name, args, **options)  # looked up now, so that a test's replacement of `send` is used


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
