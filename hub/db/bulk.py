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

from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from datetime import UTC, datetime
from functools import lru_cache
from operator import itemgetter
from typing import Any

from sqlalchemy import Connection, Table, select
from sqlalchemy.exc import DBAPIError
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


@contextmanager
def driver_errors(conn: Connection, statement: str) -> Iterator[None]:
    """Raise the driver's errors the way SQLAlchemy would have: the unit of work tells a partner's
    duplicate (``IntegrityError`` -> Conflict) and a lost database (``OperationalError`` -> retry)
    from a bug by SQLAlchemy's exception classes."""
    base = conn.dialect.loaded_dbapi.Error
    try:
        yield
    except base as exc:
        # As SQLAlchemy's own execution does: a lost connection is invalidated, so the pool does not
        # hand it out again and the error says so.
        lost = not conn.invalidated and conn.dialect.is_disconnect(exc, conn.connection.dbapi_connection, None)
        if lost:
            conn.invalidate(exc)
        error = DBAPIError.instance(statement, None, exc, base, connection_invalidated=lost, dialect=conn.dialect)
        raise error from exc


def insert_rows(session: Session, table: Table, rows: Sequence[dict[str, Any]]) -> None:
    if not rows:
        return
    conn = session.connection()
    columns = list(rows[0].keys())
    raw = conn.connection.driver_connection
    assert raw is not None
    quoted = ", ".join(f'"{c}"' for c in columns)
    if conn.dialect.name == "postgresql":
        statement = f'COPY "{table.name}" ({quoted}) FROM STDIN'
        with (
            driver_errors(conn, statement),
            raw.cursor() as cur,
            cur.copy(statement) as copy,
        ):
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
        statement = f'INSERT INTO "{table.name}" ({quoted}) VALUES ({marks})'
        cur = raw.cursor()
        try:
            with driver_errors(conn, statement):
                cur.executemany(statement, values)
        finally:
            cur.close()
        return
    conn.execute(table.insert(), list(rows))


def insert_unless_present(session: Session, table: Table, row: dict[str, Any], keys: Sequence[str]) -> bool:
    """Insert one row unless a row with the same ``keys`` (a unique constraint) exists; True if
    inserted. ``INSERT … ON CONFLICT (keys) DO NOTHING`` on both databases: the usual case (a new
    message) costs one statement instead of a lookup and an insert, and a concurrent duplicate from
    another process is skipped instead of failing the transaction."""
    conn = session.connection()
    columns = list(row)
    if conn.dialect.name not in ("sqlite", "postgresql"):
        raise NotImplementedError(f"insert_unless_present on {conn.dialect.name}")
    raw = conn.connection.driver_connection
    assert raw is not None
    values = [row[c] for c in columns]
    if conn.dialect.name == "sqlite":
        mark = "?"
        for i, value in enumerate(values):
            if (convert := _sqlite_converter(value)) is not None:
                values[i] = convert(value)
    else:
        mark = "%s"
    statement = _upsert_sql(table.name, tuple(columns), tuple(keys), mark)
    cur = raw.cursor()
    try:
        with driver_errors(conn, statement):
            cur.execute(statement, values)
            return bool(cur.rowcount == 1)
    finally:
        cur.close()


@lru_cache(maxsize=64)
def _upsert_sql(table: str, columns: tuple[str, ...], keys: tuple[str, ...], mark: str) -> str:
    quoted = ", ".join(f'"{c}"' for c in columns)
    marks = ", ".join(mark for _ in columns)
    target = ", ".join(f'"{k}"' for k in keys)
    return f'INSERT INTO "{table}" ({quoted}) VALUES ({marks}) ON CONFLICT ({target}) DO NOTHING'


def insert_tables(session: Session, batches: Sequence[tuple[Table, Sequence[dict[str, Any]]]]) -> None:
    """Insert rows into several tables at once. On PostgreSQL that is ONE statement, one round
    trip: data-modifying CTEs, each ``INSERT … SELECT * FROM unnest(<one array per column>)``.

    Why not ``COPY`` per table, as :func:`insert_rows` does: a COPY costs two round trips (the
    COPY command, then the data and its end), and a job writes five tables (resources, versions,
    three search indexes). Measured while accepting orders with 64 callers on PostgreSQL, those ten
    waits per job were most of the resource store's flush time. A constraint violation still
    fails the whole statement, i.e. the job's savepoint, exactly as before. Other databases: one
    :func:`insert_rows` per table (SQLite is in-process; there is no round trip to save)."""
    batches = [(table, rows) for table, rows in batches if rows]
    if not batches:
        return
    conn = session.connection()
    if conn.dialect.name != "postgresql":
        for table, rows in batches:
            insert_rows(session, table, rows)
        return
    shape = tuple((table, tuple(rows[0].keys())) for table, rows in batches)
    statement = _unnest_sql(shape, conn.dialect)
    params: list[list[Any]] = []
    for (_, columns), (_, rows) in zip(shape, batches, strict=True):
        for c in columns:
            params.append([row[c] for row in rows])
    raw = conn.connection.driver_connection
    assert raw is not None
    with driver_errors(conn, statement), raw.cursor() as cur:
        cur.execute(statement, params)


_UNNEST_CACHE: dict[tuple[tuple[str, tuple[str, ...]], ...], str] = {}


def _unnest_sql(shape: tuple[tuple[Table, tuple[str, ...]], ...], dialect: Any) -> str:
    key = tuple((table.name, columns) for table, columns in shape)
    cached = _UNNEST_CACHE.get(key)
    if cached is not None:
        return cached
    parts = []
    for table, columns in shape:
        quoted = ", ".join(f'"{c}"' for c in columns)
        # Each array is cast to its column's type, so a column whose values are all NULL still
        # has a type, and values arrive exactly as a plain INSERT would take them.
        arrays = ", ".join(f"%b::{table.c[c].type.compile(dialect=dialect)}[]" for c in columns)
        parts.append(f'INSERT INTO "{table.name}" ({quoted}) SELECT * FROM unnest({arrays})')
    *ctes, last = parts
    statement = last if not ctes else "WITH " + ", ".join(f"w{i} AS ({p})" for i, p in enumerate(ctes)) + " " + last
    _UNNEST_CACHE[key] = statement
    return statement


@lru_cache(maxsize=64)
def _select_sql(table: str, columns: tuple[str, ...], keys: tuple[str, ...], mark: str) -> str:
    selected = ", ".join(f'"{c}"' for c in columns)
    return f'SELECT {selected} FROM "{table}" WHERE ' + " AND ".join(f'"{k}" = {mark}' for k in keys)


def select_one(session: Session, table: Table, columns: Sequence[str], where: dict[str, Any]) -> tuple[Any, ...] | None:
    """One row by equality on ``where``, straight through the driver (hot-path lookups by a unique
    key: SQLAlchemy's per-statement work cost several times the database's). Values are compared
    as given: strings and numbers only, no type conversion happens here."""
    conn = session.connection()
    if conn.dialect.name not in ("sqlite", "postgresql"):
        query = select(*(table.c[c] for c in columns)).where(*(table.c[k] == v for k, v in where.items()))
        found = conn.execute(query).first()
        return None if found is None else tuple(found)
    raw = conn.connection.driver_connection
    assert raw is not None
    mark = "%s" if conn.dialect.name == "postgresql" else "?"
    statement = _select_sql(table.name, tuple(columns), tuple(where), mark)
    cur = raw.cursor()
    try:
        with driver_errors(conn, statement):
            cur.execute(statement, tuple(where.values()))
            row = cur.fetchone()
    finally:
        cur.close()
    return None if row is None else tuple(row)
