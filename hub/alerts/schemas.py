"""Alerts in and out of the API."""

from __future__ import annotations

from datetime import datetime

from pydantic import BaseModel, ConfigDict, Field


class Acknowledge(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    by: str = Field(min_length=3, max_length=128, description="the named person who takes it on")
    note: str | None = Field(default=None, max_length=2000)


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
