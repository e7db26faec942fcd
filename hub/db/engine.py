"""Engines for the two back ends, with their durability settings checked.

SQLite (embedded default): WAL, ``synchronous=FULL``, ``foreign_keys=ON`` and ``BEGIN IMMEDIATE``
for every write transaction (plain ``BEGIN`` loses or refuses concurrent read-modify-writes; see
LIBRARIES.md). Reads use a second engine whose transactions are deferred, so they never take the
write lock.

PostgreSQL: psycopg 3. The hub refuses to start when ``fsync`` or ``synchronous_commit`` is off,
because then an acknowledged message could vanish in a crash. Every connection also gets a
``lock_timeout`` and an ``idle_in_transaction_session_timeout`` (``LockLimits``): one stalled hub
process must not stall the others.
"""

from __future__ import annotations

import contextlib
import math
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, create_engine, event, text
from sqlalchemy.engine import make_url

from hub.db.bulk import driver_errors

# How long a SQLite connection waits for a lock before it reports the database busy.
SQLITE_BUSY_TIMEOUT_MS = 30000


class DurabilityError(RuntimeError):
    """The database would acknowledge commits it has not made durable."""


def normalise_url(url: str) -> str:
    """Accept ``postgresql://`` and ``postgres://`` and select the psycopg 3 driver."""
    if url.startswith("postgres://"):
        url = "postgresql://" + url[len("postgres://") :]
    if url.startswith("postgresql://"):
        url = "postgresql+psycopg://" + url[len("postgresql://") :]
    return url


def create_private_sqlite_file(database: str | None) -> None:
    """Create a new SQLite database file readable by its owner only, in a directory made the same
    way if it is missing. The file holds every patient's record; under the usual umask 022 SQLite
    created it (and its -wal and -shm files, which take the database file's mode) readable by every
    local user. An existing file or directory is left as the operator set it."""
    if not database or database == ":memory:" or database.startswith("file:"):
        return
    path = Path(database)
    missing = [p for p in (path.parent, *path.parent.parents) if not p.exists()]
    for directory in reversed(missing):
        with contextlib.suppress(FileExistsError):  # another process made it first
            directory.mkdir(mode=0o700)
    with contextlib.suppress(FileExistsError):
        os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))


def _sqlite_engine(url: str, *, immediate: bool) -> Engine:
    create_private_sqlite_file(make_url(url).database)
    engine = create_engine(
        url,
        connect_args={"timeout": SQLITE_BUSY_TIMEOUT_MS / 1000, "check_same_thread": False},
        pool_size=8,
        max_overflow=8,
    )

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_conn: Any, _record: Any) -> None:
        # Take transaction control away from pysqlite so BEGIN is ours to emit.
        dbapi_conn.isolation_level = None
        cur = dbapi_conn.cursor()
        cur.execute("PRAGMA journal_mode=WAL")
        cur.execute("PRAGMA synchronous=FULL")
        cur.execute("PRAGMA foreign_keys=ON")
        cur.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_MS}")
        cur.execute("PRAGMA cache_size=-65536")  # 64 MiB page cache per connection
        cur.close()

    @event.listens_for(engine, "begin")
    def _on_begin(conn: Any) -> None:
        conn.exec_driver_sql("BEGIN IMMEDIATE" if immediate else "BEGIN")

    return engine


@dataclass(frozen=True)
class LockLimits:
    """PostgreSQL session limits that keep one stalled process from stalling every other one.

    Every writer meets at the audit head's row lock right before COMMIT. A hub process that stops
    while it holds that lock (a SIGSTOP, a frozen VM, a debugger, a swap storm) would otherwise
    hold it forever, and every other process would wait with it: CI once caught an edge worker
    waiting behind a stopped worker 0 with no answer for its HL7 sender.

    - ``idle_in_transaction_s``: PostgreSQL ends a hub session that sits inside a transaction
      without sending anything for this long. The hub's own transactions never wait on anything
      but the database (network calls to partners happen between transactions), so only a
      stalled process reaches it; its transaction rolls back and it retries when it wakes.
    - ``lock_timeout_s``: a statement that waits this long for a lock fails, so a message caught
      behind a lock held by someone else gets "store unavailable, retry" (HL7 AE/CE, HTTP 503)
      instead of no answer. Kept below the 30 s that interface engines commonly wait for an ACK.
    """

    lock_timeout_s: float = 15.0
    idle_in_transaction_s: float = 60.0
    # How long the hub waits for a server that does not answer, on the network itself (libpq):
    # - ``connect_timeout_s``: establishing a connection (a partitioned or hung server) fails
    #   after this long instead of never (libpq's default waits forever; its minimum is 2 s).
    # - ``keepalive_idle_s``: TCP keepalives start after this idle time and, with
    #   ``keepalive_interval_s`` x ``keepalive_count`` unanswered probes, end a connection to a
    #   server that is gone (a pooled connection would otherwise look alive for hours, and a
    #   query on it wait for ~15 minutes of retransmissions). ``tcp_user_timeout`` is the same
    #   bound for data sent and never acknowledged (keepalives are not sent while data is in
    #   flight). A server that is stopped but whose kernel still answers (SIGSTOP) is not
    #   detected by either: the event loop stays free (blocking calls run in threads) and
    #   /readyz answers "not ready" within its own bound.
    connect_timeout_s: float = 10.0
    keepalive_idle_s: float = 30.0
    keepalive_interval_s: float = 10.0
    keepalive_count: int = 3

    def connect_args(self) -> dict[str, Any]:
        """libpq connection parameters for the limits above."""
        if min(self.connect_timeout_s, self.keepalive_idle_s, self.keepalive_interval_s, self.keepalive_count) <= 0:
            raise ValueError("a PostgreSQL connection limit must be positive (0 would mean: wait forever)")
        dead_after_s = self.keepalive_idle_s + self.keepalive_interval_s * self.keepalive_count
        return {
            "connect_timeout": max(2, math.ceil(self.connect_timeout_s)),
            "keepalives": 1,
            "keepalives_idle": max(1, math.ceil(self.keepalive_idle_s)),
            "keepalives_interval": max(1, math.ceil(self.keepalive_interval_s)),
            "keepalives_count": self.keepalive_count,
            "tcp_user_timeout": _milliseconds(dead_after_s),
        }

    def statements(self) -> list[str]:
        return [
            f"SET lock_timeout = {_milliseconds(self.lock_timeout_s)}",
            f"SET idle_in_transaction_session_timeout = {_milliseconds(self.idle_in_transaction_s)}",
        ]


