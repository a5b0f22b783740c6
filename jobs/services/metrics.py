"""Writing metric points, the rows every result and every round close adds by the
dozen: one multi-row INSERT, written out (the ORM's bulk_create built a model instance
per point and was about a tenth of an upload's CPU, cProfile on PostgreSQL)."""
from django.db import connection
from django.utils import timezone

from jobs import events
from jobs.models import MetricPoint

_COLUMNS = ("job_id", "round", "node_id", "phase", "name", "value", "created_at")
_INSERT = (f"INSERT INTO {connection.ops.quote_name(MetricPoint._meta.db_table)} "
           f"({', '.join(connection.ops.quote_name(c) for c in _COLUMNS)}) VALUES ")


def metric_points_record(*, job_id: int, node=None, results: list[tuple[int, str, dict[str, float]]]) -> None:
    """Store `results`, [(round, phase, {name: value})], of a node (None: the
    aggregate), and broadcast each (round, phase) after commit."""
    now = connection.ops.adapt_datetimefield_value(timezone.now())
    node_id = node.pk if node is not None else None
    rows = [(job_id, number, node_id, phase, name, value, now)
            for number, phase, metrics in results for name, value in metrics.items()]
    if rows:
        with connection.cursor() as cursor:
            cursor.execute(_INSERT + ", ".join(["(%s, %s, %s, %s, %s, %s, %s)"] * len(rows)),
                           [field for row in rows for field in row])
    for number, phase, metrics in results:
        events.metrics_recorded(job_id, number, phase, node.name if node is not None else None, metrics)
