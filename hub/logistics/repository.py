"""All queries of the logistics domain."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import or_, select, update
from sqlalchemy.orm import Session

from hub.db.bulk import insert_rows
from hub.db.models import TherapyOrder, table_of
from hub.db.models_logistics import (
    ConditioningSchedule,
    CustomsDeclaration,
    OutboundAttempt,
    OutboundWork,
    Shipment,
    ShipmentEvent,
    TemperatureExcursion,
    TemperatureReading,
    TemperatureState,
    ViabilityAlert,
)
from hub.errors import NotFound

_READINGS = table_of(TemperatureReading)


class LogisticsRepository:
    def __init__(self, session: Session) -> None:
        self.session = session

    @classmethod
    def from_session(cls, session: Session) -> LogisticsRepository:
        return cls(session)

    # ------------------------------------------------------------------ shipments
    def shipment(self, shipment_id: str, *, for_update: bool = False) -> Shipment:
        stmt = select(Shipment).where(Shipment.id == shipment_id)
        if for_update:
            stmt = stmt.with_for_update()
        found = self.session.execute(stmt).scalar_one_or_none()
        if found is None:
            raise NotFound(f"shipment {shipment_id} is not known")
        return found

    def by_tracking(self, courier: str, tracking_number: str, *, for_update: bool = False) -> Shipment | None:
        stmt = select(Shipment).where(Shipment.courier == courier, Shipment.tracking_number == tracking_number)
        if for_update:
            stmt = stmt.with_for_update()
        return self.session.execute(stmt).scalar_one_or_none()

    def shipments(self, order_id: str | None = None, *, limit: int = 200) -> list[Shipment]:
        stmt = select(Shipment).order_by(Shipment.created_at).limit(limit)
        if order_id is not None:
            stmt = stmt.where(Shipment.order_id == order_id)
        return list(self.session.scalars(stmt))

    def open_shipment(self, order_id: str, leg: str) -> Shipment | None:
        return self.session.execute(
            select(Shipment).where(
                Shipment.order_id == order_id,
                Shipment.leg_code == leg,
                Shipment.status.not_in(("failed", "cancelled")),
            )
        ).scalar_one_or_none()

    def pending_stage_shipments(self, order_id: str) -> list[Shipment]:
        return list(
            self.session.scalars(
                select(Shipment)
                .where(Shipment.order_id == order_id, Shipment.pending_stage.is_not(None))
                .with_for_update()
            )
        )

    def add(self, row: Any) -> None:
        self.session.add(row)
        self.session.flush()

    def events(self, order_id: str) -> list[ShipmentEvent]:
        return list(
            self.session.scalars(
                select(ShipmentEvent).where(ShipmentEvent.order_id == order_id).order_by(ShipmentEvent.occurred_at)
            )
        )

    def event_seen(self, shipment_id: str, courier_code: str, occurred_at: datetime) -> bool:
        return (
            self.session.execute(
                select(ShipmentEvent.id).where(
                    ShipmentEvent.shipment_id == shipment_id,
                    ShipmentEvent.courier_code == courier_code,
                    ShipmentEvent.occurred_at == occurred_at,
                )
            ).first()
            is not None
        )

    def event_kinds(self, shipment_id: str) -> set[str]:
        """The canonical kinds of the courier events recorded for a shipment."""
        return set(
            self.session.scalars(select(ShipmentEvent.canonical).where(ShipmentEvent.shipment_id == shipment_id))
        )

    # ------------------------------------------------------------------ temperature
    def temperature_state(self, shipment_id: str) -> TemperatureState:
        state = self.session.execute(
            select(TemperatureState).where(TemperatureState.shipment_id == shipment_id).with_for_update()
        ).scalar_one_or_none()
        if state is None:
            state = TemperatureState(shipment_id=shipment_id, readings=0)
            self.session.add(state)
        return state

    def add_readings(self, rows: list[dict[str, Any]]) -> None:
        insert_rows(self.session, _READINGS, rows)

    def excursion(self, excursion_id: str) -> TemperatureExcursion:
        found = self.session.get(TemperatureExcursion, excursion_id)
        if found is None:
            raise NotFound(f"excursion {excursion_id} is not known")
        return found

    def excursions(self, order_id: str) -> list[TemperatureExcursion]:
        return list(
            self.session.scalars(
                select(TemperatureExcursion)
                .where(TemperatureExcursion.order_id == order_id)
                .order_by(TemperatureExcursion.started_at)
            )
        )

    def open_excursions(self) -> list[TemperatureExcursion]:
        """Excursions still open and not escalated, of orders still active or on hold (what the
        sweep judges at now)."""
        return list(
            self.session.scalars(
                select(TemperatureExcursion)
                .join(TherapyOrder, TherapyOrder.id == TemperatureExcursion.order_id)
                .where(
                    TemperatureExcursion.ended_at.is_(None),
                    TemperatureExcursion.escalated.is_(False),
                    TherapyOrder.status.in_(("active", "on-hold")),
                )
            )
        )

    def reading_count(self, shipment_id: str) -> int:
        from sqlalchemy import func

        return int(
            self.session.execute(
                select(func.count())
                .select_from(TemperatureReading)
                .where(TemperatureReading.shipment_id == shipment_id)
            ).scalar_one()
        )

    # ------------------------------------------------------------------ viability / conditioning
    def viability_levels(self, order_id: str) -> set[str]:
        return set(self.session.scalars(select(ViabilityAlert.level).where(ViabilityAlert.order_id == order_id)))

    def viability_alerts(self, order_id: str) -> list[ViabilityAlert]:
        return list(
            self.session.scalars(
                select(ViabilityAlert).where(ViabilityAlert.order_id == order_id).order_by(ViabilityAlert.raised_at)
            )
        )

    def clocks_running(self) -> list[TherapyOrder]:
        """Orders whose viability clock has started, still active or on hold."""
        return list(
            self.session.scalars(
                select(TherapyOrder).where(
                    TherapyOrder.viability_deadline.is_not(None),
                    TherapyOrder.status.in_(("active", "on-hold")),
                )
            )
        )

    def conditioning(self, order_id: str) -> ConditioningSchedule | None:
        return self.session.get(ConditioningSchedule, order_id)

    # ------------------------------------------------------------------ customs
    def declaration(self, declaration_id: str, *, for_update: bool = False) -> CustomsDeclaration:
        stmt = select(CustomsDeclaration).where(CustomsDeclaration.id == declaration_id)
        if for_update:
            stmt = stmt.with_for_update()
        found = self.session.execute(stmt).scalar_one_or_none()
        if found is None:
            raise NotFound(f"customs declaration {declaration_id} is not known")
        return found

    def declarations(self, order_id: str) -> list[CustomsDeclaration]:
        return list(
            self.session.scalars(
                select(CustomsDeclaration)
                .where(CustomsDeclaration.order_id == order_id)
                .order_by(CustomsDeclaration.created_at)
            )
        )

    def declaration_for(self, shipment_id: str) -> CustomsDeclaration | None:
        return self.session.execute(
            select(CustomsDeclaration).where(CustomsDeclaration.shipment_id == shipment_id)
        ).scalar_one_or_none()

    # ------------------------------------------------------------------ outbound work
    def due_work(self, now: datetime, limit: int = 20) -> list[OutboundWork]:
        return list(
            self.session.scalars(
                select(OutboundWork)
                .where(
                    OutboundWork.status == "pending",
                    OutboundWork.next_attempt_at <= now,
                    or_(OutboundWork.claimed_until.is_(None), OutboundWork.claimed_until < now),
                )
                .order_by(OutboundWork.next_attempt_at)
                .limit(limit)
            )
        )

    def claim(self, work_id: str, now: datetime, until: datetime, token: str) -> bool:
        """Take a piece of work for one attempt (one process at a time); ``token`` names the attempt
        that holds it, so an attempt that outlived its claim can tell it no longer does."""
        result = self.session.execute(
            update(OutboundWork)
            .where(
                OutboundWork.id == work_id,
                OutboundWork.status == "pending",
                or_(OutboundWork.claimed_until.is_(None), OutboundWork.claimed_until < now),
            )
            .values(claimed_until=until, claim_token=token)
        )
        return bool(getattr(result, "rowcount", 0))

    def work(self, work_id: str) -> OutboundWork:
        found = self.session.execute(
            select(OutboundWork).where(OutboundWork.id == work_id).with_for_update()
        ).scalar_one_or_none()
        if found is None:
            raise NotFound(f"outbound work {work_id} is not known")
        return found

    def work_for(self, kind: str, subject_id: str) -> list[OutboundWork]:
        return list(
            self.session.scalars(
                select(OutboundWork)
                .where(OutboundWork.kind == kind, OutboundWork.subject_id == subject_id)
                .order_by(OutboundWork.created_at)
            )
        )

    def attempts(self, work_id: str) -> list[OutboundAttempt]:
        return list(
            self.session.scalars(
                select(OutboundAttempt).where(OutboundAttempt.work_id == work_id).order_by(OutboundAttempt.attempt)
            )
        )
