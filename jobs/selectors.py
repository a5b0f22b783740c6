"""Reads of the FL domain, shaped for pages and APIs without N+1 queries."""
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass

from django.db.models import Count, OuterRef, Prefetch, Subquery
from django.db.models.functions import Coalesce

from core.errors import NotFound
from jobs.models import Job, JobEvent, JobNode, MetricPoint, ModelVersion, Round, Update
from nodes.models import Node


def job_list_for_user(user, *, status: str | None = None):
    jobs = Job.objects.filter(owner=user).select_related("owner", "final_model")
    return jobs.filter(status=status) if status else jobs


def job_get_for_user(user, job_id: int) -> Job:
    """The user's job, or NotFound: another user's job is indistinguishable from none."""
    job = Job.objects.filter(pk=job_id, owner=user).select_related("owner", "final_model").first()
    if job is None:
        raise NotFound(f"no job {job_id}")
    return job


def job_rounds(job: Job):
    """The job's rounds in order (by number, then as opened: train, evaluate,
    cross-site), lazily, so a caller can slice a page; each with its versions, selected and dropped nodes and
    updates prefetched. Attach the aggregate metrics to the page with
    `rounds_with_metrics`."""
    updates = Prefetch("updates", queryset=Update.objects.select_related("node").only(
        "id", "round_id", "num_examples", "sha256", "bytes", "received_at", "node__id", "node__name")
        .order_by("node__name"))
    return (job.rounds_set.select_related("model_version", "result_version")
            .prefetch_related(Prefetch("selected", queryset=_node_names()), Prefetch("dropped", queryset=_node_names()),
                              updates))


def _node_names():
    """Nodes with only what round lists show, their names (not their datasets and
    resources JSON, which would be parsed once per row)."""
    return Node.objects.only("id", "name")


def rounds_with_metrics(job: Job, rounds) -> list[Round]:
    """`rounds` (a page of `job_rounds`) as a list, each with `aggregate`: {name: value}
    of the job's aggregate metrics of its number and of the phase of its kind (train:
    fit, evaluate: eval; none for a cross-site round), and `evaluation`: for a train
    round, the eval aggregate of the model it produced. One query for the whole page."""
    rounds = list(rounds)
    aggregates = _aggregate_metrics_by_round(job, {rnd.number for rnd in rounds}) if rounds else {}
    _attach_aggregates(rounds, lambda number, phase: aggregates.get((number, phase), {}))
    return rounds


def _attach_aggregates(rounds: list[Round], at) -> None:
    """Set each round's `aggregate` and `evaluation` from `at(number, phase)` ->
    {name: value}. A train round's model is evaluated on the way into the next round
    (or in the last evaluate round), under the train round's number: that evaluation,
    once it is in."""
    for rnd in rounds:
        rnd.aggregate = at(rnd.number, rnd.metric_phase)
        rnd.evaluation = at(rnd.number, MetricPoint.Phase.EVAL) if rnd.kind == Round.Kind.TRAIN else {}


def _aggregate_metrics_by_round(job: Job, numbers: set[int]) -> dict:
    """{(round, phase): {name: value}} of the job's aggregate points (node null) of the
    round numbers in `numbers`."""
    out = defaultdict(dict)
    points = MetricPoint.objects.filter(job=job, node__isnull=True, round__in=numbers)
    for rnd, phase, name, value in points.values_list("round", "phase", "name", "value"):
        out[(rnd, phase)][name] = value
    return out


def job_metrics(job: Job, *, name: str | None = None, phase: str | None = None, node: str | None = None):
    """The job's metric points in order (round, then recording), filtered by `name`,
    `phase` and `node` (a node's name, or "aggregate" for the points of no node)."""
    points = (MetricPoint.objects.filter(job=job).select_related("node")
              .only("round", "phase", "name", "value", "created_at", "node__name"))
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


def job_events_latest(job: Job, *, limit: int = 100) -> list[JobEvent]:
    """The job's last `limit` events, oldest first."""
    events = JobEvent.objects.filter(job=job).select_related("node", "actor").order_by("-id")[:limit]
    return list(events)[::-1]


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


@dataclass
class JobPage:
    """What the job page renders: its nodes, its last rounds (of `rounds_total`), the
    per-round series of the aggregate metrics for the chart, and its last events."""

    nodes: list[JobNode]
    rounds: list[Round]
    rounds_total: int
    series: dict[str, dict[str, list[list[float]]]]
    events: list[JobEvent]


def job_page(job: Job, *, last_rounds: int, last_events: int, metric_names: Iterable[str]) -> JobPage:
    """The job page's history in a constant number of queries, whatever the job's size:
    the last `last_rounds` rounds with their updates and selected nodes counted in the
    database (not loaded), the aggregate metrics named `metric_names` of every round as
    compact series, and the last `last_events` events. The series are by round number
    and phase, so they do not depend on which kinds of rounds a job has."""
    series = job_metric_series(job, names=metric_names)
    values = {phase: {name: dict(pairs) for name, pairs in by_name.items()} for phase, by_name in series.items()}
    rounds = _last_round_summaries(job, last_rounds)
    _attach_aggregates(rounds, lambda number, phase: _at_round(values.get(phase, {}), number))
    return JobPage(nodes=list(job.job_nodes.select_related("node")), rounds=rounds,
                   rounds_total=job.rounds_set.count(), series=series,
                   events=job_events_latest(job, limit=last_events))


def _at_round(by_name: dict[str, dict[int, float]], number: int) -> dict[str, float]:
    return {name: by_round[number] for name, by_round in by_name.items() if number in by_round}


def _last_round_summaries(job: Job, last: int) -> list[Round]:
    """The job's last `last` rounds, oldest first, each with `n_updates` and
    `n_selected` (counted by subqueries, so no row is multiplied) and its dropped nodes."""
    updates = Update.objects.filter(round=OuterRef("pk")).order_by().values("round").annotate(n=Count("pk"))
    selected = (Round.selected.through.objects.filter(round=OuterRef("pk")).order_by().values("round")
                .annotate(n=Count("pk")))
    rounds = (job.rounds_set.annotate(n_updates=Coalesce(Subquery(updates.values("n")), 0),
                                      n_selected=Coalesce(Subquery(selected.values("n")), 0))
              .prefetch_related(Prefetch("dropped", queryset=_node_names()))
              .order_by("-number", "-id")[:last])
    return list(rounds)[::-1]


def job_metric_series(job: Job, *, names: Iterable[str]) -> dict[str, dict[str, list[list[float]]]]:
    """{phase: {name: [[round, value], ...] by round}} of the job's aggregate metrics
    (node null) named in `names`: one pair per round instead of one row per point."""
    points = (MetricPoint.objects.filter(job=job, node__isnull=True, name__in=list(names))
              .order_by("phase", "name", "round", "id").values_list("phase", "name", "round", "value"))
    series: dict = {}
    for phase, name, number, value in points:
        pairs = series.setdefault(phase, {}).setdefault(name, [])
        if pairs and pairs[-1][0] == number:  # recorded again (a retried round): the last one counts
            pairs[-1][1] = value
        else:
            pairs.append([number, value])
    return series
