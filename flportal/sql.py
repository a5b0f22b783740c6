"""Statements the ORM makes too dear on the hot path of a round, written out (no model
instances, no query compilation)."""
from django.db import connection


def locked_value(model, column: str, pk) -> object:
    """`column` of the row `pk` of `model`'s table, read under the row's lock: FOR NO KEY
    UPDATE on PostgreSQL, as every lock of a job or a round row takes (it excludes the
    others, but not the key-share locks of foreign-key checks, so an upload's commit
    never waits for, nor deadlocks with, a lock on the row its rows refer to); SQLite's
    transactions lock the whole file."""
    quote = connection.ops.quote_name
    features = connection.features
    lock = (" FOR NO KEY UPDATE" if features.has_select_for_no_key_update
            else " FOR UPDATE" if features.has_select_for_update else "")
    with connection.cursor() as cursor:
        cursor.execute(f"SELECT {quote(column)} FROM {quote(model._meta.db_table)} WHERE id = %s{lock}", [pk])
        row = cursor.fetchone()
    return row[0] if row else None


def rows_count(model, column: str, value) -> int:
    """How many rows of `model`'s table have `column` = `value`."""
    quote = connection.ops.quote_name
    with connection.cursor() as cursor:
        cursor.execute(f"SELECT COUNT(*) FROM {quote(model._meta.db_table)} WHERE {quote(column)} = %s", [value])
        return cursor.fetchone()[0]


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
