"""Metric points: every result and every round close adds them by the dozen; a round's
aggregate is the weighted mean of what its nodes reported."""
from django.db import connection
from django.utils import timezone

from core.sql import rows_insert
from jobs import events
from jobs.models import MetricPoint, Round

_COLUMNS = ("job_id", "round", "node_id", "phase", "name", "value", "created_at")


def metric_points_record(*, job_id: int, node=None, results: list[tuple[int, str, dict[str, float]]]) -> None:
    """Store `results`, [(round, phase, {name: value})], of a node (None: the
    aggregate) in one statement, and broadcast each (round, phase) after commit."""
    now = connection.ops.adapt_datetimefield_value(timezone.now())
    node_id = node.pk if node is not None else None
    rows_insert(MetricPoint, _COLUMNS, [(job_id, number, node_id, phase, name, value, now)
                                        for number, phase, metrics in results for name, value in metrics.items()])
    for number, phase, metrics in results:
        events.metrics_recorded(job_id, number, phase, node.name if node is not None else None, metrics)


def round_metrics_aggregate(rnd: Round) -> None:
    """The aggregate of what the round's accepted results reported: fit (train) or eval
    (evaluate) metrics of this round and, for a round that evaluated first, the eval
    metrics of the round before."""
    node_ids = list(rnd.updates.values_list("node_id", flat=True))
    _aggregate_metrics(rnd.job_id, rnd.number, rnd.metric_phase, node_ids)
    round_keep_evaluation(rnd, node_ids)


def round_keep_evaluation(rnd: Round, node_ids: list[int] | None = None) -> None:
    """For a train round that evaluated first: the evaluation of the model it started
    from, over the results it got (`node_ids`, else read), aggregated when the round
    closes and also when it fails (that model is then the job's last good one)."""
    if rnd.kind == Round.Kind.TRAIN and rnd.evaluate_first:
        if node_ids is None:
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
