"""What nodes send: updates (weights), evaluations (metrics), log lines; and what a
node should do next (the task it pulls)."""
import math
from pathlib import Path

from django.db import IntegrityError, transaction

from flportal.errors import NotFound
from jobs import events
from jobs.exceptions import InvalidUpdateError, NotSelected, StaleRound
from jobs.models import CrossSiteResult, Job, JobNode, MetricPoint, Round, Update
from jobs.services import artifacts
from jobs.services.jobs import job_event_record
from nodes.models import Node

MAX_METRICS = 64
MAX_LOG_LINES = 200


def submission_round(*, round_id: int, node: Node, kind: str) -> tuple[Round, Update | None]:
    """The round a node submits to, checked before any body is read: returns the round
    and the node's existing update (a duplicate is answered as before). Raises NotFound
    (not the node's job), NotSelected (403) or StaleRound (409)."""
    rnd = Round.objects.select_related("job").filter(pk=round_id, job__job_nodes__node=node).first()
    if rnd is None:
        raise NotFound(f"no round {round_id} in any job of node {node.name}")
    _check_kind(rnd, kind)
    existing = Update.objects.filter(round=rnd, node=node).first()
    if existing is None:
        _check_open_and_selected(rnd, node)
    return rnd, existing


def _check_kind(rnd: Round, kind: str) -> None:
    if rnd.kind != kind:
        raise InvalidUpdateError(f"round {rnd.number} is a {rnd.kind} round; this endpoint takes {kind} results")


def _check_open_and_selected(rnd: Round, node: Node) -> None:
    if not rnd.selected.filter(pk=node.pk).exists():
        raise NotSelected(f"node {node.name} is not selected for round {rnd.number} of job {rnd.job_id}")
    if rnd.status != Round.Status.OPEN:
        raise StaleRound(f"round {rnd.number} ({rnd.kind}) of job {rnd.job_id} is {rnd.status}, not open")


def clean_metrics(metrics) -> dict[str, float]:
    """Metric names and finite numbers only; raises InvalidUpdateError otherwise."""
    if not isinstance(metrics, dict) or len(metrics) > MAX_METRICS:
        raise InvalidUpdateError(f"metrics: must be an object of at most {MAX_METRICS} name: number pairs")
    out = {}
    for name, value in metrics.items():
        if not isinstance(name, str) or not 0 < len(name) <= 64:
            raise InvalidUpdateError("metrics: names must be strings of 1 to 64 characters")
        try:
            number = float(value) if not isinstance(value, bool) and isinstance(value, (int, float)) else math.nan
        except OverflowError:
            number = math.inf
        if not math.isfinite(number):
            raise InvalidUpdateError(f"metrics.{name}: must be a finite number")
        out[name] = number
    return out


MAX_EXAMPLES = 2**31 - 1


def check_num_examples(value, field: str) -> int:
    """A positive integer that fits the database column; raises InvalidUpdateError."""
    if isinstance(value, bool) or not isinstance(value, int) or not 0 < value <= MAX_EXAMPLES:
        raise InvalidUpdateError(f"{field}: must be an integer from 1 to {MAX_EXAMPLES}")
    return value


def update_submit(*, round_id: int, node: Node, upload: Path | None, num_examples: int,
                  metrics: dict[str, float]) -> tuple[Update, bool]:
    """Accept a node's validated result for a round (weights for train rounds, none for
    evaluate rounds) and queue the round's close check. Returns (update, created);
    a duplicate returns the first update unchanged. Raises NotSelected / StaleRound."""
    kind = Round.Kind.TRAIN if upload else Round.Kind.EVALUATE

    def record(rnd: Round) -> Update:
        stored = artifacts.keep_update(rnd.job_id, rnd.number, rnd.kind, node.name, upload) if upload else ("", "", 0)
        update = Update.objects.create(round=rnd, node=node, path=stored[0], sha256=stored[1], bytes=stored[2],
                                       num_examples=num_examples)
        _record_node_metrics(rnd, node, metrics | {"num_examples": float(num_examples)})
        return update

    return _accept(round_id, node, kind, record)


def cross_site_submit(*, round_id: int, node: Node, results: list[dict]) -> tuple[Update, bool]:
    """Accept a node's cross-site validation results: [{"source", "num_examples",
    "metrics"}] for exactly the sources its task listed (cleaned by the caller)."""

    def record(rnd: Round) -> Update:
        expected = {source for source, _ in cross_site_sources(rnd)}
        if {r["source"] for r in results} != expected or len(results) != len(expected):
            raise InvalidUpdateError(f"results: expected one per model source: {', '.join(sorted(expected))}")
        CrossSiteResult.objects.bulk_create([
            CrossSiteResult(job_id=rnd.job_id, evaluator=node, source=r["source"], name=name, value=value,
                            num_examples=r["num_examples"]) for r in results for name, value in r["metrics"].items()])
        return Update.objects.create(round=rnd, node=node, num_examples=max(r["num_examples"] for r in results))

    return _accept(round_id, node, Round.Kind.CROSS_SITE, record)


