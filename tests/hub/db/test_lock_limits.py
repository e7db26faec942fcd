"""PostgreSQL lock limits (hub/db/engine.py, LockLimits): a stalled hub process cannot hold every
other one up, and a message caught behind someone else's lock is told to retry, not left waiting."""

from __future__ import annotations

import socket
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


def test_every_hub_connection_has_a_connect_timeout_and_tcp_keepalives(limited: Store) -> None:
    """Without them a partitioned server hangs a connection attempt, or a pooled connection, forever."""
    with limited.write_engine.connect() as conn:
        params = conn.connection.driver_connection.info.get_parameters()  # type: ignore[union-attr]
    assert params["connect_timeout"] == "10"
    assert (params["keepalives"], params["keepalives_idle"], params["keepalives_interval"]) == ("1", "30", "10")
    assert (params["keepalives_count"], params["tcp_user_timeout"]) == ("3", "60000")
    limits = Settings(db_connect_timeout_s=3, db_keepalive_idle_s=5).lock_limits.connect_args()
    assert (limits["connect_timeout"], limits["keepalives_idle"]) == (3, 5)
    with pytest.raises(ValueError, match="positive"):
        LockLimits(keepalive_count=0).connect_args()


def test_a_server_that_never_answers_is_unavailable_after_the_connect_timeout() -> None:
    """A server whose kernel accepts the connection but which says nothing (hung, or a proxy in
    front of a partitioned one): reading fails as StoreUnavailable after the connect timeout.
    libpq's default is to wait forever."""
    silent = socket.create_server(("127.0.0.1", 0))  # listens; never accepts, never answers
    port = silent.getsockname()[1]
    store = open_store(
        f"postgresql://postgres@127.0.0.1:{port}/hub", check=False, limits=LockLimits(connect_timeout_s=2)
    )
    outcome: dict[str, object] = {}

    def read() -> None:
        started = time.monotonic()
        try:
            store.read(lambda s: s.execute(text("SELECT 1")).scalar_one())
        except Exception as exc:
            outcome["error"] = exc
        outcome["waited"] = time.monotonic() - started

    reader = threading.Thread(target=read, daemon=True)
    try:
        reader.start()
        reader.join(timeout=15)
        assert not reader.is_alive(), "the read was still waiting for a server that never answers"
    finally:
        silent.close()  # resets the pending connection: a reader still waiting ends
        reader.join(timeout=5)
        store.dispose()
    assert isinstance(outcome["error"], StoreUnavailable)
    assert 1.5 < float(str(outcome["waited"])) < 10
