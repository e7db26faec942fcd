"""Holds a partner asks for and lifts itself (HL7 v2 ORC-1 ``HD`` / ``RL``, FHIR status changes).

A hospital may pause its own order (the patient is unwell, the collection must wait) and resume
it. Such a hold has kind ``partner-request`` and may be released by the partner that opened it,
without a QA signature: it was that partner's decision to begin with. Every other hold (identity
mismatch, excursion, manual holds placed at the hub) still needs the signed decision of
:meth:`OrderService.release_hold`; releasing a partner's hold never lifts those.

Actors are ``<channel>:<partner id>`` (``hl7v2:st-marys``); the partner that opened a hold is
read from its ``opened_by``.
"""

from __future__ import annotations

from dataclasses import dataclass

from hub.db.models import OrderHold
from hub.db.uow import Work
from hub.errors import GuardFailed
from hub.events import EventType, OrderHoldReleased
from hub.orders.repository import OrderRepository
from hub.orders.schemas import OrderView, PlaceHold
from hub.orders.service import OrderService, _snapshot, view
from hub.partners.loader import PartnerDirectory

PARTNER_HOLD = "partner-request"


def _opened_by_partner(hold: OrderHold, partner: str) -> bool:
    return hold.opened_by == partner or hold.opened_by.rsplit(":", 1)[-1] == partner


@dataclass
class PartnerRequests:
    work: Work
    partners: PartnerDirectory
    fin: str = "A9998"

    def hold(self, order_id: str, partner: str, reason: str) -> OrderHold:
        orders = OrderRepository.from_session(self.work.session)
        order = orders.get(order_id, for_update=True)
        if any(h.kind == PARTNER_HOLD and _opened_by_partner(h, partner) for h in orders.open_holds(order.id)):
            raise GuardFailed(f"order {order.id} is already on hold at the request of {partner}")
        return OrderService(self.work, self.partners, fin=self.fin).hold(
            PlaceHold(order_id=order.id, reason=reason, kind=PARTNER_HOLD)
        )

    def release(self, order_id: str, partner: str, reason: str) -> OrderView:
        work = self.work
        service = OrderService(work, self.partners, fin=self.fin)
        orders = OrderRepository.from_session(work.session)
        order = orders.get(order_id, for_update=True)
        if order.status in ("revoked", "completed"):
            raise GuardFailed(f"order {order.id} is {order.status}")
        mine = [h for h in orders.open_holds(order.id) if h.kind == PARTNER_HOLD and _opened_by_partner(h, partner)]
        if not mine:
            raise GuardFailed(
                f"order {order.id} has no hold opened by {partner}; other holds need a signed QA decision at the hub"
            )
        before = _snapshot(order)
        for hold in mine:
            hold.released_at = work.now
            hold.released_by = work.actor
            hold.release_reason = reason
            order.open_holds -= 1
        order.journey_seq += 1
        order.release_seq = order.journey_seq
        order.updated_at = work.now
        if order.open_holds == 0:
            order.status = "active"
            service._set_request_status(order.id, "active", f"hold released by {partner}")
            index = service._current_task_index(order)
            if index is not None:
                service._set_task(order.id, index, "ready", None)
        work.session.flush()
        for hold in mine:
            work.audit(
                "update",
                "OrderHold",
                hold.id,
                old={"released": False},
                new={"released": True, "by": partner},
                reason=reason,
            )
            work.emit(
                EventType.ORDER_HOLD_RELEASED,
                order.id,
                OrderHoldReleased(order_id=order.id, coi=order.coi, hold_id=hold.id, qa_decision_id=None),
            )
        work.audit("update", "TherapyOrder", order.id, old=before, new=_snapshot(order), reason=reason)
        return view(order)
