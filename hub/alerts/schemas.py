"""Alerts in and out of the API."""

from __future__ import annotations

from datetime import datetime

from pydantic import BaseModel, ConfigDict, Field


class Acknowledge(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    # A printed name has no control characters; a note may have line breaks but never NUL (which
    # PostgreSQL cannot store: refused here the same way on both back ends).
    by: str = Field(
        min_length=3, max_length=128, pattern=r"^[^\x00-\x1f\x7f]+$", description="the named person who takes it on"
    )
    note: str | None = Field(default=None, max_length=2000, pattern=r"^[^\x00]*$")


class AlertView(BaseModel):
    id: str
    order_id: str | None
    severity: str
    kind: str
    message: str
    raised_at: datetime
    acknowledged_at: datetime | None
    acknowledged_by: str | None
    escalation_level: int
