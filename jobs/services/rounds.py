"""The round protocol: open, collect, close (aggregate) or fail, and what a node
should do next. See docs/PROTOCOL.md and docs/STATES.md."""
import logging
import random
from datetime import timedelta

from django.db import transaction
from django.utils import timezone

from flportal.sql import rows_count, rows_insert
from jobs import events
from jobs.fl.serialization import load_state_dict, load_state_dict_header
from jobs.fl.strategies import get_strategy
from jobs.models import Job, JobNode, MetricPoint, ModelVersion, Round, Update
from jobs.services import artifacts
from jobs.services.jobs import job_event_record, job_fail, job_succeed
from jobs.services.metrics import metric_points_record
from jobs.services.node_tasks import round_task
from jobs.services.transitions import round_transition
from nodes.models import Node

logger = logging.getLogger(__name__)


class RoundCannotOpen(Exception):
    """Too few nodes are available to run a round under the job's policy."""


def round_open(*, job: Job, number: int, kind: str, model_version: ModelVersion,
               evaluate_first: bool = False) -> Round:
    """Open a round on the job's available nodes (online, enabled, not failed), sampled
    to `clients_per_round` with the job's seed; `evaluate_first` (train rounds): the
    nodes evaluate the model they receive before training. Hands the round's task to
    the waiting trainers and schedules the deadline check, on commit.
    Raises RoundCannotOpen when fewer than `clients_required` nodes are available."""
    from jobs.tasks import round_deadline_task

    selected = _select_nodes(job, number)
    required = job.clients_required
    if len(selected) < required:
        raise RoundCannotOpen(f"round {number} ({kind}) cannot open: {len(selected)} nodes available, "
                              f"clients_required is {required}")
    target = len(selected) if job.buffer_size == -1 or kind != Round.Kind.TRAIN else min(job.buffer_size, len(selected))
    rnd = Round.objects.create(job=job, number=number, kind=kind, model_version=model_version,
                               target_updates=target, evaluate_first=evaluate_first and kind == Round.Kind.TRAIN,
                               deadline=timezone.now() + timedelta(seconds=job.round_timeout_s))
    rows_insert(Round.selected.through, ("round_id", "node_id"), [(rnd.pk, node.pk) for node in selected])
    if job.current_round != number:
        job.current_round = number
        job.save(update_fields=["current_round"])
    job_event_record(job=job, kind="round_open", message=f"round {number} ({kind}) open on "
                     f"{', '.join(sorted(n.name for n in selected))}", data={"round": number, "kind": kind})
    events.round_task_ready(job.pk, round_task(job, rnd), [n.pk for n in selected])
    round_deadline_task.apply_async_on_commit((rnd.pk,), countdown=job.round_timeout_s)
    return rnd


def _select_nodes(job: Job, number: int) -> list[Node]:
    available = [jn.node for jn in job.job_nodes.select_related("node").exclude(status=JobNode.Status.FAILED)
                 if jn.node.enabled and jn.node.status == Node.Status.ONLINE]
    if job.clients_per_round and len(available) > job.clients_per_round:
        available = random.Random(f"{job.seed}:{number}").sample(available, job.clients_per_round)
    return available


def round_close_when_complete(rnd: Round) -> bool:
    """Called under the round's lock after a result was accepted: once `target_updates`
    results are in, open → aggregating, and the round's close is queued on commit (in
    the same transaction as the last result, so no extra task runs per update).
    True if it moved."""
    from jobs.tasks import round_close_task

    if rnd.status != Round.Status.OPEN or rows_count(Update, "round_id", rnd.pk) < rnd.target_updates:
        return False
    _start_aggregating(rnd)
    round_close_task.delay_on_commit(rnd.pk)
    return True


def round_deadline(*, round_id: int) -> bool:
    """At the deadline an open round closes if it has `clients_required` updates;
    otherwise it fails, and the job with it, naming the nodes that did not report.
    True if the round moved to aggregating (the caller then runs round_close)."""
    with transaction.atomic():
        rnd = Round.objects.select_for_update(no_key=True).select_related("job").filter(pk=round_id, status=Round.Status.OPEN).first()
        if rnd is None or rnd.deadline > timezone.now():
            return False
        received = rnd.updates.count()
        required = min(rnd.job.clients_required, rnd.selected.count())
        if received >= max(1, required):
            _start_aggregating(rnd)
            return True
        missing = ", ".join(sorted(n.name for n in _missing_nodes(rnd)))
        reason = (f"round {rnd.number} ({rnd.kind}) failed: {received} of {required} required updates "
                  f"by the deadline ({rnd.job.round_timeout_s:g} s); missing: {missing}")
        round_keep_evaluation(rnd)
        round_transition(rnd, Round.Status.FAILED, reason=reason)
        job = Job.objects.select_for_update(no_key=True).get(pk=rnd.job_id)
        if not job.is_terminal:
            job_fail(job=job, reason=reason)
    return False


