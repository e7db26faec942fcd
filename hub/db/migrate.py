"""Run Alembic migrations programmatically (``cgt-hub db upgrade``, tests, the demo)."""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

from alembic import command
from alembic.config import Config
from sqlalchemy import Connection, Engine
from sqlalchemy.engine import make_url

from hub.db.engine import create_private_sqlite_file, normalise_url

MIGRATIONS = Path(__file__).parent / "migrations"


def alembic_config(database_url: str) -> Config:
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    cfg.set_main_option("sqlalchemy.url", normalise_url(database_url).replace("%", "%%"))
    cfg.set_main_option("file_template", "%%(year)d_%%(month).2d_%%(day).2d_%%(rev)s_%%(slug)s")
    return cfg


def upgrade(database_url: str, revision: str = "heads") -> None:
    url = make_url(normalise_url(database_url))
    if url.drivername.startswith("sqlite"):
        create_private_sqlite_file(url.database)
    command.upgrade(alembic_config(database_url), revision)


@lru_cache(maxsize=1)
def current_heads() -> tuple[str, ...]:
    """This code's migration heads (read once: they do not depend on the database)."""
    from alembic.script import ScriptDirectory

    return tuple(ScriptDirectory.from_config(alembic_config("sqlite://")).get_heads())


class SchemaNotReady(Exception):
    """The database does not carry the schema this code expects."""


def applied_revisions(connection: Connection) -> tuple[str, ...]:
    """The revisions recorded in the database (none on an empty one)."""
    from alembic.runtime.migration import MigrationContext

    return tuple(MigrationContext.configure(connection).get_current_heads())


def check_schema(engine: Engine, database_url: str) -> None:
    """Refuse a database that is not at this code's migration heads: an empty database (never
    upgraded) or one migrated by older or newer code. The server would otherwise start, answer
    /readyz, and fail every request and background loop."""
    with engine.connect() as conn:
        applied = set(applied_revisions(conn))
        conn.rollback()
    expected = set(current_heads())
    if applied == expected:
        return
    where = make_url(normalise_url(database_url)).render_as_string(hide_password=True)
    if not applied:
        raise SchemaNotReady(f"the database {where} has no hub schema: run `cgt-hub db upgrade` first")
    raise SchemaNotReady(
        f"the database {where} is at revision {', '.join(sorted(applied))}, this code expects "
        f"{', '.join(sorted(expected))}: run `cgt-hub db upgrade` (or run the code that matches the database)"
    )
