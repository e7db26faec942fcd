"""Column types that behave the same on SQLite and PostgreSQL."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import DateTime, Dialect, LargeBinary
from sqlalchemy.dialects import postgresql
from sqlalchemy.types import TypeDecorator


class UTCDateTime(TypeDecorator[datetime]):
    """Aware UTC datetimes in, aware UTC datetimes out, on both back ends.

    SQLite has no time zones: values are stored as naive UTC and re-tagged on the way out.
    A naive datetime handed to the store is a bug (whose clock?) and is refused.
    """

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given to the store; use an aware UTC datetime")
        value = value.astimezone(UTC)
        if dialect.name == "sqlite":
            return value.replace(tzinfo=None)
        return value

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            return value.replace(tzinfo=UTC)
        return value.astimezone(UTC)


Bytes = LargeBinary().with_variant(postgresql.BYTEA(), "postgresql")


def utcnow() -> datetime:
    return datetime.now(UTC)


def iso_utc(value: datetime) -> str:
    """Canonical text form of an instant, used wherever a timestamp is hashed."""
    return value.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def as_dict(row: Any) -> dict[str, Any]:
    return dict(row._mapping)


def storable(text: str) -> str:
    """Text that may quote a partner (a message id or type, an error, an audit value) as every
    database stores it: PostgreSQL refuses NUL in text, and a refused row would mean a message or
    an audit entry not kept. NUL is written as the four characters ``\\x00``; raw bytes, where a
    table keeps them, hold the original."""
    return text.replace("\x00", "\\x00")