def _missing_nodes(rnd: Round) -> list[Node]:
    return list(rnd.selected.exclude(pk__in=rnd.updates.values("node_id")))


def _start_aggregating(rnd: Round) -> None:
    dropped = _missing_nodes(rnd)
    if dropped:  # a round goes aggregating once: nobody was recorded dropped before
        rnd.dropped.add(*dropped)
    reason = f"dropped: {', '.join(sorted(n.name for n in dropped))}" if dropped else ""
    round_transition(rnd, Round.Status.AGGREGATING, reason=reason)


def round_close(*, round_id: int) -> Round | None:
    """Aggregate an aggregating round with the job's strategy (one update in memory at a
    time for streaming strategies), store the new model version and the aggregated
    metrics, close the round and open the next one or finish the job. Idempotent: a
    round that is not aggregating any more is left alone."""
    rnd = Round.objects.select_related("job", "model_version").filter(pk=round_id, status=Round.Status.AGGREGATING).first()
    if rnd is None:
        return None
    try:
        written = _aggregate_and_write(rnd) if rnd.kind == Round.Kind.TRAIN else None
    except Exception as exc:  # a round that cannot be aggregated must not leave the job running
        logger.exception("aggregating round %s of job %s", rnd.number, rnd.job_id)
        _aggregation_failed(round_id, f"aggregation of round {rnd.number} failed: {exc}")
        return None
    with transaction.atomic():
        rnd = next(iter(Round.objects.select_for_update(no_key=True).select_related("job")  # locks the job's row too
                        .filter(pk=round_id, status=Round.Status.AGGREGATING).order_by()[:1]), None)
        if rnd is None:
            return None
        job = rnd.job
        if written is not None:  # created with the close, in one transaction: never there before
            rnd.result_version = ModelVersion.objects.create(job=job, round=rnd.number, **written)
            rnd.save(update_fields=["result_version"])
        if rnd.kind != Round.Kind.CROSS_SITE:
            _aggregate_round_metrics(rnd)
        round_transition(rnd, Round.Status.CLOSED)
        if job.status == Job.Status.RUNNING:
            _advance(job, rnd)
    return rnd


def _aggregation_failed(round_id: int, reason: str) -> None:
    with transaction.atomic():
        rnd = Round.objects.select_for_update(no_key=True).filter(pk=round_id, status=Round.Status.AGGREGATING).first()
        if rnd is None:
            return
        round_keep_evaluation(rnd)
        round_transition(rnd, Round.Status.FAILED, reason=reason)
        job = Job.objects.select_for_update(no_key=True).get(pk=rnd.job_id)
        if not job.is_terminal:
            job_fail(job=job, reason=reason)


def _aggregate_and_write(rnd: Round) -> dict:
    """Run the job's strategy over the round's updates, from the server state the
    previous version left; write the new version (and state). Returns ModelVersion fields."""
    version, cls = rnd.model_version, get_strategy(rnd.job.strategy)
    load_global = load_state_dict if cls.uses_global_values else load_state_dict_header
    global_state = load_global(artifacts.absolute(version.path))
    server_state = load_state_dict(artifacts.absolute(version.server_state_path)) if version.server_state_path else None
    strategy = cls(global_state, rnd.job.strategy_params, server_state=server_state)
    for update in rnd.updates.order_by("node__name"):
        strategy.add(load_state_dict(artifacts.absolute(update.path)), update.num_examples)
    path, sha256, size = artifacts.write_model(rnd.job_id, rnd.number, strategy.result())
    next_state = strategy.next_server_state()
    state_path = artifacts.write_server_state(rnd.job_id, rnd.number, next_state) if next_state else ""
    return {"path": path, "sha256": sha256, "bytes": size, "server_state_path": state_path}


