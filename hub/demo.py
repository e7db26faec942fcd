"""`make demo`: one whole journey on the embedded default, then a held identity mismatch.

Everything goes through the core's commands, each in its own unit of work, exactly as an adapter
would drive them. The database stays under ./var, so `cgt-hub orders show` and `cgt-hub audit
verify` work on it afterwards. Each run adds two new orders (placer numbers carry the run's time).
"""

from __future__ import annotations

import asyncio
import os
import secrets
import sys
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any, TypeVar

from hub.alerts.repository import AlertRepository
from hub.audit.service import verify_chain
from hub.context import HubContext
from hub.db.migrate import upgrade
from hub.db.models import AppUser, Lease
from hub.db.uow import Work
from hub.errors import HubError
from hub.identity.service import IdentityService
from hub.orders import timeline
from hub.orders.schemas import (
    Advance,
    OrderView,
    PlaceOrder,
    RecordHandoff,
    RecordResult,
    Scan,
    Sites,
    VerifyIdentity,
)
from hub.orders.service import OrderService
from hub.products.registry import get_product
from hub.products.schemas import Checkpoint
from hub.runtime import build_runtime
from hub.settings import Settings
from hub.signatures.service import add_user

T = TypeVar("T")
QA_USER = "demo.qa"
OPERATOR_USER = "demo.operator"


def _say(text: str = "") -> None:
    print(text, flush=True)


def _secret_file(settings: Settings, name: str) -> Path:
    base = Path("var")
    if settings.is_sqlite:
        db_path = settings.database_url.split("///", 1)[-1]
        base = Path(db_path).parent
    return base / f"{name}.secret"


def ensure_user(ctx: HubContext, username: str, printed_name: str, roles: set[str]) -> str:
    """Create the demo signer once; its password is generated and kept (0600) under ./var."""
    path = _secret_file(ctx.settings, username)
    exists = ctx.store.read(lambda s: s.get(AppUser, username) is not None)
    if exists and path.is_file():
        return path.read_text().strip()
    if exists:
        username_suffix = secrets.token_hex(3)
        raise SystemExit(
            f"user {username} exists but its password file {path} is gone; "
            f"remove ./var to start over (or rename: {username}.{username_suffix})"
        )
    password = secrets.token_urlsafe(18)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(password)
    ctx.store.run(lambda w: add_user(w, username, printed_name, roles, password), actor="demo")
    return password


class Journey:
    """Drives one order through the core's commands, one unit of work per command."""

    def __init__(self, ctx: HubContext, order: OrderView, operator: str, site_ops: dict[str, str]) -> None:
        self.ctx = ctx
        self.order = order
        self.operator = operator
        self.site_ops = site_ops
        self.clock = 0

    def run(self, fn: Callable[[Work], T], actor: str | None = None) -> T:
        return self.ctx.store.run(fn, actor=actor or self.operator)

    def orders(self, work: Work) -> OrderService:
        return OrderService(work, self.ctx.partners, fin=self.ctx.settings.coi_fin)

    def verify(
        self,
        checkpoint: str,
        *,
        scans: list[Scan] | None = None,
        step: str | None = None,
        site: str | None = None,
        method: str = "barcode",
    ) -> Any:
        cmd = VerifyIdentity(
            order_id=self.order.id,
            checkpoint=Checkpoint(checkpoint),
            scans=tuple(scans or [Scan(value=self.order.coi_barcode)]),
            operator=self.site_ops.get(site or "", self.operator),
            method=method,
            device="scanner-" + (site or "hub"),
            site=site,
            step=step,
            second_person="second.checker" if method == "manual" else None,
        )
        return self.run(lambda w: IdentityService(w, self.ctx.partners).verify(cmd))

    def advance(self, stage: str, occurred_at: Any = None) -> OrderView:
        view = self.run(
            lambda w: self.orders(w).advance(Advance(order_id=self.order.id, to_stage=stage, occurred_at=occurred_at))
        )
        self.order = view
        return view

    def handoff(self, material: str, from_party: str, to_party: str, location: str) -> None:
        cmd = RecordHandoff(
            order_id=self.order.id, material=material, from_party=from_party, to_party=to_party, location=location
        )
        self.run(lambda w: IdentityService(w, self.ctx.partners).handoff(cmd))


