from __future__ import annotations

import math
import os
import stat
import threading
import time
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from pydantic import SecretStr
from sqlalchemy import text

from hub.db.engine import DurabilityError, check_durability, make_engines
from hub.db.migrate import upgrade
from hub.db.uow import Store, WalCheckpointer, open_store
from hub.settings import Environment, ProductionConfigError, Settings
from tests.conftest import pg_admin


def test_production_refuses_default_or_empty_secrets() -> None:
    with pytest.raises(ProductionConfigError, match="CGTHUB_SECRET_KEY"):
        Settings(env=Environment.production).check_production()
    with pytest.raises(ProductionConfigError, match="shorter"):
        Settings(
            env=Environment.production, secret_key=SecretStr("x" * 10), operator_token=SecretStr("y" * 40)
        ).check_production()
    Settings(
        env=Environment.production,
        secret_key=SecretStr("x" * 40),
        operator_token=SecretStr("y" * 40),
        public_url="https://hub.example.org",
    ).check_production()
    Settings().check_production()  # development mode may use defaults


def test_production_needs_the_public_url() -> None:
    """Without it the SMART token endpoint's audience came from the request's Host header."""
    with pytest.raises(ProductionConfigError, match="CGTHUB_PUBLIC_URL"):
        Settings(
            env=Environment.production, secret_key=SecretStr("x" * 40), operator_token=SecretStr("y" * 40)
        ).check_production()
    assert Settings(public_url="https://hub.example.org/cgt/").public_url == "https://hub.example.org/cgt"
    for bad in ("hub.example.org", "ftp://hub.example.org", "https://hub.example.org/?x=1", "https://a@b.example"):
        with pytest.raises(ValueError, match="CGTHUB_PUBLIC_URL"):
            Settings(public_url=bad)


def test_settings_from_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CGTHUB_DATABASE_URL", "postgresql://x@y/z")
    monkeypatch.setenv("CGTHUB_BUS_URL", "amqp://guest:guest@localhost/")
    monkeypatch.setenv("CGTHUB_MLLP_TLS__CERT_FILE", "/run/secrets/mllp.pem")
    monkeypatch.setenv("CGTHUB_MLLP_TLS__CA_FILE", "/run/secrets/partners-ca.pem")
    monkeypatch.setenv("CGTHUB_MLLP_TLS__CLIENT_AUTH", "required")
    s = Settings()
    assert s.database_url == "postgresql://x@y/z"
    assert s.bus_url.startswith("amqp://")
    assert s.mllp_tls.client_auth == "required"
    assert "x" not in repr(s.secret_key)


def test_sqlite_engine_is_durable(tmp_path) -> None:  # type: ignore[no-untyped-def]
    write, _ = make_engines(f"sqlite:///{tmp_path}/x.db")
    check_durability(write)
    with write.connect() as conn:
        assert conn.exec_driver_sql("PRAGMA synchronous").scalar_one() == 2
        assert conn.exec_driver_sql("PRAGMA journal_mode").scalar_one() == "wal"


def test_a_new_sqlite_database_is_readable_by_its_owner_only(tmp_path: Path) -> None:
    """Every patient's record is in it: under umask 022 the file, its WAL and ./var were created
    readable by every local user. The WAL and SHM files take the database file's mode."""
    (tmp_path / "other").mkdir()
    (tmp_path / "other").chmod(0o755)  # the operator's own directory
    old = os.umask(0o022)
    try:
        upgrade(f"sqlite:///{tmp_path}/var/hub/cgthub.db")
        write, read = make_engines(f"sqlite:///{tmp_path}/other/x.db")
        with write.connect() as conn:
            with conn.begin():
                conn.exec_driver_sql("CREATE TABLE t (x TEXT)")
                conn.exec_driver_sql("INSERT INTO t VALUES ('Rivera')")
            modes = {p.name: stat.S_IMODE(p.stat().st_mode) for p in (tmp_path / "other").iterdir()}
        write.dispose()
        read.dispose()
    finally:
        os.umask(old)
    assert modes == {"x.db": 0o600, "x.db-wal": 0o600, "x.db-shm": 0o600}
    assert stat.S_IMODE((tmp_path / "var" / "hub" / "cgthub.db").stat().st_mode) == 0o600
    for directory in ("var", "var/hub"):
        assert stat.S_IMODE((tmp_path / directory).stat().st_mode) == 0o700, directory
    assert stat.S_IMODE((tmp_path / "other").stat().st_mode) == 0o755  # an existing directory is left alone


