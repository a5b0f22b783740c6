"""Statements the ORM makes too dear on the hot path of a round, written out (no model
instances, no query compilation); each with its measurement in docs/PERFORMANCE.md."""
from django.db import connection


def rows_insert(model, columns: tuple[str, ...], rows: list[tuple]) -> None:
    """Insert literal `rows` (values in `columns` order) into `model`'s table as one
    multi-row VALUES statement. bulk_create does the same work but, on PostgreSQL under
    Django 5.2, as UNNEST arrays, and setting up psycopg's array dumpers cost about a
    millisecond a statement (yappi on the Celery worker, bench/round_overhead.py), plus a
    model instance per row. No signals, no defaults: every column is given."""
    if not rows:
        return
    quote = connection.ops.quote_name
    placeholders = "(" + ", ".join(["%s"] * len(columns)) + ")"
    sql = (f"INSERT INTO {quote(model._meta.db_table)} ({', '.join(quote(c) for c in columns)}) "
           f"VALUES {', '.join([placeholders] * len(rows))}")
    with connection.cursor() as cursor:
        cursor.execute(sql, [value for row in rows for value in row])