def place(
    ctx: HubContext, product: str, placer: str, mrn: str, family: str, given: str, birth: str, sites: Sites
) -> OrderView:
    cmd = PlaceOrder(
        ordering_partner="st-marys",
        placer_number=placer,
        product_code=product,
        patient={
            "resourceType": "Patient",
            "identifier": [
                {
                    "type": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v2-0203", "code": "MR"}]},
                    "system": "urn:oid:2.16.840.1.113883.3.8998.1",
                    "value": mrn,
                }
            ],
            "name": [{"family": family, "given": [given]}],
            "birthDate": birth,
            "gender": "female",
        },
        requester={
            "resourceType": "Practitioner",
            "identifier": [{"system": "http://hl7.org/fhir/sid/us-npi", "value": "1234567893"}],
            "name": [{"family": "Okafor", "given": ["Chidi"], "prefix": ["Dr"]}],
        },
        sites=sites,
    )
    return ctx.store.run(
        # Placed through the core directly, for St Mary's: the actor says so (the HL7 order is step 1).
        lambda w: OrderService(w, ctx.partners, fin=ctx.settings.coi_fin).place(cmd),
        actor="demo:st-marys",
    )


def _record(j: Journey, result: RecordResult, work: Work) -> None:
    j.orders(work).record_result(result)


def full_journey(ctx: HubContext, qa_password: str, stamp: str, order: OrderView | None = None) -> OrderView:
    """``order``: already placed (by the hospital over HL7 v2); otherwise placed here."""
    sites = Sites(
        collection="st-marys",
        manufacturing="leiden-cell-factory",
        treatment="st-marys",
        lab="northlab-analytics",
        courier="polar-courier",
    )
    if order is None:
        order = place(ctx, "car-t-fresh", f"DEMO-{stamp}-1", f"MRN-{stamp}-1", "Rivera", "Ana", "1971-03-09", sites)
    _say(f"1. Order accepted: {order.placer_number} → CoI {order.coi_eye_readable} (barcode {order.coi_barcode})")
    j = Journey(
        ctx,
        order,
        "hub.coordinator",
        {"st-marys": "apheresis.nurse", "leiden-cell-factory": "gmp.operator", "polar-courier": "courier.driver"},
    )
    product = get_product(order.product_code)
    j.advance("collection-scheduled")
    j.verify("collection", site="st-marys")
    j.advance("collected")
    j.handoff("apheresis", "st-marys", "polar-courier", "St Mary's apheresis unit")
    j.verify("courier-handoff", site="polar-courier")
    j.advance("shipped-to-manufacturing")
    j.handoff("apheresis", "polar-courier", "leiden-cell-factory", "Leiden goods-in")
    j.verify("manufacturing-receipt", site="leiden-cell-factory")
    j.advance("received-at-manufacturing")
    steps = list(product.processing_steps)
    j.verify("processing-step", step=steps[0], site="leiden-cell-factory")
    j.advance("in-manufacturing")
    for step in steps[1:]:
        j.verify("processing-step", step=step, site="leiden-cell-factory")
    j.verify("qc-sampling", site="leiden-cell-factory")
    j.verify("storage-in", site="leiden-cell-factory")
    j.advance("qc-testing")
    for test, value in (
        ("viability", "86.5"),
        ("car-expression", "41"),
        ("vcn", "2.3"),
        ("endotoxin", "0.8"),
        ("sterility", "negative"),
        ("mycoplasma", "negative"),
    ):
        result = RecordResult(order_id=order.id, test_code=test, value=value, performer="northlab-analytics")
        j.run(partial(_record, j, result), actor="lab:northlab-analytics")
    j.verify("release", site="leiden-cell-factory")
    j.run(
        lambda w: j.orders(w).sign_release(order.id, QA_USER, qa_password, "release panel reviewed, all in spec"),
        actor=QA_USER,
    )
    j.advance("released")
    j.verify("storage-out", site="leiden-cell-factory")
    j.handoff("product", "leiden-cell-factory", "polar-courier", "Leiden dispatch")
    j.verify("courier-handoff", site="polar-courier")
    j.advance("shipped-to-site")
    j.handoff("product", "polar-courier", "st-marys", "St Mary's cell therapy lab")
    j.verify("site-receipt", site="st-marys")
    j.advance("received-at-site")
    j.verify(
        "administration",
        site="st-marys",
        scans=[Scan(value=order.coi_barcode), Scan(value=f"MRN-{stamp}-1", kind="patient")],
    )
    return j.advance("administered")