def _aggregate_round_metrics(rnd: Round) -> None:
    """The aggregate of what the round's accepted results reported: fit (train) or eval
    (evaluate) metrics of this round and, for a round that evaluated first, the eval
    metrics of the round before."""
    node_ids = list(rnd.updates.values_list("node_id", flat=True))
    phase = MetricPoint.Phase.FIT if rnd.kind == Round.Kind.TRAIN else MetricPoint.Phase.EVAL
    _aggregate_metrics(rnd.job_id, rnd.number, phase, node_ids)
    if rnd.kind == Round.Kind.TRAIN and rnd.evaluate_first:
        _aggregate_metrics(rnd.job_id, rnd.number - 1, MetricPoint.Phase.EVAL, node_ids)


def round_keep_evaluation(rnd: Round) -> None:
    """For a train round that evaluated first and fails: the evaluation of the model it
    started from, over the results it got, is still aggregated (that model is the job's
    last good one)."""
    if rnd.kind == Round.Kind.TRAIN and rnd.evaluate_first:
        node_ids = list(rnd.updates.values_list("node_id", flat=True))
        _aggregate_metrics(rnd.job_id, rnd.number - 1, MetricPoint.Phase.EVAL, node_ids)


def _aggregate_metrics(job_id: int, number: int, phase: str, node_ids: list[int]) -> None:
    """Mean of each node metric of (round, phase) over `node_ids`, weighted by each
    node's `num_examples` there (durations `*_s`: the maximum); stored with node None."""
    by_node: dict[int, dict[str, float]] = {}
    for node_id, name, value in (MetricPoint.objects.filter(job_id=job_id, round=number, phase=phase,
                                                            node_id__in=node_ids)
                                 .order_by().values_list("node_id", "name", "value")):
        by_node.setdefault(node_id, {})[name] = value
    if not by_node:
        return
    by_name: dict[str, list[tuple[float, float]]] = {}
    for values in by_node.values():
        for name, value in values.items():
            by_name.setdefault(name, []).append((value, values.get("num_examples", 0.0)))
    aggregate = {name: _combine(name, pairs) for name, pairs in by_name.items()}
    aggregate["num_examples"] = sum(values.get("num_examples", 0.0) for values in by_node.values())
    aggregate["num_nodes"] = float(len(by_node))
    metric_points_record(job_id=job_id, results=[(number, phase, aggregate)])


def _combine(name: str, pairs: list[tuple[float, float]]) -> float:
    if name.endswith("_s"):
        return max(v for v, _ in pairs)
    total = sum(w for _, w in pairs)
    return sum(v * w for v, w in pairs) / total if total else sum(v for v, _ in pairs) / len(pairs)


def _advance(job: Job, rnd: Round) -> None:
    """After a closed round: train the next round (its nodes evaluate the new model
    first when the evaluation policy asks for it), evaluate the last model in a round
    of its own, run the cross-site validation (opt-in), or finish."""
    n, version = rnd.number, rnd.result_version or rnd.model_version
    try:
        if rnd.kind == Round.Kind.TRAIN and n < job.rounds:
            round_open(job=job, number=n + 1, kind=Round.Kind.TRAIN, model_version=version,
                       evaluate_first=n % job.evaluate_every == 0)
        elif rnd.kind == Round.Kind.TRAIN:
            round_open(job=job, number=n, kind=Round.Kind.EVALUATE, model_version=version)
        elif rnd.kind == Round.Kind.EVALUATE and job.cross_site_validation:
            round_open(job=job, number=n, kind=Round.Kind.CROSS_SITE, model_version=version)
        else:
            job_succeed(job=job, final_model=version)
    except RoundCannotOpen as exc:
        job_fail(job=job, reason=str(exc))


def rounds_overdue(*, grace_s: float = 2.0) -> list[int]:
    """Ids of open rounds past their deadline (the watchdog re-drives them)."""
    cutoff = timezone.now() - timedelta(seconds=grace_s)
    return list(Round.objects.filter(status=Round.Status.OPEN, deadline__lt=cutoff).values_list("pk", flat=True))


def rounds_stuck_aggregating(*, older_than_s: float) -> list[int]:
    cutoff = timezone.now() - timedelta(seconds=older_than_s)
    return list(Round.objects.filter(status=Round.Status.AGGREGATING, aggregating_at__lt=cutoff)
                .values_list("pk", flat=True))

