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
from hub.orders.service import _family


def _coi_data(ref: str) -> str | None:
    try:
        return parse_coi(ref).data
    except HubError:
        return None


def find_order(work: Work, partner: str, refs: Iterable[str], *, location: str | None = None) -> TherapyOrder:
    """The one order, among those this partner takes part in, that a message's references name.

    Every reference is resolved, not only the first that matches, and every one must name that
    order: a message whose references name two different orders (the filler's CoI of one, the
    placer number of another) is a mix-up, refused rather than applied to whichever was read
    first. So is one with a reference that names no order this partner knows, whether it names
    another partner's order or nothing at all: the answer is the same either way (it does not
    disclose which references exist), and a stray reference is never quietly ignored."""
    orders = OrderRepository.from_session(work.session)
    tried: list[str] = []
    mine: dict[str, str] = {}  # reference -> order id
    stray = False  # a reference naming no order of this partner's (another's, or none)
    for ref in (r.strip() for r in refs if r and r.strip()):
        tried.append(ref)
        candidates = _candidates(work, orders, partner, ref, location)
        takes_part = [c for c in candidates if partner in {p for p, _ in orders.participants(c)}]
        if takes_part:
            mine[ref] = takes_part[0]
        else:
            stray = True
    named = set(mine.values())
    if len(named) > 1 or (named and stray):
        raise Conflict(
            "the order references in this message do not all name the same order; nothing changed",
            [Issue("order references disagree", location)],
        )
    if named:
        return orders.get(named.pop(), for_update=True)
    what = ", ".join(repr(t[:40]) for t in tried) or "none given"
    error = NotFound(f"no order known to this partner for reference {what}")
    error.issues = [Issue(error.message, location)]
    raise error


def _candidates(work: Work, orders: OrderRepository, partner: str, ref: str, location: str | None) -> list[str]:
    """Orders one reference may name: a CoI, the hub's order id, this partner's placer number, or
    the placer number of an order this partner takes part in."""
    coi = _coi_data(ref)
    if coi is not None:
        found = orders.find(coi)
        if found is not None:
            return [found.id]
    by_id = work.session.get(TherapyOrder, ref)
    if by_id is not None:
        return [by_id.id]
    placed = orders.by_placer(partner, ref)
    if placed:
        return [placed]
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
    return candidates


def same_patient(work: Work, order: TherapyOrder, patient: dict[str, Any] | None, *, location: str | None) -> None:
    """If a message names the patient, it must be the order's patient. Otherwise it is refused.

    * Identifiers with a system (assigning authority): at least one in common, and none of the same
      system with a different value.
    * Identifiers without one (a PID-3 with no CX-4): at least one value is one of the patient's.
    * No identifier at all: a birth date or family name given must be the patient's.
    A message naming someone else is never let through because it names them loosely."""
    if not patient:
        return
    identifiers = [i for i in patient.get("identifier", []) or [] if isinstance(i, dict) and i.get("value")]
    stored = ResourceRepository.for_work(work).read("Patient", order.patient_id).content
    stored_ids = [i for i in stored.get("identifier", []) or [] if isinstance(i, dict) and i.get("value")]
    incoming = {(str(i["system"]), str(i["value"])) for i in identifiers if i.get("system")}
    if incoming:
        known = {(str(i["system"]), str(i["value"])) for i in stored_ids if i.get("system")}
        systems = {s for s, _ in known}
        clash = [s for s, v in incoming if s in systems and (s, v) not in known]
        same = not clash and bool(incoming & known)
    elif identifiers:
        same = bool({str(i["value"]) for i in identifiers} & {str(i["value"]) for i in stored_ids})
    else:
        same = _same_demographics(patient, stored)
    if not same:
        raise Conflict(
            f"the patient in this message is not the patient of order {order.id} (CoI {order.coi}); nothing changed",
            [Issue("patient identifiers do not match the order's patient", location)],
        )


def _same_demographics(incoming: dict[str, Any], stored: dict[str, Any]) -> bool:
    born = incoming.get("birthDate")
    if born and stored.get("birthDate") and str(born) != str(stored["birthDate"]):
        return False
    family = _family(incoming)
    return not (family and _family(stored) and family != _family(stored))
