"""The job lifecycle: create, launch, begin, succeed, fail, cancel, and each node's
part in a job. It knows nothing of the round lifecycle (what starts the first round
and what a closed round leads to is jobs/services/flow.py's); ending a job only fails
the rounds it had in flight."""
import logging

from django.db import transaction
from django.utils import timezone

from core.errors import ValidationFailed
from fl.networks import build_model
from jobs.models import Job, JobNode, ModelVersion, Round, Update
from jobs.services import artifacts, dispatch
from jobs.services.job_events import job_event_record
from jobs.services.metrics import round_keep_evaluation
from jobs.services.transitions import job_transition, round_transition
from jobs.services.validation import clean_job_spec
from nodes.models import Node
from nodes.selectors import nodes_usable_by

logger = logging.getLogger(__name__)


@transaction.atomic
def job_create(*, owner, name: str, node_names: list[str], spec: dict, description: str = "",
               cloned_from: Job | None = None) -> Job:
    """Create a draft job on the given nodes. Every parameter is validated now, against
    the catalog's schemas, not at start; raises ValidationFailed naming the field."""
    nodes = _nodes_for(node_names, owner)
    cleaned = clean_job_spec(spec, nodes)
    if not name or not name.strip():
        raise ValidationFailed("name: required", field="name")
    job = Job.objects.create(owner=owner, name=name.strip()[:200], description=description,
                             cloned_from=cloned_from, **cleaned)
    JobNode.objects.bulk_create([JobNode(job=job, node=n, dataset=job.dataset) for n in nodes])
    job_event_record(job=job, kind="created", actor=owner,
                     message=f"created by {owner} on {', '.join(n.name for n in nodes)}")
    return job


def _nodes_for(names: list[str], owner) -> list[Node]:
    """The named nodes, each usable by `owner` (its access list); a node it may not use
    is refused as if there were none, so its existence is not told."""
    if not names:
        raise ValidationFailed("nodes: choose at least one node", field="nodes")
    if len(set(names)) != len(names):
        raise ValidationFailed("nodes: a node is listed twice", field="nodes")
    nodes = list(nodes_usable_by(owner).filter(name__in=names))
    missing = set(names) - {n.name for n in nodes}
    if missing:
        raise ValidationFailed(f"nodes: no such node {sorted(missing)}", field="nodes")
    disabled = [n.name for n in nodes if not n.enabled]
    if disabled:
        raise ValidationFailed(f"nodes: disabled: {', '.join(disabled)}", field="nodes")
    return nodes


def job_launch(*, job: Job, actor=None) -> Job:
    """draft → queued, and queue the FL server's `job_start` once this commits."""
    with transaction.atomic():
        job = Job.objects.select_for_update(no_key=True).get(pk=job.pk)
        job_transition(job, Job.Status.QUEUED, actor=actor)
        dispatch.queue_job_start(job.pk)
    return job


def job_begin(*, job_id: int) -> tuple[Job, ModelVersion | None] | None:
    """In the caller's transaction: a queued job (locked) → running, with its round-0
    model stored; returns it and that model version. None when the job is not queued
    any more (idempotent). A job that cannot start (too few of its nodes online, an
    initial model that cannot be stored) is failed with the reason: (job, None)."""
    job = Job.objects.select_for_update(no_key=True).filter(pk=job_id, status=Job.Status.QUEUED).first()
    if job is None:
        return None
    online = job.job_nodes.filter(node__status=Node.Status.ONLINE, node__enabled=True).count()
    if online < job.min_clients:
        return job_fail(job=job, reason=f"only {online} of the job's nodes are online; "
                                        f"min_clients is {job.min_clients}"), None
    try:
        version = _model_version_create(job, 0, build_model(job.model, job.model_params, seed=job.seed).state_dict())
    except Exception as exc:  # a job that cannot start must not stay queued
        logger.exception("initial model of job %s", job.pk)
        return job_fail(job=job, reason=f"the initial model could not be stored: {exc}"), None
    job_transition(job, Job.Status.RUNNING)
    return job, version


def job_agents_start(*, job: Job) -> None:
    """Ask every node's agent to start the job's trainer, once this commits."""
    for job_node_id in job.job_nodes.values_list("pk", flat=True):
        dispatch.queue_agent_start_run(job_node_id)


def _model_version_create(job: Job, round_number: int, state: dict):
    path, sha256, size = artifacts.write_model(job.pk, round_number, state)
    return job.model_versions.create(round=round_number, path=path, sha256=sha256, bytes=size)


def job_succeed(*, job: Job, final_model) -> Job:
    """running → succeeded (called under the round's lock by round_close)."""
    job.final_model = final_model
    job.save(update_fields=["final_model"])
    taking_part = job.job_nodes.exclude(status=JobNode.Status.FAILED)
    silent = _nodes_silent_since(job)
    for node_id, (number, kind) in silent.items():
        taking_part.filter(node_id=node_id).update(status=JobNode.Status.DROPPED,
                                                   status_reason=f"no result since round {number} ({kind})")
    taking_part.exclude(node_id__in=silent).update(status=JobNode.Status.FINISHED)
    return job_transition(job, Job.Status.SUCCEEDED, reason=f"{job.rounds} rounds done")


