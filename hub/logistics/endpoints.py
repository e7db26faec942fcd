"""Operator routes of the logistics domain (bookings, shipments, conditioning, viability)."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated

from fastapi import APIRouter
from pydantic import BaseModel, ConfigDict, Field

from hub.api.commands import command
from hub.api.deps import CtxDep, OperatorDep, ReadSession
from hub.db.types import utcnow
from hub.errors import NotFound
from hub.instants import Instant
from hub.logistics.policy import Policy
from hub.logistics.repository import LogisticsRepository
from hub.logistics.schemas import BookShipment, RegisterShipment, ScheduleConditioning, ShipmentView
from hub.logistics.service import ShipmentService, view
from hub.logistics.viability import ViabilityService, countdown
from hub.orders.repository import OrderRepository

router = APIRouter(prefix="/logistics", tags=["logistics"])


# Identifiers and codes from an operator's request: printable, bounded (NUL would reach the database).
Code = Annotated[str, Field(min_length=1, max_length=64, pattern=r"^[^\x00-\x1f\x7f]+$")]


class BookBody(BaseModel):
    model_config = ConfigDict(extra="forbid")
    leg: Code | None = None
    courier: Code | None = None
    pickup_after: Instant | None = None
    customs_partner: Code | None = None


class RegisterBody(BaseModel):
    model_config = ConfigDict(extra="forbid")
    leg: Code
    courier: Code
    tracking_number: Code
    eta: Instant | None = None
    customs_partner: Code | None = None


class ConditioningBody(BaseModel):
    model_config = ConfigDict(extra="forbid")
    conditioning_start: Instant
    planned_infusion_at: Instant | None = None


class ViabilityView(BaseModel):
    order_id: str
    started_at: datetime
    deadline: datetime
    stopped_at: datetime | None
    elapsed_fraction: float
    remaining_minutes: float
    predicted_arrival: datetime | None
    escalations: list[str]
    summary: str


@router.post("/orders/{order_id}/shipments", status_code=202, response_model=ShipmentView)
async def book(order_id: str, body: BookBody, ctx: CtxDep, operator: OperatorDep) -> ShipmentView:
    cmd = command(BookShipment, order_id=order_id, **body.model_dump())
    policy = Policy.from_settings(ctx.settings)
    return await ctx.store.run_async(lambda w: ShipmentService(w, ctx.partners, policy).book(cmd), actor=operator)


@router.post("/orders/{order_id}/shipments/registered", status_code=201, response_model=ShipmentView)
async def register(order_id: str, body: RegisterBody, ctx: CtxDep, operator: OperatorDep) -> ShipmentView:
    cmd = command(RegisterShipment, order_id=order_id, **body.model_dump())
    policy = Policy.from_settings(ctx.settings)
    return await ctx.store.run_async(lambda w: ShipmentService(w, ctx.partners, policy).register(cmd), actor=operator)


@router.get("/orders/{order_id}/shipments", response_model=list[ShipmentView])
def shipments(order_id: str, session: ReadSession, _: OperatorDep) -> list[ShipmentView]:
    return [view(s) for s in LogisticsRepository.from_session(session).shipments(order_id)]


@router.put("/orders/{order_id}/conditioning", status_code=204)
async def conditioning(order_id: str, body: ConditioningBody, ctx: CtxDep, operator: OperatorDep) -> None:
    cmd = command(ScheduleConditioning, order_id=order_id, **body.model_dump())
    policy = Policy.from_settings(ctx.settings)
    await ctx.store.run_async(lambda w: ViabilityService(w, policy).schedule_conditioning(cmd), actor=operator)


@router.get("/orders/{order_id}/viability", response_model=ViabilityView)
def viability(order_id: str, session: ReadSession, _: OperatorDep) -> ViabilityView:
    order = OrderRepository.from_session(session).find(order_id)
    if order is None:
        raise NotFound(f"therapy order {order_id} is not known")
    clock = countdown(LogisticsRepository.from_session(session), order, utcnow())
    if clock is None:
        raise NotFound(f"the viability clock of order {order_id} has not started")
    return ViabilityView(
        order_id=order.id,
        started_at=clock.started_at,
        deadline=clock.deadline,
        stopped_at=clock.stopped_at,
        elapsed_fraction=round(clock.elapsed_fraction, 4),
        remaining_minutes=round(clock.remaining_minutes, 1),
        predicted_arrival=clock.predicted_arrival,
        escalations=list(clock.levels),
        summary=clock.describe(),
    )
