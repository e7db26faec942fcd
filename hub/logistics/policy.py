"""The numbers the logistics rules use (settings ``CGTHUB_LOGISTICS__…``), in one frozen object."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any


@dataclass(frozen=True)
class Policy:
    # From the courier's delivery to the stage that stops the viability clock (goods-in, receipt
    # verification, first processing step): an ETA later than deadline - margin threatens the window.
    receipt_margin: timedelta = timedelta(hours=2)
    # The product must be at the treatment site this long before the planned infusion.
    site_margin: timedelta = timedelta(hours=4)
    # Without an explicit infusion time: conditioning start + this (e.g. Flu/Cy days -5..-3, infusion day 0).
    infusion_after_conditioning: timedelta = timedelta(days=5)
    # Outbound partner calls (bookings, customs): capped exponential backoff, then a terminal failure.
    outbound_backoff_base: timedelta = timedelta(seconds=2)
    outbound_backoff_max: timedelta = timedelta(minutes=10)
    outbound_max_attempts: int = 6
    customs_poll: timedelta = timedelta(seconds=60)
    # Following a lodged declaration, an unreachable authority never changes its status: the hub
    # keeps asking (capped backoff) and gives up only when it has heard nothing for this long.
    customs_poll_give_up: timedelta = timedelta(hours=12)
    # Unacknowledged alerts are escalated every N minutes per severity, up to max_levels times.
    escalation_minutes: dict[str, float] = field(default_factory=lambda: {"critical": 15.0, "warning": 120.0})
    escalation_max_levels: int = 3

    @classmethod
    def from_settings(cls, settings: Any) -> Policy:
        raw = getattr(settings, "logistics", None)
        if raw is None:
            return cls()
        return cls(
            receipt_margin=timedelta(minutes=raw.receipt_margin_minutes),
            site_margin=timedelta(minutes=raw.site_margin_minutes),
            infusion_after_conditioning=timedelta(days=raw.infusion_after_conditioning_days),
            outbound_backoff_base=timedelta(seconds=raw.outbound_backoff_base_s),
            outbound_backoff_max=timedelta(seconds=raw.outbound_backoff_max_s),
            outbound_max_attempts=raw.outbound_max_attempts,
            customs_poll=timedelta(seconds=raw.customs_poll_s),
            customs_poll_give_up=timedelta(hours=raw.customs_poll_give_up_hours),
            escalation_minutes=dict(raw.alert_escalation_minutes),
            escalation_max_levels=raw.alert_escalation_max_levels,
        )

    def backoff(self, attempt: int) -> timedelta:
        return min(self.outbound_backoff_max, self.outbound_backoff_base * (2 ** max(0, attempt - 1)))
