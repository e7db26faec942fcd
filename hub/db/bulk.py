"""Bulk inserts for the hot write path (resource rows, versions, search indexes, audit entries).

Measured with pyinstrument while accepting orders, most of the write time went into the way rows
reach the driver, not into the databases:

* PostgreSQL: SQLAlchemy's many-row INSERT spent its time in psycopg turning a large multi-VALUES
  statement into wire format (or, as executemany, in per-row pipeline executions). ``COPY … FROM
  STDIN`` inside the same transaction does the same work for a fraction of the cost.
* SQLite: SQLAlchemy's per-row parameter processing cost more than sqlite3's own executemany.

So the rows go straight to the driver. The values are converted here the way the column types
would (aware datetimes become naive UTC text in SQLAlchemy's SQLite format; booleans 0/1), so the
rows read back exactly as if SQLAlchemy had written them (tests read them through SQLAlchemy).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from operator import itemgetter
from typing import Any

from sqlalchemy import Table
from sqlalchemy.orm import Session


def _sqlite_converter(sample: Any) -> Callable[[Any], Any] | None:
    """How a column's Python values must be converted for sqlite3 (decided from one row)."""
    if isinstance(sample, datetime):
        formatted: dict[datetime, str] = {}

        def to_text(value: Any) -> Any:
            if value is None:
                return None
            text = formatted.get(value)
            if text is None:
                if value.tzinfo is None:
                    raise ValueError("naive datetime given to the store; use an aware UTC datetime")
                # A job's rows share one clock reading: each instant is formatted once.
                text = formatted[value] = value.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S.%f")
            return text

        return to_text
    if isinstance(sample, bool):
        return lambda value: None if value is None else int(value)
    return None


def insert_rows(session: Session, table: Table, rows: Sequence[dict[str, Any]]) -> None:
    if not rows:
        return
    conn = session.connection()
    columns = list(rows[0].keys())
    raw = conn.connection.driver_connection
    assert raw is not None
    quoted = ", ".join(f'"{c}"' for c in columns)
    if conn.dialect.name == "postgresql":
        with raw.cursor() as cur, cur.copy(f'COPY "{table.name}" ({quoted}) FROM STDIN') as copy:
            for row in rows:
                copy.write_row([row[c] for c in columns])
        return
    if conn.dialect.name == "sqlite":
        marks = ", ".join("?" for _ in columns)
        getter = itemgetter(*columns)
        values: list[Any] = [getter(row) for row in rows] if len(columns) > 1 else [(getter(r),) for r in rows]
        converters = [(i, f) for i, c in enumerate(columns) if (f := _sqlite_converter(rows[0][c])) is not None]
        if converters:
            converted = []
            for tup in values:
                items = list(tup)
                for i, f in converters:
                    items[i] = f(items[i])
                converted.append(items)
            values = converted
        cur = raw.cursor()
        try:
            cur.executemany(f'INSERT INTO "{table.name}" ({quoted}) VALUES ({marks})', values)
        finally:
            cur.close()
        return
    conn.execute(table.insert(), list(rows))
