"""Collection scheduling: the collection site books, moves or cancels the apheresis appointment.

Booking the first appointment moves the order from ``order-accepted`` to ``collection-scheduled``
(through :meth:`OrderService.advance`, so the stage's guards and the audit trail apply as for any
move); the appointment window is written on the Task of the collection step
(``Task.restriction.period``). Rescheduling, modifying and cancelling are possible until the
material is collected; the journey never moves backwards, so a cancelled appointment leaves the
order at ``collection-scheduled`` waiting for a new booking. An order has at most one booked
appointment at a time.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field
from sqlalchemy import select

from hub.db.models_scheduling import CollectionAppointment
from hub.db.types import iso_utc
from hub.db.uow import Work
from hub.errors import GuardFailed, Issue, NotFound, ValidationFailed
from hub.events import CollectionScheduled, EventType
from hub.fhirstore.repository import ResourceRepository
from hub.ids import uuid7
from hub.instants import Instant
from hub.orders import fhir
from hub.orders.repository import OrderRepository
from hub.orders.schemas import Advance
from hub.orders.service import OrderService
from hub.partners.loader import PartnerDirectory
from hub.products.registry import get_product

SCHEDULED = "collection-scheduled"
BOOKING_ROLES = {"ordering", "collection"}


class ScheduleCollection(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    order_id: str
    partner: str
    appointment_id: str = Field(min_length=1, max_length=128)
    action: Literal["book", "reschedule", "modify", "cancel"]
    start: Instant | None = None
    end: Instant | None = None
    location: str | None = Field(default=None, max_length=255)
    reason: str | None = None


class AppointmentView(BaseModel):
    id: str
    order_id: str
    appointment_id: str
    status: str
    start: datetime
    end: datetime | None
    stage: str


@dataclass
class SchedulingService:
    work: Work
    partners: PartnerDirectory
    fin: str = "A9998"

    def schedule(self, cmd: ScheduleCollection) -> AppointmentView:
        work = self.work
        orders = OrderRepository.from_session(work.session)
        order = orders.get(cmd.order_id, for_update=True)
        roles = {r for p, r in orders.participants(order.id) if p == cmd.partner}
        if not roles & BOOKING_ROLES:
            raise GuardFailed(f"partner {cmd.partner} neither ordered nor collects order {order.id}")
        if order.status in ("revoked", "completed"):
            raise GuardFailed(f"order {order.id} is {order.status}; nothing to schedule")
        product = get_product(order.product_code)
        if SCHEDULED not in [s.code for s in product.stages]:
            raise GuardFailed(f"product {product.code} has no {SCHEDULED} stage")
        if cmd.action != "cancel":
            if cmd.start is None:
                raise ValidationFailed("the appointment needs a start time", [Issue("start is required", "start")])
            if cmd.end is not None and cmd.end <= cmd.start:
                raise ValidationFailed("the appointment ends before it starts", [Issue("end before start", "end")])
        stage_index = product.index(order.stage)
        if stage_index > product.index(SCHEDULED):
            raise GuardFailed(
                f"order {order.id} is already at {order.stage}; the collection can no longer be scheduled"
            )
        row = work.session.execute(
            select(CollectionAppointment).where(
                CollectionAppointment.partner == cmd.partner,
                CollectionAppointment.appointment_id == cmd.appointment_id,
            )
        ).scalar_one_or_none()
        if row is not None and row.order_id != order.id:
            raise GuardFailed(
                f"appointment {cmd.appointment_id} belongs to another order",
                [Issue("appointment id already used for another order", "appointment_id")],
            )
        if cmd.action == "book":
            other = work.session.execute(
                select(CollectionAppointment).where(
                    CollectionAppointment.order_id == order.id,
                    CollectionAppointment.status == "booked",
                    CollectionAppointment.appointment_id != cmd.appointment_id,
                )
            ).scalar_one_or_none()
            if other is not None:
                raise GuardFailed(
                    f"order {order.id} already has appointment {other.appointment_id}; reschedule or cancel it first"
                )
            if order.stage != SCHEDULED:
                OrderService(work, self.partners, fin=self.fin).advance(
                    Advance(order_id=order.id, to_stage=SCHEDULED, note=f"collection booked by {cmd.partner}")
                )
        elif row is None or row.status != "booked":
            raise NotFound(f"no booked appointment {cmd.appointment_id} for order {order.id}")
        before = None if row is None else _snapshot(row)
        if row is None:
            row = CollectionAppointment(
                id=uuid7(),
                order_id=order.id,
                partner=cmd.partner,
                appointment_id=cmd.appointment_id,
                created_at=work.now,
            )
            work.session.add(row)
        if cmd.action == "cancel":
            row.status = "cancelled"
        else:
            assert cmd.start is not None
            row.status = "booked"
            row.start = cmd.start
            row.end = cmd.end
            row.location = cmd.location if cmd.location is not None else row.location
        row.updated_at = work.now
        work.session.flush()
        self._set_collection_task(order.id, product.index(SCHEDULED) + 1, row)
        work.audit(
            "create" if before is None else "update",
            "CollectionAppointment",
            row.id,
            old=before,
            new=_snapshot(row),
            reason=cmd.reason or f"collection {cmd.action} by {cmd.partner}",
        )
        work.emit(
            EventType.ORDER_COLLECTION_SCHEDULED,
            order.id,
            CollectionScheduled(
                order_id=order.id,
                coi=order.coi,
                appointment_id=cmd.appointment_id,
                action=cmd.action,
                status=row.status,
                start=row.start,
                end=row.end,
            ),
        )
        refreshed = OrderRepository.from_session(work.session).get(order.id)
        return AppointmentView(
            id=row.id,
            order_id=order.id,
            appointment_id=row.appointment_id,
            status=row.status,
            start=row.start,
            end=row.end,
            stage=refreshed.stage,
        )

    def _set_collection_task(self, order_id: str, index: int, row: CollectionAppointment) -> None:
        resources = ResourceRepository.for_work(self.work)
        task = dict(resources.read("Task", fhir.task_id(order_id, index)).content)
        if row.status == "booked":
            period = {"start": iso_utc(row.start)}
            if row.end is not None:
                period["end"] = iso_utc(row.end)
            task["restriction"] = {"period": period}
        else:
            task.pop("restriction", None)
        resources.update(self.work, task, reason=f"collection appointment {row.status}")


def _snapshot(row: CollectionAppointment) -> dict[str, object]:
    return {
        "order": row.order_id,
        "partner": row.partner,
        "appointment": row.appointment_id,
        "status": row.status,
        "start": iso_utc(row.start) if row.start else None,
        "end": iso_utc(row.end) if row.end else None,
        "location": row.location,
    }
