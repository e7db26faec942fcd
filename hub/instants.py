"""The instants partners and operators send (event times, windows, filters), as one pydantic type.

``pydantic.AwareDatetime`` accepts any aware datetime: ``0001-01-01T00:00+01:00`` (before year 1
in UTC) or ``9999-12-31T23:00-05:00`` (after 9999). The store converts every instant to UTC, and
the core adds hours to some (viability windows), so such a value failed deep inside a job with an
OverflowError: a 500 for the partner's mistake. An :data:`Instant` is refused at the edge with a
422 instead, when it is outside 1900–2999 in UTC, a range no therapy-order event falls outside.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated

from pydantic import AfterValidator, AwareDatetime

EARLIEST = datetime(1900, 1, 1, tzinfo=UTC)
LATEST = datetime(3000, 1, 1, tzinfo=UTC)


def in_range(value: datetime) -> datetime:
    try:
        utc = value.astimezone(UTC)
    except OverflowError:
        utc = None
    if utc is None or not EARLIEST <= utc < LATEST:
        raise ValueError("the instant must fall between the years 1900 and 2999 (UTC)")
    return value


Instant = Annotated[AwareDatetime, AfterValidator(in_range)]
