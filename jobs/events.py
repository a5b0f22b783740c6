"""The only place that sends job events: to browsers (groups `job-<id>` and
`user-<owner>-jobs`) and to trainers waiting in a long poll (`fl-job-<id>`), after commit.
Every event here was stored first (a JobEvent or MetricPoint row)."""
from core.broadcast import broadcast_on_commit
from jobs.long_poll import job_group


def _job_groups(job_id: int, owner_id: int | None = None) -> list[str]:
    groups = [f"job-{job_id}"]
    if owner_id is not None:
        groups.append(f"user-{owner_id}-jobs")
    return groups


def _stored(event) -> dict:
    return {"id": event.pk, "kind": event.kind, "message": event.message, "data": event.data,
            "node": event.node.name if event.node_id else None, "at": event.created_at.isoformat()}


def job_status_changed(job, event) -> None:
    payload = {**_stored(event), "job": job.pk, "status": job.status, "reason": job.status_reason}
    broadcast_on_commit(_job_groups(job.pk, job.owner_id), payload)
    if job.is_terminal:
        trainers_wake(job.pk)  # their task is now `end`


def round_changed(rnd, event) -> None:
    broadcast_on_commit(_job_groups(rnd.job_id), {**_stored(event), "job": rnd.job_id})


def job_event(event) -> None:
    """Any other stored JobEvent (update accepted, log lines, node dropped...)."""
    broadcast_on_commit(_job_groups(event.job_id), {**_stored(event), "job": event.job_id})


def metrics_recorded(job_id: int, round_number: int, phase: str, node: str | None, values: dict) -> None:
    broadcast_on_commit(_job_groups(job_id), {"kind": "metrics", "job": job_id, "round": round_number,
                                              "phase": phase, "node": node, "values": values})


def trainers_wake(job_id: int) -> None:
    """Wake trainers long-polling for this job's next task: they read it again
    (jobs/fl_api.py `task`, jobs/long_poll.py)."""
    broadcast_on_commit([job_group(job_id)], {"job": job_id}, message_type="fl.wake")


def round_task_ready(job_id: int, task: dict, node_ids: list[int]) -> None:
    """A round opened: hand its task to the long polls of the nodes selected for it,
    which answer it without a query."""
    broadcast_on_commit([job_group(job_id)], {"job": job_id, "task": task, "nodes": node_ids},
                        message_type="fl.wake")
