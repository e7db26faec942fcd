"""Shared bench helpers: fresh databases on both back ends, timing, and a printed table."""

from __future__ import annotations

import os
import platform
import shutil
import statistics
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import psycopg

from hub.db.migrate import upgrade

REPO = Path(__file__).resolve().parents[1]
PG_ADMIN = os.environ.get("CGTHUB_BENCH_PG_ADMIN", "host=127.0.0.1 port=5432 user=postgres dbname=test")
PG_HOST = os.environ.get("CGTHUB_BENCH_PG_HOST", "postgres@127.0.0.1:5432")


@contextmanager
def fresh_database(kind: str) -> Iterator[str]:
    """A migrated, empty database: a SQLite file in a temp dir, or a new PostgreSQL database."""
    if kind == "sqlite":
        tmp = Path(tempfile.mkdtemp(prefix="cgthub-bench-"))
        url = f"sqlite:///{tmp / 'bench.db'}"
        upgrade(url)
        try:
            yield url
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        return
    name = f"cgthub_bench_{uuid.uuid4().hex[:8]}"
    admin = psycopg.connect(PG_ADMIN, autocommit=True)
    admin.execute(f'CREATE DATABASE "{name}"')
    url = f"postgresql://{PG_HOST}/{name}"
    upgrade(url)
    try:
        yield url
    finally:
        admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        admin.close()


def machine() -> str:
    python = f"{platform.python_implementation()} {platform.python_version()}"
    return f"{python}, {os.cpu_count()} CPUs, {platform.machine()}"


def percentile(values: list[float], p: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    k = max(0, min(len(ordered) - 1, round(p / 100 * (len(ordered) - 1))))
    return ordered[k]


def timed(fn: Callable[[], object]) -> float:
    started = time.perf_counter()
    fn()
    return time.perf_counter() - started


def median(values: list[float]) -> float:
    return statistics.median(values)