def mismatch_journey(ctx: HubContext, stamp: str, other: OrderView) -> OrderView:
    sites = Sites(
        collection="riverside-cancer-center",
        manufacturing="leiden-cell-factory",
        treatment="riverside-cancer-center",
        courier="polar-courier",
    )
    order = place(ctx, "car-t-cryo", f"DEMO-{stamp}-2", f"MRN-{stamp}-2", "Novak", "Marta", "1968-11-30", sites)
    _say(f"2. Order accepted: {order.placer_number} → CoI {order.coi_eye_readable} (product car-t-cryo)")
    j = Journey(
        ctx,
        order,
        "hub.coordinator",
        {"riverside-cancer-center": "riverside.nurse", "leiden-cell-factory": "gmp.operator"},
    )
    j.advance("collection-scheduled")
    j.verify("collection", site="riverside-cancer-center")
    j.advance("collected")
    j.verify("storage-in", site="riverside-cancer-center")
    j.advance("cryopreserved-at-site")
    j.verify("storage-out", site="riverside-cancer-center")
    j.verify("courier-handoff", site="polar-courier")
    j.advance("shipped-to-manufacturing")
    # Injected fault: goods-in scans the bag of ANOTHER patient's order.
    result = j.verify("manufacturing-receipt", site="leiden-cell-factory", scans=[Scan(value=other.coi_barcode)])
    _say(
        f"   Goods-in scanned CoI {other.coi} on order {order.coi}: {result.result.upper()}"
        f" → order {result.order_status}"
    )
    try:
        j.advance("received-at-manufacturing")
        raise SystemExit("BUG: an order with an identity mismatch moved on")
    except HubError as exc:
        _say(f"   Advance refused: {exc.message}")
    return order


async def _drain(ctx: HubContext) -> int:
    runtime = build_runtime(ctx.settings, ctx=ctx)
    await runtime.start(run_relay=False)
    try:
        return await runtime.relay.drain()
    finally:
        await runtime.stop()


def _serving_hub(ctx: HubContext) -> str:
    """Which role another process holds on this database (a live lease), if any."""
    from sqlalchemy import select

    def live(work: Work) -> list[Lease]:
        return list(work.session.scalars(select(Lease).where(Lease.expires_at > work.now)))

    held = ctx.store.run(live, actor="demo")
    return ", ".join(f"{lease.name} held by {lease.holder} until {lease.expires_at:%H:%M:%S}Z" for lease in held)


def run_demo(settings: Settings) -> int:
    from hub.context import build_context

    started = time.perf_counter()
    upgrade(settings.database_url)
    ctx = build_context(settings)
    try:
        serving = _serving_hub(ctx)
        if serving:
            _say(
                f"demo: a hub is serving this database ({serving}); its workers would take over the demo's"
                " steps. Stop `cgt-hub serve`, or point CGTHUB_DATABASE_URL at another database."
            )
            return 1
        qa_password = ensure_user(ctx, QA_USER, "Dr. Jane Quality (QA)", {"qa"})
        stamp = time.strftime("%Y%m%d%H%M%S")
        _say("CGT Hub demo — embedded SQLite + in-process bus\n")
        from adapters.hl7v2.demo import deliver_to_hospital, place_over_mllp

        ordered = place_over_mllp(ctx, stamp, f"DEMO-{stamp}-1", f"MRN-{stamp}-1")
        first = full_journey(ctx, qa_password, stamp, order=ordered)
        tl = ctx.store.read(lambda s: timeline.build(s, first.id))
        assert tl is not None
        _say("")
        _say(timeline.render(tl, color=sys.stdout.isatty()))
        _say("")
        second = mismatch_journey(ctx, stamp, first)
        tl2 = ctx.store.read(lambda s: timeline.build(s, second.id))
        assert tl2 is not None
        _say("")
        _say(timeline.render(tl2, color=sys.stdout.isatty()))
        from hub.api.demo_fhir import order_over_fhir

        _say("")
        fhir_sr = order_over_fhir(ctx, stamp, _say)
        _say("")
        from hub.logistics.demo import logistics_journey

        third = logistics_journey(ctx, stamp, _say)
        tl3 = ctx.store.read(lambda s: timeline.build(s, third.id))
        assert tl3 is not None
        _say("")
        _say(timeline.render(tl3, color=sys.stdout.isatty()))
        published = asyncio.run(_drain(ctx))
        _say(f"\n5. Outbox drained: {published} more event(s) relayed through the in-process bus.")
        alerts = ctx.store.read(lambda s: AlertRepository.from_session(s).list(order_id=second.id))
        for alert in alerts:
            _say(f"   ALERT [{alert.severity}] {alert.kind}: {alert.message}")
        result = verify_chain(ctx.store)
        _say(f"\n6. {result.describe()}")
        reported = deliver_to_hospital(ctx, first.id)
        _say(
            f"\nDone in {time.perf_counter() - started:.1f} s. Try:\n"
            f"   .venv/bin/cgt-hub orders show {first.coi}\n"
            f"   .venv/bin/cgt-hub orders show {second.coi}\n"
            f"   .venv/bin/cgt-hub audit verify\n"
            f"   .venv/bin/cgt-hub messages list"
        )
        ok = first.status == "completed" and result.ok and reported
        if not ok or fhir_sr.get("status") != "active" or third.stage != "received-at-manufacturing":
            return 1
        return 0
    finally:
        ctx.store.dispose()
