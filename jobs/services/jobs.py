"""Job lifecycle: create, launch, start, finish, fail, cancel."""
import logging

from django.db import transaction

from flportal.errors import ValidationFailed
from jobs import events
from jobs.models import Job, JobEvent, JobNode, Round
from jobs.services import artifacts
from jobs.services.transitions import job_transition, round_transition
from jobs.services.validation import clean_job_spec
from nodes.models import Node

logger = logging.getLogger(__name__)


@transaction.atomic
def job_create(*, owner, name: str, node_names: list[str], spec: dict, description: str = "",
               cloned_from: Job | None = None) -> Job:
    """Create a draft job on the given nodes. Every parameter is validated now, against
    the catalog's schemas, not at start; raises ValidationFailed naming the field."""
    nodes = _nodes_for(node_names)
    cleaned = clean_job_spec(spec, nodes)
    if not name or not name.strip():
        raise ValidationFailed("name: required", field="name")
    job = Job.objects.create(owner=owner, name=name.strip()[:200], description=description,
                             cloned_from=cloned_from, **cleaned)
    JobNode.objects.bulk_create([JobNode(job=job, node=n, dataset=job.dataset) for n in nodes])
    _event(job, "created", f"created by {owner} on {', '.join(n.name for n in nodes)}", actor=owner)
    return job


def _nodes_for(names: list[str]) -> list[Node]:
    if not names:
        raise ValidationFailed("nodes: choose at least one node", field="nodes")
    if len(set(names)) != len(names):
        raise ValidationFailed("nodes: a node is listed twice", field="nodes")
    nodes = list(Node.objects.filter(name__in=names))
    missing = set(names) - {n.name for n in nodes}
    if missing:
        raise ValidationFailed(f"nodes: no such node {sorted(missing)}", field="nodes")
    disabled = [n.name for n in nodes if not n.enabled]
    if disabled:
        raise ValidationFailed(f"nodes: disabled: {', '.join(disabled)}", field="nodes")
    return nodes


def job_launch(*, job: Job, actor=None) -> Job:
    """draft → queued, and queue the FL server's `job_start` once this commits."""
    from jobs.tasks import job_start_task

    with transaction.atomic():
        job = Job.objects.select_for_update(no_key=True).get(pk=job.pk)
        job_transition(job, Job.Status.QUEUED, actor=actor)
        job_start_task.delay_on_commit(job.pk)
    return job


def job_start(*, job_id: int) -> Job | None:
    """queued → running: check enough nodes are online, store the round-0 model, open
    round 1 and ask every node's agent to start a trainer. Idempotent: a job that is not
    queued any more is left alone. A job that cannot start is failed with the reason."""
    from jobs.fl.networks import build_model
    from jobs.services.rounds import RoundCannotOpen, round_open
    from jobs.tasks import agent_start_run_task

    with transaction.atomic():
        job = Job.objects.select_for_update(no_key=True).filter(pk=job_id, status=Job.Status.QUEUED).first()
        if job is None:
            return None
        online = job.job_nodes.filter(node__status=Node.Status.ONLINE, node__enabled=True).count()
        if online < job.min_clients:
            return job_fail(job=job, reason=f"only {online} of the job's nodes are online; min_clients is {job.min_clients}")
        try:
            version = _model_version_create(job, 0, build_model(job.model, job.model_params, seed=job.seed).state_dict())
        except Exception as exc:  # a job that cannot start must not stay queued
            logger.exception("initial model of job %s", job.pk)
            return job_fail(job=job, reason=f"the initial model could not be stored: {exc}")
        job_transition(job, Job.Status.RUNNING)
        try:
            round_open(job=job, number=1, kind=Round.Kind.TRAIN, model_version=version)
        except RoundCannotOpen as exc:
            return job_fail(job=job, reason=str(exc))
        for job_node_id in job.job_nodes.values_list("pk", flat=True):
            agent_start_run_task.delay_on_commit(job_node_id)
    return job


def _model_version_create(job: Job, round_number: int, state: dict):
    path, sha256, size = artifacts.write_model(job.pk, round_number, state)
    return job.model_versions.create(round=round_number, path=path, sha256=sha256, bytes=size)


def job_succeed(*, job: Job, final_model) -> Job:
    """running → succeeded (called under the round's lock by round_close)."""
    job.final_model = final_model
    job.save(update_fields=["final_model"])
    job.job_nodes.exclude(status=JobNode.Status.FAILED).update(status=JobNode.Status.FINISHED)
    return job_transition(job, Job.Status.SUCCEEDED, reason=f"{job.rounds} rounds done")


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
    from jobs.services.rounds import round_keep_evaluation
    from jobs.tasks import agent_stop_run_task

    job_transition(job, status, reason=reason, actor=actor)
    for rnd in job.rounds_set.select_for_update(no_key=True).filter(status__in=[Round.Status.OPEN, Round.Status.AGGREGATING]):
        round_keep_evaluation(rnd)
        round_transition(rnd, Round.Status.FAILED, reason=f"job {status}")
    for job_node in job.job_nodes.exclude(agent_run_id=""):
        agent_stop_run_task.delay_on_commit(job_node.pk)
    return job


def _event(job: Job, kind: str, message: str, *, actor=None, node=None, data=None) -> JobEvent:
    event = JobEvent.objects.create(job=job, kind=kind, message=message, actor=actor, node=node, data=data or {})
    events.job_event(event)
    return event


def job_event_record(*, job: Job, kind: str, message: str, actor=None, node=None, data=None) -> JobEvent:
    """Store and broadcast a JobEvent that is not a transition (logs, node actions)."""
    return _event(job, kind, message, actor=actor, node=node, data=data)


def job_node_run_started(*, job_node_id: int, run_id: str) -> None:
    with transaction.atomic():
        jn = JobNode.objects.select_for_update(no_key=True, of=("self",)).select_related("job", "node").get(pk=job_node_id)
        jn.agent_run_id, jn.status = run_id, JobNode.Status.RUNNING
        jn.save(update_fields=["agent_run_id", "status"])
        _event(jn.job, "run_started", f"trainer started on {jn.node.name} (run {run_id})", node=jn.node)


def job_node_fail(*, job_node_id: int, reason: str) -> None:
    """A node could not take part (its agent refused or was unreachable). Its rounds
    then follow the round policy at their deadlines."""
    with transaction.atomic():
        jn = JobNode.objects.select_for_update(no_key=True, of=("self",)).select_related("job", "node").get(pk=job_node_id)
        jn.status, jn.status_reason = JobNode.Status.FAILED, reason[:2000]
        jn.save(update_fields=["status", "status_reason"])
        _event(jn.job, "node_failed", f"{jn.node.name}: {reason}", node=jn.node)