@pytest.mark.postgres
def test_postgres_with_synchronous_commit_off_is_refused() -> None:
    role = f"cgthub_async_{uuid.uuid4().hex[:6]}"
    admin = pg_admin()
    admin.execute(f"CREATE ROLE {role} LOGIN")
    admin.execute(f"ALTER ROLE {role} SET synchronous_commit = off")
    try:
        write, _ = make_engines(f"postgresql://{role}@127.0.0.1:5432/test")
        with pytest.raises(DurabilityError, match="synchronous_commit=off"):
            check_durability(write)
        write.dispose()
        ok, _ = make_engines("postgresql://postgres@127.0.0.1:5432/test")
        check_durability(ok)
        ok.dispose()
    finally:
        admin.execute(f"DROP ROLE {role}")
        admin.close()


def test_a_caller_that_stops_waiting_does_not_stop_the_committer(sqlite_url: str) -> None:
    """An asyncio caller cancelled while its job runs (a closed connection, a shutdown) must not
    kill the committer thread: later jobs still commit."""
    import asyncio
    import threading

    from hub.db.uow import open_store

    store = open_store(sqlite_url)
    gate = threading.Event()

    def slow(work: object) -> str:
        gate.wait(5)
        return "slow"

    committer = store.start_committer()

    async def go() -> str:
        task = asyncio.create_task(store.run_async(slow))
        await asyncio.sleep(0.05)
        task.cancel()
        gate.set()
        await asyncio.sleep(0.1)
        return await store.run_async(lambda w: "after")

    try:
        assert asyncio.run(go()) == "after"
        assert committer.alive  # the same thread, not a replacement
    finally:
        store.dispose()


def test_a_committer_whose_thread_died_is_replaced(sqlite_url: str, caplog: pytest.LogCaptureFixture) -> None:
    """A committer thread that ended by an exception is no longer alive and says so in the log; a
    job queued to it is answered "retry later" instead of waiting forever; the next write starts
    a new committer."""
    from hub.db.uow import Committer
    from hub.errors import StoreUnavailable

    store = open_store(sqlite_url)
    dead = Committer(store, batch_max=8)
    release = threading.Event()

    def crash() -> None:
        release.wait(5)
        raise RuntimeError("thread crashed")

    dead._serve = crash  # type: ignore[method-assign]
    dead.start()
    queued = dead.submit(lambda w: "never run")  # queued while the thread is still alive
    release.set()
    for t in dead._threads:
        t.join(5)
    late = dead.submit(lambda w: "never run either")  # queued after the thread has gone
    try:
        assert not dead.alive
        assert "committer thread ended by RuntimeError" in caplog.text
        for future in (queued, late):
            assert isinstance(future.exception(timeout=5), StoreUnavailable)
        store._committer = dead
        fresh = store.start_committer()
        assert fresh is not dead
        assert fresh.alive
        assert store.run(lambda w: "committed") == "committed"
    finally:
        store.dispose()


def test_a_write_after_the_committer_stopped_is_refused_not_stranded(sqlite_url: str) -> None:
    from hub.errors import StoreUnavailable

    store = open_store(sqlite_url)
    committer = store.start_committer()
    try:
        assert committer.submit(lambda w: "before").result(timeout=5) == "before"
        committer.stop()
        assert isinstance(committer.submit(lambda w: "after").exception(timeout=5), StoreUnavailable)
    finally:
        store.dispose()


_BODY = bytes(range(256)) * 32  # 8 KiB: two pages and more per job


def _scratch_store(sqlite_url: str, restart_frames: int) -> tuple[Store, WalCheckpointer, Callable[[int], None]]:
    """A store with a scratch table, its committer running and its WAL checkpointer on a short
    tick and a small threshold, and a job that writes one 8 KiB row through the committer."""
    store = open_store(sqlite_url)
    with store.write_engine.begin() as conn:
        conn.execute(text("CREATE TABLE scratch (id INTEGER PRIMARY KEY, body BLOB NOT NULL)"))
    store.start_committer()
    checkpointer = store._checkpointer
    assert checkpointer is not None
    checkpointer.interval_s = 0.02
    checkpointer.restart_frames = restart_frames

    def write(_: int) -> None:
        store.run(lambda w: w.session.execute(text("INSERT INTO scratch (body) VALUES (:b)"), {"b": _BODY}))

    return store, checkpointer, write


