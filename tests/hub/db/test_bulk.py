"""The hot-path bulk writers: rows written through the driver read back exactly as if SQLAlchemy had
written them, and a constraint violation is still SQLAlchemy's IntegrityError (-> Conflict)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import select
from sqlalchemy.exc import DBAPIError, IntegrityError

from hub.db.bulk import insert_tables
from hub.db.models import Resource, ResourceVersion, SearchToken, table_of
from hub.db.uow import Store
from hub.errors import Conflict

T0 = datetime(2026, 11, 25, 10, 0, 0, 123456, tzinfo=UTC)


def _resource(rid: str, at: datetime, *, deleted: bool = False) -> dict[str, object]:
    return {
        "resource_type": "Patient",
        "id": rid,
        "version_id": 1,
        "last_updated": at,
        "deleted": deleted,
        "content": '{"resourceType":"Patient","name":[{"text":"O\'Brien \\"Bob\\", {x}"}]}',
        "content_hash": "ab" * 32,
    }


def test_several_tables_in_one_call_read_back_as_written(store: Store) -> None:
    resources = [_resource("p1", T0), _resource("p2", T0 + timedelta(hours=2), deleted=True)]
    versions = [{**r, "method": "POST"} for r in resources]
    tokens = [
        # A column whose values are all NULL still gets its type (the arrays are cast per column).
        {"resource_type": "Patient", "id": "p1", "param": "identifier", "system": None, "value": "MRN-1"},
        {"resource_type": "Patient", "id": "p2", "param": "identifier", "system": None, "value": "MRN-2"},
    ]
    store.run(
        lambda w: insert_tables(
            w.session,
            [(table_of(Resource), resources), (table_of(ResourceVersion), versions), (table_of(SearchToken), tokens)],
        )
    )
    got = store.read(lambda s: s.execute(select(Resource).order_by(Resource.id)).scalars().all())
    assert [(r.id, r.last_updated, r.deleted, r.content) for r in got] == [
        (r["id"], r["last_updated"], r["deleted"], r["content"]) for r in resources
    ]
    got_versions = store.read(lambda s: s.execute(select(ResourceVersion.id, ResourceVersion.method)).all())
    assert sorted(got_versions) == [("p1", "POST"), ("p2", "POST")]
    got_tokens = store.read(lambda s: s.execute(select(SearchToken.value, SearchToken.system)).all())
    assert sorted(got_tokens) == [("MRN-1", None), ("MRN-2", None)]


def test_empty_batches_write_nothing(store: Store) -> None:
    store.run(lambda w: insert_tables(w.session, [(table_of(Resource), []), (table_of(SearchToken), [])]))
    assert store.read(lambda s: s.execute(select(Resource)).first()) is None


def test_a_duplicate_in_any_table_fails_the_whole_call(store: Store) -> None:
    store.run(lambda w: insert_tables(w.session, [(table_of(Resource), [_resource("p1", T0)])]))
    token = {"resource_type": "Patient", "id": "p9", "param": "identifier", "system": "urn:x", "value": "9"}
    with pytest.raises((IntegrityError, Conflict)):
        store.run(
            lambda w: insert_tables(
                w.session,
                [(table_of(SearchToken), [token]), (table_of(Resource), [_resource("p9", T0), _resource("p1", T0)])],
            )
        )
    # Nothing of the failed call is left: not the token written before the duplicate, not p9.
    assert store.read(lambda s: s.execute(select(Resource.id)).scalars().all()) == ["p1"]
    assert store.read(lambda s: s.execute(select(SearchToken)).first()) is None


def test_a_connection_lost_under_a_driver_level_savepoint_is_retryable_and_not_reused(pg_url: str) -> None:
    """Savepoints and hot-path writes go straight to the driver (hub.db.engine, hub.db.bulk). A
    connection that dies there is reported as the store being unavailable (the edge answers
    "retry"), and it is invalidated as SQLAlchemy's own execution would: the next unit of work
    gets a fresh connection."""
    import time

    import psycopg

    from hub.db.uow import Work, open_store
    from hub.errors import StoreUnavailable
    from tests.conftest import truncate_postgres

    truncate_postgres(pg_url)
    store = open_store(pg_url)
    invalidated: list[bool] = []
    try:

        def killed_mid_job(work: Work) -> None:
            pid = work.session.connection().exec_driver_sql("SELECT pg_backend_pid()").scalar_one()
            with psycopg.connect(pg_url, autocommit=True) as other:
                other.execute("SELECT pg_terminate_backend(%s)", (pid,))
                while other.execute("SELECT 1 FROM pg_stat_activity WHERE pid = %s", (pid,)).fetchone():
                    time.sleep(0.01)  # the backend ends asynchronously
            try:
                with work.session.begin_nested():
                    work.session.connection()  # the SAVEPOINT goes out, through the driver, on a dead connection
            except DBAPIError as exc:
                invalidated.append(exc.connection_invalidated)
                raise

        with pytest.raises(StoreUnavailable):
            store.run(killed_mid_job)
        assert invalidated == [True]
        assert store.run(lambda w: w.session.connection().exec_driver_sql("SELECT 1").scalar_one()) == 1
    finally:
        store.dispose()
