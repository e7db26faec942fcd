"""Shared helpers for the logistics tests: an order at a given stage, a registered shipment, the
hub's context on a test database, and draining the outbox through the in-process bus."""

from __future__ import annotations

import asyncio
from datetime import datetime
from pathlib import Path
from typing import Any

from sqlalchemy import select

from hub.context import HubContext, build_context
from hub.db.models import Alert, OutboxEvent
from hub.db.uow import Store
from hub.logistics.schemas import RegisterShipment, ShipmentView
from hub.logistics.service import ShipmentService
from hub.partners.loader import PartnerDirectory
from hub.runtime import build_runtime
from hub.settings import Settings
from tests.builders import Driver
from tests.conftest import CORPORA, REPO

WEBHOOKS = CORPORA / "webhooks"


def settings_for(db_url: str, **extra: Any) -> Settings:
    return Settings(
        database_url=db_url,
        profiles_dir=REPO / "partner-profiles",
        mappings_dir=REPO / "mappings",
        **extra,
    )


def context(db_url: str, **extra: Any) -> HubContext:
    return build_context(settings_for(db_url, **extra))


def order_at(store: Store, partners: PartnerDirectory, stage: str, product: str = "car-t-fresh") -> Driver:
    driver = Driver.place(store, partners, product)
    driver.walk_to(stage)
    return driver


def register(
    store: Store,
    partners: PartnerDirectory,
    order_id: str,
    *,
    courier: str = "polar-courier",
    tracking: str = "PLR000000001",
    leg: str = "apheresis-chilled",
    eta: datetime | None = None,
    customs: str | None = "eu-customs-ics2",  # St Mary's (US) -> Leiden (NL) crosses a border
) -> ShipmentView:
    cmd = RegisterShipment(
        order_id=order_id, leg=leg, courier=courier, tracking_number=tracking, eta=eta, customs_partner=customs
    )
    return store.run(lambda w: ShipmentService(w, partners).register(cmd), actor="test")


def events(store: Store, event_type: str, order_id: str | None = None) -> list[OutboxEvent]:
    def q(s: Any) -> list[OutboxEvent]:
        stmt = select(OutboxEvent).where(OutboxEvent.event_type == event_type).order_by(OutboxEvent.id)
        if order_id is not None:
            stmt = stmt.where(OutboxEvent.aggregate_id == order_id)
        return list(s.scalars(stmt))

    return store.read(q)


def alert_kinds(store: Store, order_id: str | None = None) -> list[str]:
    """Kinds of the alert.raised events in the outbox (what the alerts consumer will record)."""
    import json

    out = []
    for e in events(store, "alert.raised"):
        data = json.loads(e.payload)
        if order_id is None or data.get("order_id") == order_id:
            out.append(data["kind"])
    return out


def recorded_alerts(store: Store) -> list[Alert]:
    return store.read(lambda s: list(s.scalars(select(Alert).order_by(Alert.raised_at))))


def drain(ctx: HubContext, rounds: int = 5) -> int:
    """Relay the outbox through the in-process bus until nothing is left (consumers run)."""

    async def run() -> int:
        runtime = build_runtime(ctx.settings, ctx=ctx)
        await runtime.start(run_relay=False)
        total = 0
        try:
            for _ in range(rounds):
                n = await runtime.relay.drain()
                total += n
                if n == 0:
                    break
        finally:
            await runtime.stop()
        return total

    return asyncio.run(run())


def corpus(path: str) -> bytes:
    return (WEBHOOKS / path).read_bytes()


__all__ = ["CORPORA", "REPO", "Path"]
