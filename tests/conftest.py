"""Shared fixtures: the embedded SQLite store and the machine's PostgreSQL, migrated by Alembic.

Store tests are parametrised over both back ends. SQLite gets a fresh copy of a migrated template
file per test; PostgreSQL gets one database per test session, migrated once and truncated before
each test (the hub commits for real, so a rolled-back outer transaction would test nothing).

Locally a test whose server is unreachable is skipped, saying so; under CI (CI=true) it fails.
"""

from __future__ import annotations

import os
import shutil
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import psycopg
import pytest

from adapters.registry import channel_schemas
from hub.db.migrate import upgrade
from hub.db.models import Base
from hub.db.uow import Store, open_store
from hub.partners.loader import PartnerDirectory, load_directory

REPO = Path(__file__).resolve().parents[1]


def _corpora() -> Path:
    """The shared third-party corpora: $CGTHUB_CORPORA, else ../shared/corpora next to the checkout,
    else this workplace's /work/shared/corpora (a clone made elsewhere, e.g. in /tmp)."""
    candidates = [Path(os.environ["CGTHUB_CORPORA"])] if os.environ.get("CGTHUB_CORPORA") else []
    candidates += [REPO.parent / "shared" / "corpora", Path("/work/shared/corpora")]
    for candidate in candidates:
        if (candidate / "MANIFEST.tsv").is_file():
            return candidate
    raise RuntimeError(f"third-party test corpora not found (looked in {candidates}); set CGTHUB_CORPORA")


CORPORA = _corpora()
CI = os.environ.get("CI") == "true"
PG_ADMIN = os.environ.get("CGTHUB_TEST_PG_ADMIN", "host=127.0.0.1 port=5432 user=postgres dbname=test")
PG_HOST = os.environ.get("CGTHUB_TEST_PG_HOST", "postgres@127.0.0.1:5432")
AMQP_URL = os.environ.get("CGTHUB_TEST_AMQP", "amqp://guest:guest@127.0.0.1:5672/")


def unavailable(what: str, why: str) -> None:
    if CI:
        pytest.fail(f"{what} is unreachable under CI: {why}")
    pytest.skip(f"{what} is unreachable here ({why}); CI runs this test")


@pytest.fixture(scope="session")
def sqlite_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("template") / "hub.db"
    upgrade(f"sqlite:///{path}")
    return path


def pg_admin() -> psycopg.Connection:
    """An autocommit connection to the machine's PostgreSQL as its administrator (skip or fail,
    as ``unavailable`` says, when it cannot be reached)."""
    try:
        return psycopg.connect(PG_ADMIN, autocommit=True, connect_timeout=3)
    except psycopg.Error as exc:
        unavailable("PostgreSQL", type(exc).__name__)
        raise


@contextmanager
def new_pg_database(prefix: str) -> Iterator[str]:
    """A new PostgreSQL database migrated to head, dropped afterwards; yields its URL."""
    name = f"{prefix}_{os.getpid()}_{uuid.uuid4().hex[:6]}"
    with pg_admin() as admin:
        admin.execute(f'CREATE DATABASE "{name}"')
        try:
            url = f"postgresql://{PG_HOST}/{name}"
            upgrade(url)
            yield url
        finally:
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture(scope="session")
def pg_url() -> Iterator[str]:
    with new_pg_database("cgthub_test") as url:
        yield url


def truncate_postgres(url: str) -> None:
    tables = ", ".join(f'"{t.name}"' for t in Base.metadata.sorted_tables)
    with psycopg.connect(url.replace("postgresql://", "postgresql://", 1), autocommit=True) as conn:
        conn.execute(f"TRUNCATE {tables} RESTART IDENTITY CASCADE")
        conn.execute("INSERT INTO audit_head (id, seq, hash) VALUES (1, 0, %s)", ("0" * 64,))


@pytest.fixture(params=["sqlite", "postgres"])
def db_url(request: pytest.FixtureRequest, tmp_path: Path, sqlite_template: Path) -> str:
    if request.param == "sqlite":
        target = tmp_path / "hub.db"
        shutil.copy(sqlite_template, target)
        return f"sqlite:///{target}"
    url: str = request.getfixturevalue("pg_url")
    truncate_postgres(url)
    return url


@pytest.fixture
def sqlite_url(tmp_path: Path, sqlite_template: Path) -> str:
    target = tmp_path / "hub.db"
    shutil.copy(sqlite_template, target)
    return f"sqlite:///{target}"


@pytest.fixture
def store(db_url: str) -> Iterator[Store]:
    s = open_store(db_url)
    try:
        yield s
    finally:
        s.dispose()


@pytest.fixture(scope="session")
def partners() -> PartnerDirectory:
    directory, errors = load_directory(REPO / "partner-profiles", channel_schemas())
    assert not errors, errors
    return directory


@pytest.fixture
def amqp_url() -> str:
    import socket

    try:
        socket.create_connection(("127.0.0.1", 5672), timeout=2).close()
    except OSError as exc:
        unavailable("RabbitMQ", type(exc).__name__)
    return AMQP_URL