def _milliseconds(seconds: float) -> int:
    if seconds <= 0:
        raise ValueError("a PostgreSQL lock limit must be positive (0 would mean: wait forever)")
    return max(1, round(seconds * 1000))


def _postgres_engine(url: str, limits: LockLimits) -> Engine:
    # prepare_threshold=None: psycopg's automatic server-side prepares made the hub's identifier
    # lookups ~5x slower here (generic plans). Multi-row INSERTs go out as one statement
    # (insertmanyvalues) instead of one execution per row: ~2x faster measured on this machine.
    engine = create_engine(
        url,
        pool_size=10,
        max_overflow=10,
        pool_pre_ping=True,
        connect_args={"prepare_threshold": None, **limits.connect_args()},
    )
    engine.dialect.use_insertmanyvalues_wo_returning = True
    statements = limits.statements()

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_conn: Any, _record: Any) -> None:
        # Session settings, once per new connection; autocommit so the SETs are not left inside
        # a transaction SQLAlchemy does not know about.
        dbapi_conn.autocommit = True
        for statement in statements:
            dbapi_conn.execute(statement)
        dbapi_conn.autocommit = False

    return engine


_SAVEPOINT_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,62}")


def _fast_savepoints(engine: Engine) -> Engine:
    """Emit SAVEPOINT / RELEASE / ROLLBACK TO as plain driver SQL.

    SQLAlchemy executes them as expression constructs, and every savepoint has a new name
    (``sa_savepoint_N``), so each one missed the compiled cache, was compiled afresh and pushed a
    useful statement out of that cache: 0.35 ms per savepoint measured on this machine against
    0.004 ms for the same SQL sent to the driver. The group committer opens one savepoint per job,
    the inbox another one per message, so this was a large share of every write. The ORM's
    savepoint bookkeeping (what to expunge on rollback) is untouched: only the SQL text changes.

    The statements go to the driver itself, not through ``exec_driver_sql``: SQLAlchemy's execution
    context still cost ~13 µs per SAVEPOINT/RELEASE pair against ~1.3 µs (SQLite, 2026-12-03),
    ~10 % of the committer's time on the webhook path. Driver errors are raised as SQLAlchemy's
    exception classes, as the bulk writer does (``hub.db.bulk.driver_errors``)."""

    def checked(name: str) -> str:
        if not _SAVEPOINT_NAME.fullmatch(name):
            raise ValueError(f"unexpected savepoint name {name!r}")
        return name

    def run(connection: Any, statement: str) -> None:
        with driver_errors(connection, statement):
            connection.connection.driver_connection.execute(statement)

    def do_savepoint(connection: Any, name: str) -> None:
        run(connection, f"SAVEPOINT {checked(name)}")

    def do_rollback_to_savepoint(connection: Any, name: str) -> None:
        run(connection, f"ROLLBACK TO SAVEPOINT {checked(name)}")

    def do_release_savepoint(connection: Any, name: str) -> None:
        run(connection, f"RELEASE SAVEPOINT {checked(name)}")

    dialect: Any = engine.dialect
    dialect.do_savepoint = do_savepoint
    dialect.do_rollback_to_savepoint = do_rollback_to_savepoint
    dialect.do_release_savepoint = do_release_savepoint
    return engine


def make_engines(database_url: str, limits: LockLimits | None = None) -> tuple[Engine, Engine]:
    """Return ``(write_engine, read_engine)``. On PostgreSQL both are the same engine."""
    url = normalise_url(database_url)
    if url.startswith("sqlite"):
        return _fast_savepoints(_sqlite_engine(url, immediate=True)), _sqlite_engine(url, immediate=False)
    if url.startswith("postgresql"):
        engine = _fast_savepoints(_postgres_engine(url, limits or LockLimits()))
        return engine, engine
    raise ValueError(f"unsupported database URL scheme: {make_url(url).drivername}")


def check_durability(engine: Engine) -> None:
    """Refuse a database that would lose committed transactions in a crash."""
    with engine.connect() as conn:
        if engine.dialect.name == "postgresql":
            fsync = conn.execute(text("SHOW fsync")).scalar_one()
            sync_commit = conn.execute(text("SHOW synchronous_commit")).scalar_one()
            if str(fsync).lower() != "on":
                raise DurabilityError("PostgreSQL has fsync=off; refusing to start")
            if str(sync_commit).lower() in {"off", "local"}:
                raise DurabilityError(
                    f"PostgreSQL has synchronous_commit={sync_commit}; refusing to start "
                    "(acknowledged messages could be lost in a crash)"
                )
        elif engine.dialect.name == "sqlite":
            mode = conn.exec_driver_sql("PRAGMA journal_mode").scalar_one()
            sync = conn.exec_driver_sql("PRAGMA synchronous").scalar_one()
            if str(mode).lower() != "wal" or int(sync) < 2:
                raise DurabilityError(f"SQLite journal_mode={mode} synchronous={sync}; want WAL and FULL")
        conn.rollback()
