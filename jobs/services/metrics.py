"""Writing metric points: every result and every round close adds them by the dozen."""
from django.db import connection
from django.utils import timezone

from flportal.sql import rows_insert
from jobs import events
from jobs.models import MetricPoint

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
