"""From a mapped HL7 v2 message to the core's commands, inside the inbox's unit of work.

The mapping (data) says where every value is; this module says which command each message kind
becomes. It never writes the master record itself: it calls the core's services, which validate
everything first and write nothing when they refuse. Errors the core raises about canonical paths
(``Patient.birthDate``) are reported at the HL7 location the value came from (``PID-7``).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from pydantic import ValidationError as PydanticValidationError

from adapters.hl7v2.errors import Rejected
from adapters.hl7v2.mapping import Mapped, MappingError, map_message
from adapters.hl7v2.routing import Route
from adapters.hl7v2.tokenizer import Message
from hub.db.uow import Work
from hub.errors import HubError, Issue, NotFound, ValidationFailed
from hub.messaging.inbox import InboxStatus
from hub.orders.partner_requests import PartnerRequests
from hub.orders.references import find_order, same_patient
from hub.orders.repository import OrderRepository
from hub.orders.scheduling import ScheduleCollection, SchedulingService
from hub.orders.schemas import Cancel, PlaceOrder, RecordResult, Sites
from hub.orders.service import OrderService
from hub.partners.loader import PartnerDirectory
from hub.patients.schemas import RegisterPatient
from hub.patients.service import PatientService
from hub.products.registry import get_product

RECORDED_STATUSES = {"F", "C"}  # OBX-11 final, corrected
PROCESSING_IDS = ("P", "T", "D")  # HL7 table 0103: production, training, debugging


@dataclass(frozen=True)
class Result:
    status: InboxStatus
    order_id: str | None = None
    summary: str = ""


def _validation(exc: PydanticValidationError, where: str) -> ValidationFailed:
    issues = [Issue(str(e.get("msg")), ".".join(str(p) for p in e.get("loc", ()))) for e in exc.errors()]
    return ValidationFailed(f"the {where} is not acceptable", issues)


def _relocate(exc: HubError, mapped: Mapped, index: int, prefix: str = "") -> HubError:
    exc.issues = [Issue(i.message, mapped.locate(index, i.location, prefix), i.severity, i.code) for i in exc.issues]
    return exc


@dataclass
class Interpreter:
    work: Work
    partners: PartnerDirectory
    route: Route
    fin: str = "A9998"
    production: bool = False

    @property
    def partner(self) -> str:
        return self.route.partner

    def accepted_processing_ids(self) -> frozenset[str]:
        """A production hub takes only production (P) messages: a hospital's training or debugging
        system pointed at it must not place real therapy orders. Outside production, what the
        partner's channel declares (``processing_ids``), or P, T and D."""
        accepted = self.route.processing_ids or frozenset(PROCESSING_IDS)
        return accepted & {"P"} if self.production else accepted

    def run(self, msg: Message) -> Result:
        processing_id = msg.processing_id[:1] or "P"  # empty: taken as P (as the ACK echoes it)
        if processing_id not in PROCESSING_IDS:
            raise Rejected(f"processing id {msg.processing_id[:8]!r} is not supported", "202", "MSH-11")
        accepted = self.accepted_processing_ids()
        if processing_id not in accepted:
            raise Rejected(
                f"processing id {processing_id} is not accepted from {self.partner} by this hub "
                f"(accepted: {', '.join(sorted(accepted)) or 'none'}); kept, not processed",
                "202",
                "MSH-11",
            )
        if msg.message_code == "ACK":  # a partner acknowledging one of ours: kept, nothing to do
            return Result(InboxStatus.ignored, None, "an acknowledgment: recorded, not acted on")
        mappings = self.route.mappings
        try:
            mapped = map_message(msg, mappings, partner=self.partner, tz=self.route.timezone)
        except MappingError:
            raise
        if mapped is None:
            code = "201" if msg.message_code in mappings.message_codes else "200"
            mtype = msg.message_type or "(empty)"
            known = ", ".join(sorted(mappings.messages)) or "none"
            raise Rejected(
                f"message type {mtype[:20]} is not supported on this channel (supported: {known})", code, "MSH-9"
            )
        handler = self._handlers().get(mapped.kind)
        if handler is None:
            raise Rejected(f"message kind {mapped.kind} has no handler", "200", "MSH-9")
        return handler(mapped)

    def _handlers(self) -> dict[str, Callable[[Mapped], Result]]:
        return {
            "order": self._orders,
            "patient": self._patients,
            "schedule": self._schedules,
            "results": self._results,
        }

    # ------------------------------------------------------------------ orders (ORM^O01, OML^O21)
    def _orders(self, mapped: Mapped) -> Result:
        order_id: str | None = None
        done = []
        for index, item in enumerate(mapped.items):
            try:
                order_id, what = self._order(mapped, index, item)
            except HubError as exc:
                raise _relocate(exc, mapped, index) from None
            done.append(what)
        return Result(InboxStatus.handled, order_id, "; ".join(done))

    def _order(self, mapped: Mapped, index: int, item: dict[str, Any]) -> tuple[str, str]:
        sources = mapped.sources[index]
        control = item["control"]
        placer = str(item["placer_number"])
        service = OrderService(self.work, self.partners, fin=self.fin)
        if control == "place":
            product_code = item.get("product_code")
            where = sources.get("product_code", "OBR-4.1")
            if not product_code:
                raise MappingError("no therapy product (ZCT-1 or OBR-4)", [Issue("product is required", where)], "101")
            try:
                get_product(str(product_code))
            except (KeyError, HubError):
                raise MappingError(
                    f"{where} value {str(product_code)[:40]!r} is not a therapy product the hub knows",
                    [Issue(f"{str(product_code)[:40]!r} is not in table products", where)],
                    "103",
                ) from None
            if not item.get("patient"):
                raise MappingError("the order has no patient (PID)", [Issue("PID is required", "PID")], "100")
            sites = item.get("sites") or {}
            if not sites.get("manufacturing"):
                raise MappingError(
                    "no manufacturing site: send ZCT-2 or configure the partner's default",
                    [Issue("manufacturing site is required", "ZCT-2")],
                    "101",
                )
            requester = (item.get("requester") or [{"resourceType": "Practitioner"}])[0]
            try:
                cmd = PlaceOrder(
                    ordering_partner=self.partner,
                    placer_number=placer,
                    product_code=str(product_code),
                    patient=item["patient"],
                    requester=requester,
                    service_request={"resourceType": "ServiceRequest", **item.get("service_request", {})},
                    sites=Sites(**sites),
                    conditioning_start=item.get("conditioning_start"),
                    note=item.get("note"),
                )
            except PydanticValidationError as exc:
                raise _validation(exc, "therapy order") from None
            view = service.place(cmd)
            return view.id, f"order {view.id} placed"
        order_id = OrderRepository.from_session(self.work.session).by_placer(self.partner, placer)
        if order_id is None:
            error = NotFound(f"no order {placer[:40]!r} placed by this hospital")
            error.issues = [Issue(error.message, sources.get("placer_number", "ORC-2"))]
            raise error
        order = OrderRepository.from_session(self.work.session).get(order_id, for_update=True)
        refs = [str(r).strip() for r in item.get("order_refs", []) if r and str(r).strip()]
        if any(r != placer for r in refs):  # a filler number (CoI) or an OBR-2 besides ORC-2: all must agree
            find_order(self.work, self.partner, [placer, *refs], location="ORC-3")
        same_patient(self.work, order, item.get("patient"), location="PID-3")
        reason = str(item.get("reason") or f"requested by {self.partner} (ORC-1 {control})")
        requests = PartnerRequests(self.work, self.partners, fin=self.fin)
        if control == "cancel":
            service.cancel(Cancel(order_id=order_id, reason=reason if len(reason) >= 3 else f"cancelled: {reason}"))
        elif control == "hold":
            requests.hold(order_id, self.partner, reason if len(reason) >= 3 else f"hold: {reason}")
        elif control == "release":
            requests.release(order_id, self.partner, reason)
        else:  # pragma: no cover - the order_control table admits nothing else
            raise Rejected(f"order control {control} is not supported", "103", "ORC-1")
        return order_id, f"order {order_id} {control}"

    # ------------------------------------------------------------------ patients (ADT^A01/A04/A08)
    def _patients(self, mapped: Mapped) -> Result:
        item = mapped.items[0]
        if not item.get("patient"):
            raise MappingError("the message has no patient (PID)", [Issue("PID is required", "PID")], "100")
        try:
            view = PatientService(self.work).register(
                RegisterPatient(patient=item["patient"], source=self.partner, mode=item.get("mode") or "register")
            )
        except HubError as exc:
            raise _relocate(exc, mapped, 0) from None
        what = "created" if view.created else "updated" if view.changed else "unchanged"
        return Result(InboxStatus.handled, None, f"patient {view.id} {what}")

    # ------------------------------------------------------------------ scheduling (SIU^S12–S15)
    def _schedules(self, mapped: Mapped) -> Result:
        item = mapped.items[0]
        try:
            order = find_order(self.work, self.partner, [str(r) for r in item.get("order_refs", [])], location="SCH-26")
            same_patient(self.work, order, item.get("patient"), location="PID-3")
            start = _aware(item.get("start"))
            end = _aware(item.get("end"))
            if start is not None and end is None and item.get("duration"):
                minutes = float(item["duration"]) * float(item.get("duration_unit") or 1)
                end = start + timedelta(minutes=minutes)
            try:
                cmd = ScheduleCollection(
                    order_id=order.id,
                    partner=self.partner,
                    appointment_id=str(item["appointment_id"]),
                    action=item["action"],
                    start=start,
                    end=end,
                    location=(str(item["location"])[:255] if item.get("location") else None),
                    reason=item.get("reason"),
                )
            except PydanticValidationError as exc:
                raise _validation(exc, "appointment") from None
            view = SchedulingService(self.work, self.partners, fin=self.fin).schedule(cmd)
        except HubError as exc:
            raise _relocate(exc, mapped, 0) from None
        return Result(InboxStatus.handled, order.id, f"appointment {view.appointment_id} {view.status}")

    # ------------------------------------------------------------------ results (ORU^R01)
    def _results(self, mapped: Mapped) -> Result:
        recorded = 0
        skipped = 0
        order_id: str | None = None
        for index, item in enumerate(mapped.items):
            try:
                order = find_order(
                    self.work, self.partner, [str(r) for r in item.get("order_refs", [])], location="OBR-3"
                )
                same_patient(self.work, order, item.get("patient"), location="PID-3")
            except HubError as exc:
                raise _relocate(exc, mapped, index) from None
            order_id = order.id
            service = OrderService(self.work, self.partners, fin=self.fin)
            for j, res in enumerate(item.get("results", [])):
                if str(res.get("status", "F")).upper()[:1] not in RECORDED_STATUSES:
                    skipped += 1
                    continue
                prefix = f"results[{j}]."
                try:
                    if not res.get("test_code") or not res.get("value"):
                        raise ValidationFailed(
                            "a result needs a test code (OBX-3) and a value (OBX-5)",
                            [Issue("test code and value are required", "value")],
                        )
                    try:
                        cmd = RecordResult(
                            order_id=order.id,
                            test_code=str(res["test_code"]),
                            value=str(res["value"]),
                            unit=res.get("unit"),
                            performer=self.partner,
                            occurred_at=_aware(res.get("occurred_at") or item.get("occurred_at")),
                        )
                    except PydanticValidationError as exc:
                        raise _validation(exc, "result") from None
                    service.record_result(cmd)
                except HubError as exc:
                    raise _relocate(exc, mapped, index, prefix) from None
                recorded += 1
        if recorded == 0:
            return Result(InboxStatus.ignored, order_id, f"no final results ({skipped} not final)")
        return Result(InboxStatus.handled, order_id, f"{recorded} results recorded, {skipped} not final")


def _aware(value: Any) -> datetime | None:
    if not value:
        return None
    if isinstance(value, datetime):
        return value
    return datetime.fromisoformat(str(value))
