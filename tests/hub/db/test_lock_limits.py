"""PostgreSQL lock limits (hub/db/engine.py, LockLimits): a stalled hub process cannot hold every
other one up, and a message caught behind someone else's lock is told to retry, not left waiting."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator

import psycopg
import pytest
from sqlalchemy import text
from sqlalchemy.exc import DBAPIError

from hub.db.engine import LockLimits
from hub.db.uow import Store, Work, open_store
from hub.errors import StoreUnavailable
from hub.settings import Settings
from tests.conftest import truncate_postgres

pytestmark = pytest.mark.postgres

HEAD_LOCK = "SELECT seq FROM audit_head WHERE id = 1 FOR UPDATE"


def audited(work: Work) -> str:
    work.audit("create", "LockProbe", "1", new={"probe": True}, reason="lock-limit test")
    return "committed"


@pytest.fixture
def clean_pg(pg_url: str) -> str:
    truncate_postgres(pg_url)
    return pg_url


@pytest.fixture
def limited(clean_pg: str) -> Iterator[Store]:
    store = open_store(clean_pg, limits=LockLimits(lock_timeout_s=0.5, idle_in_transaction_s=1.0))
    try:
        yield store
    finally:
        store.dispose()


def test_every_hub_connection_carries_the_limits(limited: Store) -> None:
    with limited.write_engine.connect() as conn:
        assert conn.execute(text("SHOW lock_timeout")).scalar_one() == "500ms"
        assert conn.execute(text("SHOW idle_in_transaction_session_timeout")).scalar_one() == "1s"
    defaults = Settings().lock_limits
    assert (defaults.lock_timeout_s, defaults.idle_in_transaction_s) == (15.0, 60.0)
    with pytest.raises(ValueError, match="positive"):
        LockLimits(lock_timeout_s=0).statements()


def test_a_write_behind_a_foreign_lock_is_told_to_retry_then_succeeds(limited: Store, clean_pg: str) -> None:
    """Someone outside the hub holds the audit head: the hub's write fails within its lock timeout
    as StoreUnavailable (what the edges turn into AE/CE or 503), commits nothing, and goes through
    once the lock is gone."""
    with psycopg.connect(clean_pg.replace("postgresql://", "postgresql://", 1)) as holder:
        holder.execute(HEAD_LOCK)
        started = time.monotonic()
        with pytest.raises(StoreUnavailable):
            limited.run(audited)
        assert time.monotonic() - started < 5
        holder.rollback()
    assert limited.run(audited) == "committed"
    with limited.reading() as session:
        assert session.execute(text("SELECT count(*) FROM audit_entry")).scalar_one() == 1


def test_a_stalled_hub_session_holding_the_audit_head_is_ended(limited: Store, clean_pg: str) -> None:
    """A hub process stops inside a transaction that holds the audit head (the one lock every
    writer meets). PostgreSQL ends that session after the idle limit, another process's write
    goes through, and the stalled one finds its transaction gone when it wakes: nothing of it
    was committed."""
    other = open_store(clean_pg, limits=LockLimits(lock_timeout_s=10, idle_in_transaction_s=60))
    try:
        stalled = limited.write_engine.connect()
        stalled.begin()
        stalled.execute(text(HEAD_LOCK))
        result: dict[str, object] = {}

        def write() -> None:
            started = time.monotonic()
            result["value"] = other.run(audited)
            result["waited"] = time.monotonic() - started

        writer = threading.Thread(target=write)
        writer.start()
        writer.join(timeout=20)
        assert not writer.is_alive()
        assert result["value"] == "committed"
        assert 0.5 < float(str(result["waited"])) < 10  # waited for the idle limit, not forever
        with pytest.raises(DBAPIError) as woke:
            stalled.execute(text("UPDATE audit_head SET seq = seq WHERE id = 1"))
        # The hub treats it as a lost connection: the pool drops it and the callers are told to
        # retry (StoreUnavailable), as for any other lost connection.
        assert woke.value.connection_invalidated
        stalled.close()
    finally:
        other.dispose()