def _scratch_rows(store: Store) -> int:
    return int(store.read(lambda s: s.execute(text("SELECT count(*) FROM scratch")).scalar_one()))


def test_the_wal_is_truncated_under_steady_writes(sqlite_url: str) -> None:
    """Under steady writes a PASSIVE checkpoint never lets SQLite restart its WAL (checkpoint
    starvation): the WAL and its mapped index grew without bound (3.2 GB after 100,000 HL7
    messages). The committer truncates it between batches once it passes the threshold."""
    store, checkpointer, write = _scratch_store(sqlite_url, restart_frames=256)  # ~1 MiB of 4 KiB pages
    wal = Path(store.write_engine.url.database + "-wal")  # type: ignore[operator]
    stop = threading.Event()
    sizes: list[int] = []

    def watch() -> None:
        while not stop.is_set():
            sizes.append(wal.stat().st_size if wal.exists() else 0)
            _scratch_rows(store)  # a reader too
            stop.wait(0.005)

    watcher = threading.Thread(target=watch)
    watcher.start()
    try:
        with ThreadPoolExecutor(16) as pool:
            list(pool.map(write, range(4000)))  # ~40 MiB of WAL frames written in all
    finally:
        stop.set()
        watcher.join()
    try:
        assert checkpointer.truncations >= 1
        assert max(sizes) < 24 * 2**20, f"the WAL grew to {max(sizes) / 2**20:.0f} MiB"
        assert _scratch_rows(store) == 4000
    finally:
        store.dispose()


def test_a_long_reader_holds_up_the_wal_truncation_but_not_the_writes(sqlite_url: str) -> None:
    """A reader on an old snapshot (a long report) keeps the WAL from being truncated. The writer
    then tries again only after a doubling back-off, so writes go on instead of waiting on every
    batch."""
    store, checkpointer, write = _scratch_store(sqlite_url, restart_frames=64)
    attempts: list[bool] = []
    truncate = checkpointer.truncate

    def counted(readers_wait_ms: int = 100) -> bool:
        attempts.append(truncate(readers_wait_ms))
        return attempts[-1]

    checkpointer.truncate = counted  # type: ignore[method-assign]
    reader = store.read_engine.connect()
    try:
        assert reader.exec_driver_sql("SELECT count(*) FROM scratch").scalar_one() == 0  # holds its snapshot
        started = time.monotonic()
        with ThreadPoolExecutor(8) as pool:
            list(pool.map(write, range(1500)))
        elapsed = time.monotonic() - started
        assert attempts, "the WAL passed its threshold: the writer must have tried"
        assert not any(attempts), "nothing can be truncated under an old snapshot"
        # Back-off doubling from 20 ms: about log2(elapsed / 0.02) + 1 attempts, not one per batch.
        assert len(attempts) <= 3 + math.log2(max(elapsed, 0.02) / 0.02), (len(attempts), elapsed)
    finally:
        reader.rollback()
        reader.close()
    try:
        assert _scratch_rows(store) == 1500
    finally:
        store.dispose()


@pytest.mark.parametrize(
    ("host", "local"),
    [
        *[("127.0.0.1", True), ("127.0.0.2", True), ("::1", True), ("[::1]", True), ("localhost", True)],
        *[("0.0.0.0", False), ("", False), ("::", False), ("10.1.2.3", False), ("hub.example.org", False)],
    ],
)
def test_development_secrets_are_served_on_loopback_only(host: str, local: bool) -> None:
    """CGTHUB_ENV defaults to development: `serve --host 0.0.0.0` without it ran with the secrets
    published in the source, so anyone reaching the port was a hub operator."""
    if local:
        Settings().check_exposure(host)
    else:
        with pytest.raises(ProductionConfigError, match="CGTHUB_SECRET_KEY and CGTHUB_OPERATOR_TOKEN"):
            Settings().check_exposure(host)
    own = Settings(secret_key=SecretStr("s" * 40), operator_token=SecretStr("o" * 40))
    own.check_exposure(host)  # the operator's own secrets: served anywhere