def _nodes_silent_since(job: Job) -> dict[int, tuple[int, str]]:
    """{node id: (number, kind) of the first round it left unanswered} of the nodes whose
    last rounds got no result from them (round ids grow with time)."""
    answered = set(Update.objects.filter(round__job=job).values_list("node_id", "round_id"))
    silent: dict[int, tuple[int, str]] = {}
    for node_id, round_id, number, kind in (Round.selected.through.objects.filter(round__job=job)
                                            .order_by("round_id")
                                            .values_list("node_id", "round_id", "round__number", "round__kind")):
        if (node_id, round_id) in answered:
            silent.pop(node_id, None)
        else:
            silent.setdefault(node_id, (number, kind))
    return silent


def job_fail(*, job: Job, reason: str, actor=None) -> Job:
    """Fail a locked, non-terminal job: rounds in flight fail too, and the agents are
    told to stop its trainers."""
    return _job_end(job, Job.Status.FAILED, reason, actor)


def job_cancel(*, job: Job, actor=None, reason: str = "") -> Job:
    """Cancel a job that has not ended (draft, queued or running)."""
    with transaction.atomic():
        # the rounds in flight before the job: the order round_close and round_deadline lock them in
        list(Round.objects.select_for_update(no_key=True).filter(
            job_id=job.pk, status__in=[Round.Status.OPEN, Round.Status.AGGREGATING]))
        job = Job.objects.select_for_update(no_key=True).get(pk=job.pk)
        return _job_end(job, Job.Status.CANCELLED, reason or f"cancelled by {actor}", actor)


def _job_end(job: Job, status: str, reason: str, actor) -> Job:
    job_transition(job, status, reason=reason, actor=actor)
    job.job_nodes.filter(status__in=[JobNode.Status.SELECTED, JobNode.Status.RUNNING]).update(
        status=JobNode.Status.STOPPED, status_reason=f"job {status}")
    in_flight = job.rounds_set.select_for_update(no_key=True).filter(
        status__in=[Round.Status.OPEN, Round.Status.AGGREGATING])
    for rnd in in_flight:
        round_keep_evaluation(rnd)
        round_transition(rnd, Round.Status.FAILED, reason=f"job {status}")
    for job_node in job.job_nodes.exclude(agent_run_id=""):
        dispatch.queue_agent_stop_run(job_node.pk)
    return job


def job_node_run_started(*, job_node_id: int, run_id: str) -> None:
    with transaction.atomic():
        jn = _job_node_locked(job_node_id)
        jn.agent_run_id, jn.status, jn.run_started_at = run_id, JobNode.Status.RUNNING, timezone.now()
        jn.trainer_starts += 1
        jn.save(update_fields=["agent_run_id", "status", "run_started_at", "trainer_starts"])
        job_event_record(job=jn.job, kind="run_started", message=f"trainer started on {jn.node.name} (run {run_id})",
                         node=jn.node)


def job_node_fail(*, job_node_id: int, reason: str) -> None:
    """A node could not take part (its agent refused or was unreachable). Its rounds
    then follow the round policy at their deadlines."""
    with transaction.atomic():
        jn = _job_node_locked(job_node_id)
        jn.status, jn.status_reason = JobNode.Status.FAILED, reason[:2000]
        jn.save(update_fields=["status", "status_reason"])
        job_event_record(job=jn.job, kind="node_failed", message=f"{jn.node.name}: {reason}", node=jn.node)


#: Trainers asked of a node's agent for one job: the first, and one each time it is found
#: gone (its agent restarted, or it exited); after that the node is failed for the job.
MAX_TRAINER_STARTS = 4


def job_node_trainer_lost(*, job_node_id: int) -> None:
    """A running job's node whose agent no longer runs its trainer (it restarted, or the
    trainer exited): ask the agent for a new one, visibly (an event), so the node takes
    part again from the next round it is selected for; after MAX_TRAINER_STARTS the
    node is failed for the job instead (its rounds then follow the round policy)."""
    with transaction.atomic():
        jn = _job_node_locked(job_node_id)
        if jn.job.status != Job.Status.RUNNING or jn.status != JobNode.Status.RUNNING:
            return
        if jn.trainer_starts >= MAX_TRAINER_STARTS:
            job_node_fail(job_node_id=job_node_id, reason=f"its trainer stopped {jn.trainer_starts} times")
            return
        jn.agent_run_id, jn.status = "", JobNode.Status.SELECTED
        jn.save(update_fields=["agent_run_id", "status"])
        job_event_record(job=jn.job, kind="trainer_lost", node=jn.node,
                         message=f"{jn.node.name}: its agent runs no trainer for this job any more "
                                 "(restarted, or the trainer exited); asking it for a new one")
        dispatch.queue_agent_start_run(jn.pk)


def _job_node_locked(job_node_id: int) -> JobNode:
    """The JobNode, its row locked (not its job's or node's), with its job and node."""
    return (JobNode.objects.select_for_update(no_key=True, of=("self",)).select_related("job", "node")
            .get(pk=job_node_id))
