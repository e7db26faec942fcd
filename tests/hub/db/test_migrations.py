"""Alembic builds exactly the schema the models describe, and the schema's lookups do not depend
on planner statistics: a new database answers identifier lookups through the lookup index."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator

import psycopg
import pytest
import sqlalchemy as sa
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext

from hub.db.engine import normalise_url
from hub.db.migrate import upgrade
from hub.db.models import Base
from hub.fhirstore.repository import _BY_IDENTIFIER
from tests.conftest import PG_ADMIN, PG_HOST

SYSTEM = "urn:oid:2.16.840.1.113883.3.8998.1"


def test_the_migrations_build_the_models_schema(db_url: str) -> None:
    engine = sa.create_engine(normalise_url(db_url))
    try:
        with engine.connect() as conn:
            assert compare_metadata(MigrationContext.configure(conn), Base.metadata) == []
    finally:
        engine.dispose()


@pytest.fixture
def unanalysed_url(request: pytest.FixtureRequest, sqlite_url: str) -> Iterator[str]:
    """A new migrated database whose search tables have rows but no statistics (autovacuum off)."""
    if request.param == "sqlite":
        yield sqlite_url
        return
    name = f"cgthub_plan_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(PG_ADMIN, autocommit=True) as admin:
        admin.execute(f'CREATE DATABASE "{name}"')
    url = f"postgresql://{PG_HOST}/{name}"
    try:
        upgrade(url)
        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute("ALTER TABLE search_token SET (autovacuum_enabled = false)")
            conn.execute("ALTER TABLE resource SET (autovacuum_enabled = false)")
        yield url
    finally:
        with psycopg.connect(PG_ADMIN, autocommit=True) as admin:
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.mark.parametrize("unanalysed_url", ["sqlite", "postgres"], indirect=True)
def test_an_identifier_lookup_uses_the_lookup_index_before_any_analyze(unanalysed_url: str) -> None:
    engine = sa.create_engine(normalise_url(unanalysed_url))
    rows = 3000
    try:
        with engine.begin() as conn:
            conn.execute(
                sa.text(
                    "INSERT INTO search_token (resource_type, id, param, system, value) VALUES (:t, :i, :p, :s, :v)"
                ),
                [{"t": "Patient", "i": f"p{n}", "p": "identifier", "s": SYSTEM, "v": f"MRN{n}"} for n in range(rows)],
            )
        lookup = _BY_IDENTIFIER.params(t="Patient", s=SYSTEM, v="MRN17")
        with engine.connect() as conn:
            sql = str(lookup.compile(dialect=conn.dialect, compile_kwargs={"literal_binds": True}))
            if conn.dialect.name == "postgresql":
                plan = json.dumps(conn.exec_driver_sql("EXPLAIN (FORMAT JSON) " + sql).scalar_one())
            else:
                plan = " ".join(str(r[-1]) for r in conn.exec_driver_sql("EXPLAIN QUERY PLAN " + sql))
    finally:
        engine.dispose()
    assert "ix_search_token_lookup" in plan, plan
    assert "ix_search_token_owner" not in plan, plan
