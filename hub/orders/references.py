"""Find the order a partner's message is about, and only among the orders that partner takes part
in (a partner never reaches an order it is not part of: the answer is "not known" either way).

A reference may be the hub's order id, the CoI (data content, barcode ``&/…`` or eye-readable with
its check character) or the placer order number the ordering hospital gave it. A placer number
that matches orders of several hospitals the partner works with is refused as ambiguous.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from sqlalchemy import select

from hub.db.models import OrderParticipant, TherapyOrder
from hub.db.uow import Work
from hub.errors import Conflict, HubError, Issue, NotFound
from hub.fhirstore.repository import ResourceRepository
from hub.identity.isbt128 import parse_coi
from hub.orders.repository import OrderRepository


def _coi_data(ref: str) -> str | None:
    try:
        return parse_coi(ref).data
    except HubError:
        return None


def find_order(work: Work, partner: str, refs: Iterable[str], *, location: str | None = None) -> TherapyOrder:
    orders = OrderRepository.from_session(work.session)
    tried: list[str] = []
    for ref in (r.strip() for r in refs if r and r.strip()):
        tried.append(ref)
        coi = _coi_data(ref)
        candidates: list[str] = []
        if coi is not None:
            found = orders.find(coi)
            candidates = [found.id] if found is not None else []
        if not candidates:
            found = work.session.get(TherapyOrder, ref)
            candidates = [found.id] if found is not None else []
        if not candidates:
            placed = orders.by_placer(partner, ref)
            candidates = [placed] if placed else []
        if not candidates:
            candidates = list(
                work.session.scalars(
                    select(TherapyOrder.id)
                    .join(OrderParticipant, OrderParticipant.order_id == TherapyOrder.id)
                    .where(TherapyOrder.placer_number == ref, OrderParticipant.partner_id == partner)
                    .distinct()
                )
            )
            if len(candidates) > 1:
                raise Conflict(
                    f"order reference {ref!r} matches orders of several hospitals; send the CoI instead",
                    [Issue("ambiguous order reference", location)],
                )
        for order_id in candidates:
            if partner in {p for p, _ in orders.participants(order_id)}:
                return orders.get(order_id, for_update=True)
    what = ", ".join(repr(t[:40]) for t in tried) or "none given"
    error = NotFound(f"no order known to this partner for reference {what}")
    error.issues = [Issue(error.message, location)]
    raise error


def same_patient(work: Work, order: TherapyOrder, patient: dict[str, Any] | None, *, location: str | None) -> None:
    """If a message names the patient, it must be the order's patient: at least one identifier in
    common and no identifier of the same system with a different value. Otherwise it is refused."""
    if not patient:
        return
    incoming = [
        (str(i.get("system")), str(i.get("value")))
        for i in patient.get("identifier", []) or []
        if isinstance(i, dict) and i.get("system") and i.get("value")
    ]
    if not incoming:
        return
    stored = ResourceRepository.for_work(work).read("Patient", order.patient_id).content
    known = {
        (str(i.get("system")), str(i.get("value")))
        for i in stored.get("identifier", []) or []
        if isinstance(i, dict) and i.get("system") and i.get("value")
    }
    systems = {s: v for s, v in known}
    clash = [s for s, v in incoming if s in systems and (s, v) not in known]
    if clash or not (set(incoming) & known):
        raise Conflict(
            f"the patient in this message is not the patient of order {order.id} (CoI {order.coi}); nothing changed",
            [Issue("patient identifiers do not match the order's patient", location)],
        )
