"""Alembic builds exactly the schema the models describe, and an identifier lookup does not depend
on planner statistics: a new database answers it through the lookup index and the primary key."""

from __future__ import annotations

import os
import uuid
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, TypeVar

import psycopg
import pytest
import sqlalchemy as sa
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import event
from sqlalchemy.orm import Session

from hub.db.engine import normalise_url
from hub.db.migrate import upgrade
from hub.db.models import Base, Resource, SearchDate, SearchReference, SearchToken, table_of
from hub.db.types import UTCDateTime
from hub.fhirstore.repository import ResourceRepository, SearchParam, search
from tests.conftest import PG_HOST, new_pg_database, pg_admin

SYSTEM = "urn:oid:2.16.840.1.113883.3.8998.1"
T = TypeVar("T")


def test_the_migrations_build_the_models_schema(db_url: str) -> None:
    engine = sa.create_engine(normalise_url(db_url))
    try:
        with engine.connect() as conn:
            assert compare_metadata(MigrationContext.configure(conn), Base.metadata) == []
    finally:
        engine.dispose()


@pytest.fixture
def unanalysed_url(request: pytest.FixtureRequest, sqlite_url: str) -> Iterator[str]:
    """A new migrated database whose tables will get rows but no statistics (autovacuum off)."""
    if request.param == "sqlite":
        yield sqlite_url
        return
    with new_pg_database("cgthub_plan") as url:
        with psycopg.connect(url, autocommit=True) as conn:
            for table in ("resource", "search_token", "search_reference"):
                conn.execute(f"ALTER TABLE {table} SET (autovacuum_enabled = false)")
        yield url


def _plans(conn: sa.Connection, statements: list[tuple[str, Any]]) -> list[str]:
    out = []
    cursor = conn.connection.driver_connection.cursor()  # type: ignore[union-attr]
    for statement, parameters in statements:
        if conn.dialect.name == "postgresql":
            cursor.execute("EXPLAIN " + statement, parameters)
        else:
            cursor.execute("EXPLAIN QUERY PLAN " + statement, parameters)
        out.append("\n".join(str(row[-1]) for row in cursor.fetchall()))
    return out


ROWS = 3000


def _seed(engine: sa.Engine, rtype: str, id_prefix: str, value_prefix: str, *, references: bool = False) -> None:
    """ROWS resources of one type with an identifier each (and a subject reference), no statistics."""
    now = datetime.now(UTC)
    ids = [f"{id_prefix}{n}" for n in range(ROWS)]
    with engine.begin() as conn:
        conn.execute(
            sa.insert(table_of(Resource)),
            [
                {
                    "resource_type": rtype,
                    "id": rid,
                    "version_id": 1,
                    "last_updated": now,
                    "deleted": False,
                    "content": "{}",
                    "content_hash": "0" * 64,
                }
                for rid in ids
            ],
        )
        conn.execute(
            sa.insert(table_of(SearchToken)),
            [
                {
                    "resource_type": rtype,
                    "id": rid,
                    "param": "identifier",
                    "system": SYSTEM,
                    "value": f"{value_prefix}{n}",
                }
                for n, rid in enumerate(ids)
            ],
        )
        if references:
            conn.execute(
                sa.insert(table_of(SearchReference)),
                [
                    {"resource_type": rtype, "id": rid, "param": "subject", "target": f"Patient/p{n}"}
                    for n, rid in enumerate(ids)
                ],
            )


def _planned(engine: sa.Engine, run: Callable[[Session], T]) -> tuple[T, list[str]]:
    """What ``run`` returns, and the plan of each statement it sent."""
    statements: list[tuple[str, Any]] = []

    def capture(conn: Any, cursor: Any, statement: str, parameters: Any, context: Any, many: bool) -> None:
        statements.append((statement, parameters))

    with Session(engine) as session:
        event.listen(engine, "before_cursor_execute", capture)
        try:
            result = run(session)
        finally:
            event.remove(engine, "before_cursor_execute", capture)
        return result, _plans(session.connection(), statements)


