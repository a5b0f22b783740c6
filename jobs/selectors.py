"""Reads of the FL domain, shaped for pages and APIs without N+1 queries."""
from collections import defaultdict

from django.db.models import Prefetch

from flportal.errors import NotFound
from jobs.models import Job, JobEvent, MetricPoint, ModelVersion, Round, Update


def job_list_for_user(user, *, status: str | None = None):
    jobs = Job.objects.filter(owner=user).select_related("owner", "final_model")
    return jobs.filter(status=status) if status else jobs


def job_get_for_user(user, job_id: int) -> Job:
    """The user's job, or NotFound: another user's job is indistinguishable from none."""
    job = Job.objects.filter(pk=job_id, owner=user).select_related("owner", "final_model").first()
    if job is None:
        raise NotFound(f"no job {job_id}")
    return job


def job_rounds(job: Job) -> list[Round]:
    updates = Prefetch("updates", queryset=Update.objects.select_related("node").order_by("node__name"))
    rounds = list(job.rounds_set.select_related("model_version", "result_version")
                  .prefetch_related("selected", "dropped", updates))
    aggregates = _aggregate_metrics_by_round(job)
    phases = {Round.Kind.TRAIN: "fit", Round.Kind.EVALUATE: "eval"}
    for rnd in rounds:
        rnd.aggregate = aggregates.get((rnd.number, phases.get(rnd.kind)), {})
    return rounds


def _aggregate_metrics_by_round(job: Job) -> dict:
    out = defaultdict(dict)
    for rnd, phase, name, value in MetricPoint.objects.filter(job=job, node__isnull=True).values_list(
            "round", "phase", "name", "value"):
        out[(rnd, phase)][name] = value
    return out


def job_metrics(job: Job, *, name: str | None = None, phase: str | None = None, node: str | None = None):
    points = MetricPoint.objects.filter(job=job).select_related("node")
    if name:
        points = points.filter(name=name)
    if phase:
        points = points.filter(phase=phase)
    if node == "aggregate":
        points = points.filter(node__isnull=True)
    elif node:
        points = points.filter(node__name=node)
    return points


def job_events(job: Job, *, after_id: int = 0, limit: int = 500):
    return JobEvent.objects.filter(job=job, id__gt=after_id).select_related("node", "actor")[:limit]


def job_model_version(job: Job, round_number: int) -> ModelVersion:
    version = job.model_versions.filter(round=round_number).first()
    if version is None:
        raise NotFound(f"job {job.pk} has no model version {round_number}")
    return version


def job_cross_site_matrix(job: Job) -> dict:
    """{"sources": [...], "evaluators": [...], "metrics": {name: [[value per evaluator]
    per source]}, "num_examples": [[n per evaluator] per source]} (None where a cell is
    missing)."""
    rows = list(job.cross_site_results.select_related("evaluator"))
    sources = sorted({r.source for r in rows}, key=lambda s: (s != "global", s))
    evaluators = sorted({r.evaluator.name for r in rows})
    cells = {(r.name, r.source, r.evaluator.name): r.value for r in rows}
    examples = {(r.source, r.evaluator.name): r.num_examples for r in rows}
    names = sorted({r.name for r in rows})
    return {
        "sources": sources, "evaluators": evaluators,
        "metrics": {name: [[cells.get((name, s, e)) for e in evaluators] for s in sources] for name in names},
        "num_examples": [[examples.get((s, e)) for e in evaluators] for s in sources],
    }
