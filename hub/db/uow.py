"""The unit of work: the only module that commits.

An edge (HTTP route, MLLP handler, bus consumer, CLI command) hands the store a *job*, a function
of one :class:`Work`. The job reads and writes through repositories and services; it never
commits. :class:`Store` runs it in a transaction and commits, and only then does the edge
acknowledge the partner.

Group commit: under load, the :class:`Committer` thread runs many jobs in one transaction, each
inside its own SAVEPOINT. A job that fails is rolled back to its savepoint (it writes nothing) and
its caller receives the error; the others commit together with one fsync. Every caller's future
resolves only after COMMIT returned, so "acknowledged" always means "durable".

Audit entries and outbox events are buffered in the Work and flushed at the end of the job,
inside its savepoint: they commit or vanish together with the change they describe.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import queue
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Future, InvalidStateError
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime
from functools import cached_property
from typing import Any, Protocol, TypeVar

import psycopg
from sqlalchemy import Engine
from sqlalchemy.exc import DBAPIError, IntegrityError, InterfaceError, OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeout
from sqlalchemy.orm import Session, sessionmaker

from hub import canonical
from hub.audit.repository import AuditRepository, PendingAudit
from hub.db.bulk import insert_rows
from hub.db.engine import SQLITE_BUSY_TIMEOUT_MS, LockLimits, check_durability, make_engines
from hub.db.models import OutboxEvent, table_of
from hub.db.types import iso_utc, storable, utcnow
from hub.errors import Conflict, HubError, StoreUnavailable
from hub.events import EventPayload, EventType, partition_of
from hub.ids import uuid7

log = logging.getLogger(__name__)
T = TypeVar("T")


class Buffer(Protocol):
    """Writes a domain batches until the end of the job (e.g. the resource store's rows)."""

    def flush(self, session: Session) -> None: ...

    def clear(self) -> None: ...


# The short columns of audit_entry (hub/db/models.py AuditEntry).
_AUDIT_LIMITS = {"actor": 128, "action": 32, "entity_type": 64, "entity_id": 128}


@dataclass
class Work:
    """What a job may touch: the session, the acting identity, one clock reading, and the buffers
    for audit entries, outbox events and batched domain writes."""

    session: Session
    actor: str
    now: datetime
    partitions: int
    _audit: list[PendingAudit] = field(default_factory=list)
    _events: list[dict[str, Any]] = field(default_factory=list)
    buffers: dict[str, Buffer] = field(default_factory=dict)
    _independent: list[Callable[[Work], Any]] = field(default_factory=list)

    def independently(self, job: Callable[[Work], Any]) -> None:
        """Run ``job`` in a transaction of its own once this job's transaction has ended, whether
        it committed or rolled back, before this job's caller is answered. For what must be kept
        because the job failed: a failed signing re-authentication is evidence of an attempt at
        unauthorized use (21 CFR 11.300(d)), and the job's rollback must not erase it.
        ``Work.attempt`` does not undo it either."""
        self._independent.append(job)

    @cached_property
    def now_iso(self) -> str:
        """The job's clock reading in the canonical text form (formatted once per job)."""
        return iso_utc(self.now)

    def audit(
        self,
        action: str,
        entity_type: str,
        entity_id: str,
        *,
        old: Any = None,
        new: Any = None,
        reason: str = "",
        actor: str | None = None,
    ) -> None:
        """Record a create/update/delete. ``old``/``new`` are JSON-able values (or None).

        The entries are written for the whole transaction at COMMIT, outside each job's savepoint:
        an entry the database would refuse must fail here, in its own job, not every job of the
        batch (and again on every retry). So the short columns' limits are checked now, and a NUL,
        which PostgreSQL text cannot hold, is written out (``\\x00``) in what may quote a partner.
        Text that is no Unicode at all (a lone surrogate, e.g. from undecodable bytes read with
        ``surrogateescape``) cannot be hashed or stored, and is refused here too."""
        who = storable(actor or self.actor)
        entity_id = storable(entity_id)
        reason = storable(reason)
        for name, value in (("actor", who), ("action", action), ("entity_type", entity_type), ("entity_id", entity_id)):
            if len(value) > _AUDIT_LIMITS[name]:
                raise ValueError(f"audit {name} longer than {_AUDIT_LIMITS[name]} characters")
        for name, value in (
            ("actor", who),
            ("action", action),
            ("entity_type", entity_type),
            ("entity_id", entity_id),
            ("reason", reason),
        ):
            _encodable(name, value)
        self._audit.append(
            PendingAudit(
                at=self.now_iso,
                actor=who,
                action=action,
                entity_type=entity_type,
                entity_id=entity_id,
                reason=reason,
                old_value="" if old is None else canonical.dumps(old),
                new_value="" if new is None else canonical.dumps(new),
            )
        )

    def emit(self, event_type: EventType, aggregate_id: str, payload: EventPayload) -> str:
        event_id = uuid7()
        self._events.append(
            {
                "event_id": event_id,
                "event_type": event_type.value,
                "aggregate_id": aggregate_id,
                "partition": partition_of(aggregate_id, self.partitions),
                "payload": payload.model_dump_json(),
                "occurred_at": self.now,
                "published_at": None,
            }
        )
        return event_id

    @contextmanager
    def attempt(self, *, savepoint: bool = True) -> Iterator[None]:
        """A nested savepoint: if the body raises, its writes, audit entries and events vanish and
        the exception propagates; the enclosing job can still record the failure and commit.

        ``savepoint=False`` is for bodies that write only through the Work's buffers (audit
        entries, events, batched rows) and issue no statements: their rows stay buffered until the
        job's end, and undoing them needs no savepoint, only dropping what they buffered."""
        self.flush()  # whatever is buffered so far belongs to the enclosing job
        a, e = len(self._audit), len(self._events)
        nested = self.session.begin_nested() if savepoint else None
        try:
            yield
            if nested is not None:
                self.flush()
        except BaseException:
            if nested is not None:
                nested.rollback()
            del self._audit[a:]
            del self._events[e:]
            for buffer in self.buffers.values():
                buffer.clear()
            raise
        else:
            if nested is not None:
                nested.commit()

    def flush(self) -> None:
        """Write the buffered domain rows. Audit entries and events stay with the Work until the
        transaction is about to commit (see :meth:`Store.run_batch`)."""
        for buffer in self.buffers.values():
            buffer.flush(self.session)


def _encodable(name: str, value: str) -> None:
    if not value.isascii():
        try:
            value.encode()
        except UnicodeEncodeError:
            raise ValueError(f"audit {name} is not valid Unicode text (it holds a lone surrogate)") from None


def _finish(session: Session, audit: list[PendingAudit], events: list[dict[str, Any]]) -> None:
    """Chain the transaction's audit entries and write its events, right before COMMIT.

    Chaining last keeps the audit head's row lock (on PostgreSQL the one point every writer meets)
    held for the shortest time: from here to COMMIT, not for the whole batch."""
    if audit:
        AuditRepository.from_session(session).append(audit)
    if events:
        insert_rows(session, table_of(OutboxEvent), events)


Job = Callable[[Work], T]


def _is_connectivity_error(exc: BaseException) -> bool:
    """The database could not be reached or answered nothing usable: a refused or lost connection,
    a server shutting down, a lock or pool wait that timed out, a SQLite file that cannot be
    opened. Retrying later is the answer, not a 500."""
    if isinstance(exc, (OperationalError, InterfaceError, PoolTimeout)):
        return True
    if isinstance(exc, DBAPIError):
        return exc.connection_invalidated
    # Raised by the driver itself, outside SQLAlchemy's wrapping.
    return isinstance(exc, (psycopg.OperationalError, psycopg.InterfaceError, sqlite3.OperationalError))


class Store:
    """Engines, sessions and transactions for one database."""

    def __init__(
        self,
        database_url: str,
        *,
        partitions: int = 4,
        batch_max: int = 256,
        writer_threads: int = 2,
        limits: LockLimits | None = None,
    ) -> None:
        self.database_url = database_url
        self.write_engine, self.read_engine = make_engines(database_url, limits)
        self._write_sessions = sessionmaker(self.write_engine, expire_on_commit=False, autoflush=False)
        self._read_sessions = sessionmaker(self.read_engine, expire_on_commit=False, autoflush=False)
        self.partitions = partitions
        self.batch_max = batch_max
        self.writer_threads = writer_threads
        self._committer: Committer | None = None
        self._checkpointer: WalCheckpointer | None = None

    @property
    def dialect(self) -> str:
        return self.write_engine.dialect.name

    def check(self) -> None:
        check_durability(self.write_engine)

    def dispose(self) -> None:
        if self._committer is not None:
            self._committer.stop()
            self._committer = None
        if self._checkpointer is not None:
            self._checkpointer.stop()
            self._checkpointer = None
        self.write_engine.dispose()
        if self.read_engine is not self.write_engine:
            self.read_engine.dispose()

    # ------------------------------------------------------------------ reads
    @contextmanager
    def reading(self) -> Iterator[Session]:
        """A read-only session. Closing it ends (rolls back) its transaction without expiring the
        objects it loaded, so they stay readable after the block.

        A database that cannot be reached raises :class:`StoreUnavailable` (HTTP 503 with
        Retry-After, OperationOutcome "transient"), as a failed write does, instead of the driver's
        error: a partner's GET during an outage was answered 500 with a traceback in the log."""
        session = self._read_sessions()
        try:
            yield session
        except Exception as exc:
            if isinstance(exc, HubError) or not _is_connectivity_error(exc):
                raise
            log.warning("read failed, store unavailable: %s", type(exc).__name__)
            raise StoreUnavailable() from exc
        finally:
            with contextlib.suppress(Exception):  # closing a lost connection must not hide the error
                session.close()

    def read(self, fn: Callable[[Session], T]) -> T:
        with self.reading() as session:
            return fn(session)

    async def read_async(self, fn: Callable[[Session], T]) -> T:
        """For asyncio edges and workers: the read runs in a thread. Called on the event loop,
        :meth:`read` stops everything the loop serves (health checks, MLLP ACKs, the API) for as
        long as the database takes to answer, which is forever when it hangs."""
        return await asyncio.to_thread(self.read, fn)

    # ------------------------------------------------------------------ writes
    def run(self, job: Job[T], *, actor: str = "system") -> T:
        """Run one job in its own transaction (through the committer when it runs)."""
        if self._committer is not None and self._committer.alive:
            return self._committer.submit(job, actor).result()
        return self.run_batch([(job, actor)])[0].result()

    async def run_async(self, job: Job[T], *, actor: str = "system") -> T:
        """For asyncio edges: awaits the group committer, never blocks the event loop."""
        committer = self.start_committer()
        return await asyncio.wrap_future(committer.submit(job, actor))

    def start_committer(self) -> Committer:
        if self._committer is None or not self._committer.alive:
            threads = 1 if self.dialect == "sqlite" else self.writer_threads
            self._committer = Committer(self, self.batch_max, threads)
            self._committer.start()
            if self.dialect == "sqlite" and self._checkpointer is None:
                self._checkpointer = WalCheckpointer(self.write_engine)
                self._checkpointer.start()
        return self._committer

    def run_batch(self, jobs: list[tuple[Job[Any], str]]) -> list[Future[Any]]:
        """Run jobs in one transaction, each in a savepoint. Returns futures already resolved:
        results only if COMMIT succeeded."""
        futures: list[Future[Any]] = [Future() for _ in jobs]
        outcomes: list[tuple[bool, Any]] = []
        independent: list[tuple[Job[Any], str]] = []
        whole_failed = False
        session = self._write_sessions()
        try:
            with session.begin():
                if self._checkpointer is not None:
                    # The checkpointer thread copies the WAL into the database off the commit path.
                    session.connection().exec_driver_sql("PRAGMA wal_autocheckpoint=0")
                now = utcnow()
                single = len(jobs) == 1
                audit: list[PendingAudit] = []
                events: list[dict[str, Any]] = []
                for job, actor in jobs:
                    work = Work(session=session, actor=actor, now=now, partitions=self.partitions)
                    if single:
                        # No savepoint needed: a failure rolls back the whole transaction.
                        try:
                            result = job(work)
                            work.flush()
                        except Exception as exc:
                            outcomes.append((False, _as_hub_error(exc)))
                            independent += [(j, actor) for j in work._independent]
                            raise _AbortBatch from exc
                        outcomes.append((True, result))
                        audit += work._audit
                        events += work._events
                        independent += [(j, actor) for j in work._independent]
                        continue
                    nested = session.begin_nested()
                    try:
                        result = job(work)
                        work.flush()
                    except Exception as exc:
                        nested.rollback()
                        if _is_connectivity_error(exc):
                            raise
                        outcomes.append((False, _as_hub_error(exc)))
                    else:
                        nested.commit()
                        outcomes.append((True, result))
                        audit += work._audit
                        events += work._events
                    finally:
                        independent += [(j, actor) for j in work._independent]
                _finish(session, audit, events)
        except _AbortBatch:
            pass
        except Exception as exc:
            # The transaction as a whole failed (connection lost, COMMIT failed, disk full):
            # nobody's work is durable, so everyone is told to retry.
            log.error("transaction failed: %s", type(exc).__name__)
            unavailable = StoreUnavailable()
            unavailable.__cause__ = exc
            whole_failed = True
            for f in futures:
                f.set_exception(unavailable)
        finally:
            session.close()
        self._run_independent(independent)
        if whole_failed:  # every caller was answered above
            return futures
        for f, (ok, value) in zip(futures, outcomes, strict=True):
            if ok:
                f.set_result(value)
            elif isinstance(value, HubError) or not _is_connectivity_error(value):
                f.set_exception(value)
            else:
                f.set_exception(StoreUnavailable())
        return futures

    def _run_independent(self, jobs: list[tuple[Job[Any], str]]) -> None:
        """The jobs given to :meth:`Work.independently`, in one transaction of their own (each in
        its savepoint), after the batch's transaction ended. Their failure is logged; it does not
        change what the batch's callers are told."""
        if not jobs:
            return
        for f in self.run_batch(jobs):
            failure = f.exception()
            if failure is not None:
                log.critical("an independent record was not written: %s", type(failure).__name__)


def _as_hub_error(exc: Exception) -> Exception:
    """A uniqueness violation is the partner's duplicate, not our crash: report it as a Conflict
    (the database constraint is what makes concurrent duplicates safe)."""
    if isinstance(exc, IntegrityError) and not isinstance(exc, HubError):
        return duplicate_conflict(exc)
    return exc


def duplicate_conflict(exc: IntegrityError) -> Conflict:
    """A uniqueness violation as the Conflict the partner is answered with."""
    conflict = Conflict("a record with the same identity already exists (concurrent duplicate)")
    conflict.__cause__ = exc
    return conflict


class _AbortBatch(Exception):
    """Internal: roll back a one-job transaction whose job failed."""


_STOP = object()


class WalCheckpointer:
    """SQLite only: checkpoint the WAL from a background thread instead of inside a commit, and
    keep the WAL from growing without bound.

    With automatic checkpoints, every ~1000 pages one unlucky COMMIT also copies the WAL into the
    database file and fsyncs it (measured: commits averaging ~13 ms under load). Here a thread does
    that work while the committer keeps going; sqlite3 releases the GIL during it. Durability is
    unchanged: a committed transaction is in the fsynced WAL either way.

    A PASSIVE checkpoint never lets the WAL start again from its beginning while writes keep coming:
    SQLite restarts the WAL only when a writer begins after *every* frame has been copied back,
    and under steady load new frames always arrive while a checkpoint runs ("checkpoint
    starvation", sqlite.org/wal.html). Measured before this was handled: the WAL reached 3.2 GB
    after 100,000 HL7 messages, its index (``-shm``, mapped into the process) grew with it, and that
    was the hub's slow RSS growth (+7 MB per 100,000 messages). So when a PASSIVE checkpoint finds
    more than ``restart_frames`` frames in the WAL, it asks the committer for a TRUNCATE checkpoint
    between two batches (:meth:`truncate`): the one writer runs it, so it never waits on a writer,
    and most frames are already copied by then, so it is short.
    """

    def __init__(self, engine: Engine, interval_s: float = 0.5, restart_frames: int = 16384) -> None:
        self.engine = engine
        self.interval_s = interval_s
        self.restart_frames = restart_frames  # 16,384 frames of 4 KiB pages: a ~64 MiB WAL
        self.truncate_wanted = threading.Event()
        self.truncations = 0
        self._backoff_s = 0.0
        self._not_before = 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="cgthub-wal-checkpoint", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=30)
        self._checkpoint("TRUNCATE")

    def truncate(self, readers_wait_ms: int = 100) -> bool:
        """Copy the rest of the WAL back and truncate it; True when done. Called by the writer
        between batches. It waits at most ``readers_wait_ms`` for readers of older snapshots (a
        long report, say), and writes wait while it does; so when readers hold it up it is asked
        for again only after a back-off that doubles up to a minute, not after every batch."""
        self.truncate_wanted.clear()
        result = self._checkpoint("TRUNCATE", busy_timeout_ms=readers_wait_ms)
        done = result is not None and result[0] == 0
        if done:
            self.truncations += 1
            self._backoff_s = 0.0
        else:
            self._backoff_s = min(60.0, max(self.interval_s, self._backoff_s * 2))
        self._not_before = time.monotonic() + self._backoff_s
        return done

    def _checkpoint(self, mode: str, busy_timeout_ms: int | None = None) -> tuple[int, int, int] | None:
        """(busy, frames in the WAL, frames copied back), or None when SQLite said no."""
        try:
            raw = self.engine.raw_connection()  # autocommit DB-API connection: no BEGIN around it
            try:
                cur = raw.cursor()
                if busy_timeout_ms is not None:
                    cur.execute(f"PRAGMA busy_timeout={int(busy_timeout_ms)}")
                try:
                    row = cur.execute(f"PRAGMA wal_checkpoint({mode})").fetchone()
                finally:
                    if busy_timeout_ms is not None:
                        cur.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_MS}")
                    cur.close()
            finally:
                raw.close()
        except Exception as exc:  # a busy database is fine: try again on the next tick
            log.debug("wal checkpoint skipped: %s", type(exc).__name__)
            return None
        return (int(row[0]), int(row[1]), int(row[2])) if row is not None else None

    def _loop(self) -> None:
        while not self._stop.wait(self.interval_s):
            result = self._checkpoint("PASSIVE")
            if result is not None and result[1] > self.restart_frames and time.monotonic() >= self._not_before:
                self.truncate_wanted.set()


