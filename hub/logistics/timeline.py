"""Logistics entries for an order's timeline: courier events, cold chain, customs, viability."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy.orm import Session

from hub.db.models import TherapyOrder
from hub.logistics.repository import LogisticsRepository
from hub.logistics.viability import countdown


def for_order(session: Session, order: TherapyOrder) -> list[tuple[datetime, str, str, bool]]:
    """(at, kind, text, ok) for every logistics fact of the order."""
    repo = LogisticsRepository.from_session(session)
    out: list[tuple[datetime, str, str, bool]] = []
    shipments = {s.id: s for s in repo.shipments(order.id)}
    for leg in shipments.values():
        out.append(
            (leg.created_at, "shipment", f"leg {leg.leg_code}: {leg.courier} {leg.origin} → {leg.destination}", True)
        )
    for e in repo.events(order.id):
        s = shipments.get(e.shipment_id)
        where = f" at {e.location}" if e.location else ""
        ok = e.canonical not in ("exception", "unknown")
        out.append(
            (
                e.occurred_at,
                "courier",
                f"{s.courier if s else ''} {e.courier_code} → {e.canonical}{where}: {e.outcome}",
                ok,
            )
        )
    for x in repo.excursions(order.id):
        minutes = ((x.ended_at or x.last_out_at) - x.started_at).total_seconds() / 60
        state = "ESCALATED" if x.escalated else "within tolerance"
        out.append(
            (
                x.started_at,
                "cold",
                f"excursion {x.kind}: peak {x.peak:g} vs limit {x.limit_value:g}, {minutes:.0f} min, {state}",
                not x.escalated,
            )
        )
    for d in repo.declarations(order.id):
        out.append((d.created_at, "customs", f"declaration {d.functional_reference} to {d.partner}", True))
        if d.submitted_at:
            out.append(
                (d.submitted_at, "customs", f"declaration lodged (IE4N10){' MRN ' + d.mrn if d.mrn else ''}", True)
            )
        if d.cleared_at:
            out.append((d.cleared_at, "customs", f"customs {d.status}: {d.detail or ''}", d.status == "released"))
        elif d.status in ("failed", "rejected", "under-control"):
            out.append((d.last_polled_at or d.created_at, "customs", f"customs {d.status}: {d.detail or ''}", False))
    for v in repo.viability_alerts(order.id):
        out.append((v.raised_at, "viability", f"alert {v.level}: {v.detail}", False))
    return out


def countdown_line(session: Session, order: TherapyOrder, now: datetime) -> str | None:
    clock = countdown(LogisticsRepository.from_session(session), order, now)
    if clock is None:
        return None
    return f"  Viability countdown: {clock.describe()}"