def _accept(round_id: int, node: Node, kind: str, record) -> tuple[Update, bool]:
    """Under the round's lock: the idempotent duplicate answer, the open/selected
    checks, then `record(round)`; an event, and the round's close check on commit."""
    from jobs.tasks import round_maybe_close_task

    try:
        with transaction.atomic():
            rnd = Round.objects.select_for_update().select_related("job").get(pk=round_id)
            _check_kind(rnd, kind)
            existing = Update.objects.filter(round=rnd, node=node).first()
            if existing is not None:
                return existing, False
            _check_open_and_selected(rnd, node)
            update = record(rnd)
            JobNode.objects.filter(job_id=rnd.job_id, node=node).update(last_activity_at=update.received_at)
            job_event_record(job=rnd.job, kind="update_accepted", node=node,
                             message=f"{rnd.kind} result from {node.name} for round {rnd.number}",
                             data={"round": rnd.number, "kind": rnd.kind, "num_examples": update.num_examples})
            round_maybe_close_task.delay_on_commit(rnd.pk)
            return update, True
    except IntegrityError:  # a concurrent duplicate won the race
        return Update.objects.get(round_id=round_id, node=node), False


def cross_site_model(*, round_id: int, node: Node, source: str):
    """A node's last local model, for a node selected in an open cross-site round of
    the same job. Raises NotFound / NotSelected / StaleRound."""
    rnd, _ = submission_round(round_id=round_id, node=node, kind=Round.Kind.CROSS_SITE)
    if rnd.status != Round.Status.OPEN:
        raise StaleRound(f"cross-site round of job {rnd.job_id} is {rnd.status}")
    found = dict(cross_site_sources(rnd)).get(source)
    if found is None or source == "global":
        raise NotFound(f"no local model of {source!r} in job {rnd.job_id}")
    return found


def clean_cross_site_results(results) -> list[dict]:
    if not isinstance(results, list) or not 0 < len(results) <= 1000:
        raise InvalidUpdateError("results: must be a non-empty list of {source, num_examples, metrics}")
    cleaned = []
    for i, item in enumerate(results):
        if not isinstance(item, dict) or not isinstance(item.get("source"), str):
            raise InvalidUpdateError(f"results[{i}]: must be an object with a source")
        cleaned.append({"source": item["source"], "num_examples": check_num_examples(item.get("num_examples"),
                                                                                    f"results[{i}].num_examples"),
                        "metrics": clean_metrics(item.get("metrics"))})
    return cleaned


def cross_site_sources(rnd: Round) -> list[tuple[str, object]]:
    """The models a cross-site round evaluates: ("global", its model version) and, for
    every node of the job, (node name, its last accepted train update)."""
    latest = {}
    for update in (Update.objects.filter(round__job_id=rnd.job_id, round__kind=Round.Kind.TRAIN)
                   .select_related("node", "round").order_by("round__number")):
        latest[update.node.name] = update
    return [("global", rnd.model_version)] + sorted(latest.items())


def _record_node_metrics(rnd: Round, node: Node, metrics: dict[str, float]) -> None:
    phase = MetricPoint.Phase.FIT if rnd.kind == Round.Kind.TRAIN else MetricPoint.Phase.EVAL
    MetricPoint.objects.bulk_create([MetricPoint(job_id=rnd.job_id, round=rnd.number, node=node, phase=phase,
                                                 name=name, value=value) for name, value in metrics.items()])
    events.metrics_recorded(rnd.job_id, rnd.number, phase, node.name, metrics)


def task_for_node(*, job_id: int, node: Node) -> dict:
    """The next thing a node should do for a job (docs/PROTOCOL.md): train or evaluate
    an open round it was selected for and has not answered, wait, or end.
    Raises NotFound for a job the node does not take part in."""
    job = Job.objects.filter(pk=job_id, job_nodes__node=node).first()
    if job is None:
        raise NotFound(f"node {node.name} takes no part in job {job_id}")
    if job.is_terminal:
        return {"action": "end", "reason": f"job {job.status}" + (f": {job.status_reason}" if job.status_reason else "")}
    rnd = (Round.objects.select_related("model_version").filter(job=job, status=Round.Status.OPEN, selected=node)
           .exclude(updates__node=node).first())
    if rnd is None:
        return {"action": "wait", "retry_after": 1.0}
    return _task(job, rnd)


def _task(job: Job, rnd: Round) -> dict:
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
    if rnd.kind == Round.Kind.CROSS_SITE:
        task["models"] = [{"source": source, "sha256": item.sha256,
                           "url": task["model_url"] if source == "global"
                           else f"/api/v1/fl/rounds/{rnd.pk}/models/{source}"}
                          for source, item in cross_site_sources(rnd)]
    return task


def logs_append(*, job_id: int, node: Node, lines: list[str]) -> None:
    """Store a batch of a trainer's log lines as one event."""
    job = Job.objects.filter(pk=job_id, job_nodes__node=node).first()
    if job is None:
        raise NotFound(f"node {node.name} takes no part in job {job_id}")
    if not isinstance(lines, list) or not all(isinstance(x, str) for x in lines):
        raise InvalidUpdateError("lines: must be a list of strings")
    text = "\n".join(line[:1000] for line in lines[:MAX_LOG_LINES])
    job_event_record(job=job, kind="log", message=text, node=node)
