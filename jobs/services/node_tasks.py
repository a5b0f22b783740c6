"""What a node should do next: the task it pulls (docs/PROTOCOL.md section 1).

The task of a round is the same for every node selected for it, so it is built once when
the round opens and handed to the waiting long polls with their wake-up
(jobs/events.py `round_task_ready`); `task_for_node` builds it from the database for a
poll that was not waiting then."""
from django.conf import settings
from django.db.models import Max

from core.errors import NotFound
from jobs.models import Job, Round, Update
from jobs.services import artifacts
from nodes.models import Node

WAIT = {"action": "wait", "retry_after": 1.0}


def task_for_node(*, job_id: int, node: Node) -> dict:
    """The next thing a node should do for a job: train, evaluate or cross-validate an
    open round it was selected for and has not answered, wait, or end.
    Raises NotFound for a job the node does not take part in."""
    return node_task(job_id=job_id, node=node)[0]


def node_task(*, job_id: int, node: Node) -> tuple[dict, int]:
    """`task_for_node`, and the id of the job's latest round when it was read: a round's
    task that arrives later (a wake-up) for a round up to that one is not for this node
    any more (it answered it, or was not selected), since round ids grow.

    A disabled node is told `end` (read from the database each time: a long poll that
    began before the node was disabled learns it at its next read).

    One query when there is work (an open round implies a running job: ending a job
    fails its open rounds in the same transaction), two otherwise."""
    rnd = next(iter(Round.objects.select_related("job", "model_version")
                    .filter(job_id=job_id, status=Round.Status.OPEN, selected=node, selected__enabled=True)
                    .exclude(updates__node=node).order_by()[:1]), None)  # one open round per job at a time
    if rnd is not None:
        return round_task(rnd.job, rnd), rnd.pk
    job = next(iter(Job.objects.filter(pk=job_id, job_nodes__node=node).order_by()
                    .annotate(latest=Max("rounds_set__id"))
                    .values_list("status", "status_reason", "latest", "job_nodes__node__enabled")[:1]), None)
    if job is None:
        raise NotFound(f"node {node.name} takes no part in job {job_id}")
    status, reason, latest, enabled = job
    if status in Job.TERMINAL:
        return {"action": "end", "reason": f"job {status}" + (f": {reason}" if reason else "")}, latest or 0
    if not enabled:
        return {"action": "end", "reason": f"node {node.name} is disabled by the portal's administrators"}, latest or 0
    return dict(WAIT), latest or 0


def round_task(job: Job, rnd: Round) -> dict:
    """The task of an open round, for any node selected for it. A model version of at
    most FLPORTAL_INLINE_MODEL_BYTES travels inside the task (`weights`, base64), which
    saves every node a download request per round."""
    version = rnd.model_version
    action = "cross_validate" if rnd.kind == Round.Kind.CROSS_SITE else rnd.kind
    task = {
        "action": action, "job_id": job.pk, "round_id": rnd.pk, "round": rnd.number,
        "model_version": version.round, "sha256": version.sha256,
        "model_url": f"/api/v1/fl/jobs/{job.pk}/models/{version.round}",
        "deadline": rnd.deadline.isoformat(),
        "config": {
            "model": job.model, "model_params": job.model_params, "optimizer": job.optimizer,
            "optimizer_params": job.optimizer_params, "local_epochs": job.local_epochs,
            "batch_size": job.batch_size, "dataset": job.dataset, "val_fraction": job.val_fraction,
            "seed": job.seed, "strategy": job.strategy,
            "proximal_mu": float(job.strategy_params.get("mu", 0.0)),
        },
    }
    if rnd.kind == Round.Kind.TRAIN:
        task["evaluate_first"] = rnd.evaluate_first
    if rnd.kind == Round.Kind.CROSS_SITE:
        task["models"] = [{"source": source, "sha256": item.sha256,
                           "url": task["model_url"] if source == "global"
                           else f"/api/v1/fl/rounds/{rnd.pk}/models/{source}"}
                          for source, item in cross_site_sources(rnd)]
    elif version.bytes <= settings.FLPORTAL_INLINE_MODEL_BYTES:
        task["weights"] = artifacts.inline_base64(version.path, version.sha256)
    return task


def cross_site_sources(rnd: Round) -> list[tuple[str, object]]:
    """The models a cross-site round evaluates: ("global", its model version) and, for
    every node of the job, (node name, its last accepted train update)."""
    return [("global", rnd.model_version)] + sorted(local_models(rnd.job_id).items())


def local_models(job_id: int) -> dict[str, Update]:
    """{node name: its last accepted train update} of every node of the job that sent one."""
    latest = {}
    for update in (Update.objects.filter(round__job_id=job_id, round__kind=Round.Kind.TRAIN)
                   .select_related("node", "round").order_by("round__number")):
        latest[update.node.name] = update
    return latest