@pytest.mark.parametrize("unanalysed_url", ["sqlite", "postgres"], indirect=True)
def test_an_identifier_lookup_has_one_plan_whatever_the_statistics(unanalysed_url: str) -> None:
    """3,000 Patients, never analysed. The lookup must go through the lookup index and the primary
    key, never read the Patients one by one. (On PostgreSQL this failed twice: with the owner index
    leading with resource_type, migration 0003, and with the lookup as one statement with a
    subquery, planned from ``resource``. SQLite chose well in both cases.)"""
    engine = sa.create_engine(normalise_url(unanalysed_url))
    try:
        _seed(engine, "Patient", "p", "MRN")
        found, plans = _planned(engine, lambda s: ResourceRepository(s).find_by_identifier("Patient", SYSTEM, "MRN17"))
    finally:
        engine.dispose()
    assert [s.id for s in found] == ["p17"]
    assert len(plans) == 2, plans
    token_plan, resource_plan = plans
    assert "ix_search_token_lookup" in token_plan, token_plan
    # the primary key: pk_resource on PostgreSQL, SQLite's automatic index for it
    assert "pk_resource" in resource_plan or "sqlite_autoindex_resource_1" in resource_plan, resource_plan
    for plan in plans:
        assert "Seq Scan" not in plan, plan
        assert "SCAN " not in plan, plan  # SQLite's full scan


@pytest.mark.parametrize("unanalysed_url", ["sqlite", "postgres"], indirect=True)
@pytest.mark.parametrize(
    ("param", "value"), [("identifier", f"{SYSTEM}|C17"), ("patient", "p17"), ("subject", "Patient/p17")]
)
def test_a_search_has_one_plan_whatever_the_statistics(unanalysed_url: str, param: str, value: str) -> None:
    """The FHIR search statement (conditions as subqueries on the search tables, ordered by
    _lastUpdated, with a limit) on 3,000 never-analysed ServiceRequests: it starts from the search
    table's lookup index and reaches the rows by primary key, never by reading every order."""
    engine = sa.create_engine(normalise_url(unanalysed_url))
    try:
        _seed(engine, "ServiceRequest", "s", "C", references=True)
        found, (plan,) = _planned(engine, lambda s: search(s, "ServiceRequest", [SearchParam(param, value)], count=50))
    finally:
        engine.dispose()
    assert [s.id for s in found] == ["s17"]
    assert "ix_search_token_lookup" in plan or "ix_search_reference_lookup" in plan, plan
    assert "pk_resource" in plan or "sqlite_autoindex_resource_1" in plan, plan
    assert "Seq Scan" not in plan, plan
    assert "SCAN resource" not in plan, plan  # SQLite's full scan of the orders


@pytest.fixture(params=["sqlite", "postgres"])
def url_at_0007(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """A new database migrated only up to 0007 (before search_date had ranges)."""
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path / 'at0007.db'}"
        upgrade(url, "0007")
        yield url
        return
    name = f"cgthub_m8_{os.getpid()}_{uuid.uuid4().hex[:6]}"
    with pg_admin() as admin:
        admin.execute(f'CREATE DATABASE "{name}"')
        try:
            url = f"postgresql://{PG_HOST}/{name}"
            upgrade(url, "0007")
            yield url
        finally:
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def test_migration_0008_indexes_stored_dates_as_ranges(url_at_0007: str) -> None:
    """Rows indexed before 0008 (a partial authoredOn as its first instant) become the range the
    stored value names, recomputed from the resource, so old orders are found as new ones are."""
    month = datetime(2026, 12, 1, tzinfo=UTC)
    engine = sa.create_engine(normalise_url(url_at_0007))
    old_dates = sa.table(
        "search_date",
        sa.column("resource_type", sa.String()),
        sa.column("id", sa.String()),
        sa.column("param", sa.String()),
        sa.column("value", UTCDateTime()),
    )
    try:
        with engine.begin() as conn:
            rows = [("sr-month", '{"authoredOn": "2026-12"}'), ("sr-gone", "{}")]
            for rid, content in rows:
                conn.execute(
                    sa.insert(table_of(Resource)),
                    {
                        "resource_type": "ServiceRequest",
                        "id": rid,
                        "version_id": 1,
                        "last_updated": month,
                        "deleted": False,
                        "content": content,
                        "content_hash": "0" * 64,
                    },
                )
                conn.execute(
                    sa.insert(old_dates),
                    {"resource_type": "ServiceRequest", "id": rid, "param": "authored", "value": month},
                )
        upgrade(url_at_0007)
        with engine.connect() as conn:
            got = {
                r.id: (r.value, r.value_end)
                for r in conn.execute(sa.select(table_of(SearchDate)).order_by(table_of(SearchDate).c.id))
            }
        assert got == {
            "sr-month": (month, datetime(2027, 1, 1, tzinfo=UTC)),
            "sr-gone": (month, month + timedelta(microseconds=1)),  # unreadable now: the instant it was
        }
        with Session(engine) as session:
            found = search(session, "ServiceRequest", [SearchParam("authored", "ge2026-12-15")])
            assert [s.id for s in found] == ["sr-month"]
    finally:
        engine.dispose()