class Committer:
    """Writer threads that batch concurrent jobs into shared transactions.

    SQLite has one writer at a time, so one thread. PostgreSQL takes several: while one
    transaction waits on the server, another thread's jobs run (row locks and the audit head,
    taken only right before COMMIT, keep them correct)."""

    def __init__(self, store: Store, batch_max: int, threads: int = 1) -> None:
        self.store = store
        self.batch_max = batch_max
        self._queue: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._threads = [
            threading.Thread(target=self._loop, name=f"cgthub-committer-{i}", daemon=True) for i in range(threads)
        ]
        self._stopping = False
        self._running = 0  # threads started and not yet returned
        self._running_lock = threading.Lock()
        self._started = False

    @property
    def alive(self) -> bool:
        # A counter kept by the threads themselves, not Thread.is_alive(): this is asked for every
        # job an asyncio edge submits, and is_alive() takes a lock per thread (1-3 % of a courier
        # webhook's server time in py-spy).
        return self._running > 0 and not self._stopping

    def start(self) -> None:
        self._started = True
        for t in self._threads:
            with self._running_lock:
                self._running += 1
            try:
                t.start()
            except BaseException:
                self._exited()
                raise

    def _exited(self) -> None:
        with self._running_lock:
            self._running -= 1

    def stop(self) -> None:
        self._stopping = True
        for _ in self._threads:
            self._queue.put(_STOP)
        for t in self._threads:
            t.join(timeout=30)

    def submit(self, job: Job[T], actor: str = "system") -> Future[T]:
        outer: Future[T] = Future()
        self._queue.put((job, actor, outer))
        if self._started and self._running == 0:
            # Every thread has ended (stopped, or crashed) and may have drained the queue before
            # this put: nobody would run the job. Checked after the put, so one of the two sides
            # always sees the other.
            self._fail_queued()
        return outer

    def _fail_queued(self) -> None:
        """Answer every job still queued with "retry later" (never run, never acknowledged)."""
        while True:
            try:
                item = self._queue.get_nowait()
            except queue.Empty:
                return
            if item is not _STOP:
                with contextlib.suppress(InvalidStateError):
                    item[2].set_exception(StoreUnavailable())

    def _loop(self) -> None:
        try:
            self._serve()
        except BaseException as exc:  # the thread ends either way; say so (type only: no PHI)
            log.critical("committer thread ended by %s; the next write starts a new one", type(exc).__name__)
        finally:
            self._exited()
            if self._running == 0:
                self._fail_queued()  # after the count: a later submit sees 0 and drains itself

    def _answer(self, batch: list[Any]) -> None:
        try:
            results = self.store.run_batch([(job, actor) for job, actor, _ in batch])
        except BaseException as crash:  # never leave a caller waiting
            for _, _, outer in batch:
                with contextlib.suppress(InvalidStateError):  # the caller may have given up meanwhile
                    outer.set_exception(crash)
            return
        for (_, _, outer), inner in zip(batch, results, strict=True):
            # A caller whose asyncio task was cancelled gave up waiting; its job ran anyway.
            with contextlib.suppress(InvalidStateError):
                failure = inner.exception()
                if failure is None:
                    outer.set_result(inner.result())
                else:
                    outer.set_exception(failure)

    def _serve(self) -> None:
        while True:
            item = self._queue.get()
            if item is _STOP:
                return
            batch = [item]
            stop_after = False
            while len(batch) < self.batch_max:
                try:
                    nxt = self._queue.get_nowait()
                except queue.Empty:
                    break
                if nxt is _STOP:
                    stop_after = True
                    break
                batch.append(nxt)
            try:
                self._answer(batch)
            finally:
                # Whatever happened while answering, no caller of this batch is left waiting.
                for _, _, outer in batch:
                    if not outer.done():
                        with contextlib.suppress(InvalidStateError):
                            outer.set_exception(StoreUnavailable())
            checkpointer = self.store._checkpointer
            if checkpointer is not None and checkpointer.truncate_wanted.is_set():
                checkpointer.truncate()  # between batches: callers already have their answers
            if stop_after:
                return


def open_store(
    database_url: str,
    *,
    partitions: int = 4,
    batch_max: int = 256,
    writer_threads: int = 2,
    check: bool = True,
    limits: LockLimits | None = None,
) -> Store:
    store = Store(
        database_url, partitions=partitions, batch_max=batch_max, writer_threads=writer_threads, limits=limits
    )
    if check:
        store.check()
    return store


__all__ = ["Engine", "Job", "Store", "Work", "duplicate_conflict", "open_store"]
