"""Decisions about the master record. Every command takes the job's :class:`Work`; it validates
everything first and writes only when all of it holds, so a refused command writes nothing (and the
unit of work rolls back anything a failing command might have started).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from hub.db.locks import lock_identity
from hub.db.models import OrderHold, QaDecision, TherapyOrder
from hub.db.uow import Work
from hub.errors import Conflict, Forbidden, GuardFailed, Issue, NotFound, ValidationFailed, WrongDataType
from hub.events import (
    AlertRaised,
    EventType,
    OrderAccepted,
    OrderCancelled,
    OrderHeld,
    OrderHoldReleased,
    OrderResultRecorded,
    OrderStageChanged,
)
from hub.fhirstore.repository import ResourceRepository, Stored
from hub.fhirstore.validation import validate
from hub.identity.isbt128 import CoI, make_coi
from hub.ids import uuid7
from hub.orders import fhir
from hub.orders.repository import OrderRepository
from hub.orders.schemas import (
    Advance,
    Cancel,
    OrderView,
    PlaceHold,
    PlaceOrder,
    RecordResult,
    ReleaseHold,
)
from hub.partners.loader import PartnerDirectory
from hub.patients import scope
from hub.products.registry import get_product
from hub.products.schemas import Checkpoint, Guard, Product
from hub.signatures.service import Meaning, check_signature, sign, signatures_for

IDENTITY_HOLD = "identity-mismatch"
EXCURSION_HOLD = "temperature-excursion"  # placed by hub/logistics/temperature.py
# Holds whose release is a QA decision (the QA role signs): the product's identity or its quality
# is in question.
QA_RELEASED_HOLDS = frozenset({IDENTITY_HOLD, EXCURSION_HOLD})
CLOCK_SKEW = timedelta(minutes=5)
ROLE_FOR_SITE = {
    "collection": "collection",
    "manufacturing": "manufacturing",
    "treatment": "treatment",
    "lab": "lab",
    "courier": "courier",
}

# Release results gate the product's release: only the order's testing lab or its manufacturing
# site (whose QC laboratory tests the product) may report them. A hospital or a courier taking part
# in the order could otherwise send an ORU^R01 with in-spec values for the release panel.
RESULT_ROLES = {"lab", "manufacturing"}


def coi_of(order: TherapyOrder) -> CoI:
    return CoI(order.coi[2:7], order.coi[7:9], order.coi[9:15])


def view(order: TherapyOrder) -> OrderView:
    coi = coi_of(order)
    return OrderView(
        id=order.id,
        coi=coi.data,
        coi_eye_readable=coi.eye_readable,
        coi_barcode=coi.barcode,
        product_code=order.product_code,
        stage=order.stage,
        status=order.status,
        ordering_partner=order.ordering_partner,
        placer_number=order.placer_number,
        patient_id=order.patient_id,
        viability_deadline=order.viability_deadline,
    )


def _snapshot(order: TherapyOrder) -> dict[str, Any]:
    return {"stage": order.stage, "status": order.status, "open_holds": order.open_holds}


def event_time(work: Work, occurred_at: datetime | None) -> datetime:
    """When something happened, as reported; never later than now (plus clock skew)."""
    if occurred_at is None:
        return work.now
    if occurred_at - work.now > CLOCK_SKEW:
        raise ValidationFailed("occurred_at lies in the future", [Issue("occurred_at is in the future", "occurred_at")])
    return occurred_at


def _primary_identifier(patient: dict[str, Any]) -> dict[str, Any] | None:
    idents = [i for i in patient.get("identifier", []) if isinstance(i, dict) and i.get("value") and i.get("system")]
    for ident in idents:
        for coding in (ident.get("type") or {}).get("coding", []):
            if coding.get("code") == "MR":
                return ident
    return idents[0] if idents else None


def _family(patient: dict[str, Any]) -> str:
    for name in patient.get("name", []) or []:
        if isinstance(name, dict) and name.get("family"):
            return str(name["family"]).strip().casefold()
    return ""


@dataclass
class OrderService:
    """Commands on therapy orders. Built per job: ``OrderService(work, partners)``."""

    work: Work
    partners: PartnerDirectory
    fin: str = "A9998"

    @property
    def orders(self) -> OrderRepository:
        return OrderRepository.from_session(self.work.session)

    @property
    def resources(self) -> ResourceRepository:
        return ResourceRepository.for_work(self.work)

    # ------------------------------------------------------------------ place
    def place(self, cmd: PlaceOrder) -> OrderView:
        product = get_product(cmd.product_code)
        issues = self._check_partners(cmd)
        issues += self._check_patient(cmd.patient)
        try:
            validate(cmd.requester, "Practitioner")
        except ValidationFailed as exc:
            issues += exc.issues
        if issues:
            raise ValidationFailed("the therapy order is not acceptable", issues)
        existing = self.orders.by_placer(cmd.ordering_partner, cmd.placer_number)
        if existing is not None:
            raise Conflict(f"order {cmd.placer_number} from {cmd.ordering_partner} already exists as {existing}")
        work = self.work
        patient = self._patient(cmd.patient, cmd.ordering_partner)
        practitioner = self._practitioner(cmd.requester, cmd.ordering_partner)
        sites = self._site_pairs(cmd)
        site_orgs = self._organizations(dict(sites))

        order_id = uuid7()
        coi = make_coi(self.fin, work.now.year, self.orders.next_coi_number(self.fin, f"{work.now.year % 100:02d}"))
        sr = fhir.service_request(
            cmd.service_request,
            coi=coi,
            ordering_partner=cmd.ordering_partner,
            placer_number=cmd.placer_number,
            product=product,
            patient_ref=patient.ref,
            requester_ref=practitioner.ref,
            performer_refs=[site_orgs["manufacturing"]],
            authored=work.now,
            note=cmd.note,
            sites=sites,
        )
        # Every site is a loaded partner (_check_partners): its extension has a validated shape.
        fhir.validated_site_extension_shapes(tuple(role for role, _ in sites))
        validate(fhir.without_site_extensions(sr, sites), "ServiceRequest")
        self.resources.create(work, sr, id=order_id, reason="therapy order accepted", shape_validated=True)
        fhir.validated_task_shapes(product)
        for index, stage in enumerate(product.stages):
            status = "completed" if index == 0 else "ready" if index == 1 else "requested"
            task = fhir.task(
                order_id=order_id,
                index=index,
                stage=stage,
                coi=coi,
                patient_ref=patient.ref,
                status=status,
                authored=work.now,
            )
            self.resources.create(work, task, id=task["id"], reason="journey step planned", shape_validated=True)
        order = TherapyOrder(
            id=order_id,
            coi=coi.data,
            coi_check=coi.check,
            product_code=product.code,
            product_version=product.version,
            stage=product.stages[0].code,
            status="active",
            ordering_partner=cmd.ordering_partner,
            placer_number=cmd.placer_number,
            patient_id=patient.id,
            open_holds=0,
            timezone=self._timezone(cmd.sites.treatment),
            journey_seq=1,
            stage_seq=1,
            release_seq=0,
            created_at=work.now,
            updated_at=work.now,
        )
        participants = {(cmd.ordering_partner, "ordering")} | {(pid, ROLE_FOR_SITE[role]) for role, pid in sites}
        self.orders.add_new(
            order,
            participants,
            {
                "id": uuid7(),
                "order_id": order_id,
                "seq": 1,
                "from_stage": None,
                "to_stage": order.stage,
                "at": work.now,
                "actor": work.actor,
                "reason": "order accepted",
                "verification_id": None,
            },
        )
        work.audit(
            "create",
            "TherapyOrder",
            order_id,
            reason="therapy order accepted",
            new={
                "coi": coi.data,
                "product": product.code,
                "product_version": product.version,
                "ordering_partner": cmd.ordering_partner,
                "placer_number": cmd.placer_number,
                "participants": sorted(f"{p}:{r}" for p, r in participants),
                **_snapshot(order),
            },
        )
        work.emit(
            EventType.ORDER_ACCEPTED,
            order_id,
            OrderAccepted(
                order_id=order_id,
                coi=coi.data,
                product_code=product.code,
                ordering_partner=cmd.ordering_partner,
                placer_number=cmd.placer_number,
                stage=order.stage,
            ),
        )
        if cmd.conditioning_start is not None:
            from hub.logistics.viability import conditioning_from_order

            conditioning_from_order(work, order_id, cmd.conditioning_start)
        return view(order)

    def _site_pairs(self, cmd: PlaceOrder) -> list[tuple[str, str]]:
        pairs = [
            ("collection", cmd.sites.collection),
            ("manufacturing", cmd.sites.manufacturing),
            ("treatment", cmd.sites.treatment),
        ]
        if cmd.sites.lab:
            pairs.append(("lab", cmd.sites.lab))
        if cmd.sites.courier:
            pairs.append(("courier", cmd.sites.courier))
        return pairs

    def _check_partners(self, cmd: PlaceOrder) -> list[Issue]:
        issues: list[Issue] = []
        ordering = self.partners.get(cmd.ordering_partner)
        if ordering is None or not ordering.can_play("ordering"):
            issues.append(
                Issue(f"{cmd.ordering_partner!r} is not a partner that may order therapies", "ordering_partner")
            )
        for role, pid in self._site_pairs(cmd):
            profile = self.partners.get(pid)
            if profile is None:
                issues.append(Issue(f"site {pid!r} is not a known partner", f"sites.{role}"))
            elif not profile.can_play(ROLE_FOR_SITE[role]):
                issues.append(Issue(f"partner {pid!r} ({profile.kind}) cannot act as the {role} site", f"sites.{role}"))
        return issues

    def _check_patient(self, patient: dict[str, Any]) -> list[Issue]:
        try:
            validate(patient, "Patient")
        except ValidationFailed as exc:
            return exc.issues
        issues: list[Issue] = []
        if _primary_identifier(patient) is None:
            issues.append(Issue("the patient needs an identifier with system and value (MRN)", "Patient.identifier"))
        if not _family(patient):
            issues.append(Issue("the patient needs a family name", "Patient.name"))
        if not patient.get("birthDate"):
            issues.append(Issue("the patient needs a birth date", "Patient.birthDate"))
        return issues

    def _patient(self, patient: dict[str, Any], partner_id: str) -> Stored:
        """Find the patient by MRN among the ordering partner's own patients (hub/patients/scope.py);
        an MRN already held by someone else there is refused, never merged."""
        ident = _primary_identifier(patient)
        assert ident is not None
        matches = self._partners_patients(partner_id, ident)
        if not matches:
            lock_identity(self.work.session, f"Patient|{ident['system']}|{ident['value']}")
            matches = self._partners_patients(partner_id, ident)
        for found in matches:
            same = found.content.get("birthDate") == patient.get("birthDate") and _family(found.content) == _family(
                patient
            )
            if not same:
                raise Conflict(
                    "the patient identifier is already held by a patient with a different name or birth date; "
                    "resolve the identity at the hospital before ordering",
                    [Issue("patient identifier collision", "Patient.identifier")],
                )
            return found
        body = {k: v for k, v in patient.items() if k not in ("id", "meta")}
        # Validated by _check_patient in this same command.
        return self.resources.create(self.work, body, reason="patient of a therapy order", shape_validated=True)

    def _partners_patients(self, partner_id: str, ident: dict[str, Any]) -> list[Stored]:
        matches = self.resources.find_by_identifier("Patient", ident["system"], str(ident["value"]))
        if not matches:
            return matches
        mine = scope.patients_of(self.work.session, partner_id, [m.id for m in matches])
        return [m for m in matches if m.id in mine]

    def _practitioner(self, practitioner: dict[str, Any], partner_id: str) -> Stored:
        """Find the requester by identifier among the ordering partner's own practitioners
        (hub/patients/scope.py), else record it."""
        for ident in practitioner.get("identifier", []):
            if ident.get("system") and ident.get("value"):
                found = self._partners_practitioners(partner_id, ident["system"], str(ident["value"]))
                if not found:
                    lock_identity(self.work.session, f"Practitioner|{ident['system']}|{ident['value']}")
                    found = self._partners_practitioners(partner_id, ident["system"], str(ident["value"]))
                if found:
                    return found[0]
        body = {k: v for k, v in practitioner.items() if k not in ("id", "meta")}
        # Validated at the start of place().
        return self.resources.create(self.work, body, reason="ordering practitioner", shape_validated=True)

    def _partners_practitioners(self, partner_id: str, system: str, value: str) -> list[Stored]:
        matches = self.resources.find_by_identifier("Practitioner", system, value)
        if not matches:
            return matches
        mine = scope.practitioners_of(self.work.session, partner_id, [m.id for m in matches])
        return [m for m in matches if m.id in mine]

    def _organizations(self, roles: dict[str, str]) -> dict[str, str]:
        """role -> Organization reference for each site, creating the partners' Organizations once."""
        wanted = {fhir.organization_id(pid): pid for pid in roles.values()}
        present = self.resources.existing_ids("Organization", list(wanted))
        if len(present) < len(wanted):
            for org_id in sorted(set(wanted) - present):
                lock_identity(self.work.session, f"Organization|{org_id}")
            present = self.resources.existing_ids("Organization", list(wanted))
        for org_id, pid in wanted.items():
            if org_id not in present:
                profile = self.partners.get(pid)
                self.resources.create(
                    self.work, fhir.organization(pid, profile.name if profile else pid), id=org_id, reason="order site"
                )
        return {role: f"Organization/{fhir.organization_id(pid)}" for role, pid in roles.items()}

    def _organization(self, partner_id: str) -> Stored:
        """Each partner is one Organization with a stable id (``org-<partner id>``)."""
        try:
            return self.resources.read("Organization", fhir.organization_id(partner_id))
        except NotFound:
            pass
        profile = self.partners.get(partner_id)
        name = profile.name if profile else partner_id
        return self.resources.create(
            self.work, fhir.organization(partner_id, name), id=fhir.organization_id(partner_id), reason="order site"
        )

    def _timezone(self, partner_id: str) -> str:
        profile = self.partners.get(partner_id)
        return profile.timezone if profile else "UTC"

    # ------------------------------------------------------------------ move
    def advance(self, cmd: Advance) -> OrderView:
        work = self.work
        order = self.orders.get(cmd.order_id, for_update=True)
        product = get_product(order.product_code)
        at = event_time(work, cmd.occurred_at)
        self._require_active(order)
        nxt = product.next_stage(order.stage)
        if nxt is None:
            raise GuardFailed(f"order {order.id} has finished its journey")
        if cmd.to_stage != nxt.code:
            raise GuardFailed(
                f"cannot move from {order.stage} to {cmd.to_stage}; the next stage is {nxt.code}",
                [Issue(f"next stage is {nxt.code}", "to_stage")],
            )
        # The viability guard compares the reported time with the deadline. A step cannot have
        # happened before the step that preceded it: a report dated earlier (a wrong clock, a
        # mistake) is judged at the previous step's time, so it cannot pass an expired product.
        previous_at = self.orders.last_transition_at(order.id)
        judged_at = max(at, previous_at) if previous_at is not None else at
        failures = self._guard_failures(order, product, nxt.code, judged_at)
        if failures:
            raise GuardFailed(f"cannot enter {nxt.code}: " + "; ".join(i.message for i in failures), failures)

        before = _snapshot(order)
        order.journey_seq += 1
        order.stage_seq = order.journey_seq
        previous = order.stage
        order.stage = nxt.code
        order.updated_at = work.now
        if nxt.code == product.viability.starts_on:
            order.viability_started_at = at
            order.viability_deadline = at + timedelta(hours=product.viability.window_hours)
        index = product.index(nxt.code)
        self._set_task(order.id, index, "completed", at)
        if index + 1 < len(product.stages):
            self._set_task(order.id, index + 1, "ready", None)
        else:
            order.status = "completed"
            self._set_request_status(order.id, "completed", "journey complete: administered")
        self.orders.add_transition(
            id=uuid7(),
            order_id=order.id,
            seq=order.journey_seq,
            from_stage=previous,
            to_stage=nxt.code,
            at=at,
            actor=work.actor,
            reason=cmd.note,
            verification_id=None,
        )
        work.session.flush()
        work.audit(
            "update", "TherapyOrder", order.id, old=before, new=_snapshot(order), reason=cmd.note or f"stage {nxt.code}"
        )
        work.emit(
            EventType.ORDER_STAGE_CHANGED,
            order.id,
            OrderStageChanged(
                order_id=order.id, coi=order.coi, from_stage=previous, to_stage=nxt.code, status=order.status
            ),
        )
        return view(order)

    def _require_active(self, order: TherapyOrder) -> None:
        if order.status == "on-hold":
            holds = self.orders.open_holds(order.id)
            reasons = ", ".join(f"{h.kind} ({h.id})" for h in holds)
            raise GuardFailed(f"order {order.id} is on hold: {reasons}; release the hold first")
        if order.status != "active":
            raise GuardFailed(f"order {order.id} is {order.status}")

    def _guard_failures(self, order: TherapyOrder, product: Product, stage_code: str, at: datetime) -> list[Issue]:
        stage = product.stage(stage_code)
        floor = max(order.stage_seq, order.release_seq)
        failures: list[Issue] = []
        for cp in stage.checkpoints:
            if not self.orders.matched_since(order.id, cp.value, floor):
                failures.append(Issue(f"no matching identity verification at the {cp.value} checkpoint", cp.value))
        for guard in stage.guards:
            if guard is Guard.viability_valid:
                if order.viability_deadline is not None and at > order.viability_deadline:
                    failures.append(
                        Issue(f"viability window closed at {order.viability_deadline.isoformat()}", guard.value)
                    )
            elif guard is Guard.all_processing_steps:
                done = {
                    v.step
                    for v in self.orders.matched_since(order.id, Checkpoint.processing_step.value, order.release_seq)
                }
                missing = [s for s in product.processing_steps if s not in done]
                if missing:
                    failures.append(Issue(f"processing steps not verified: {', '.join(missing)}", guard.value))
            elif guard is Guard.results_in_spec:
                failures += self._results_failures(order, product)
            elif guard is Guard.release_signature:
                failure = self._release_signature_failure(order)
                if failure:
                    failures.append(Issue(failure, guard.value))
        return failures

    def _results_failures(self, order: TherapyOrder, product: Product) -> list[Issue]:
        results = {r.test_code: r for r in self.orders.current_results(order.id)}
        missing = [s.code for s in product.release_panel if s.code not in results]
        out_of_spec = [c for c, r in results.items() if not r.in_spec]
        failures = []
        if missing:
            failures.append(Issue(f"release results missing: {', '.join(missing)}", "results-in-spec"))
        if out_of_spec:
            failures.append(Issue(f"results out of specification: {', '.join(sorted(out_of_spec))}", "results-in-spec"))
        return failures

    def _release_signature_failure(self, order: TherapyOrder) -> str | None:
        session = self.work.session
        report_id = fhir.release_report_id(order.id)
        try:
            report = self.resources.read("DiagnosticReport", report_id)
        except NotFound:
            return "no release report to sign"
        for sig in signatures_for(session, "DiagnosticReport", report_id):
            if sig.meaning != Meaning.release.value or sig.record_version != report.version_id:
                continue
            if check_signature(session, sig).valid:
                return None
        return "no valid QA release signature on the current release report version"

    def _set_task(self, order_id: str, index: int, status: str, at: datetime | None) -> None:
        stored = self.resources.read("Task", fhir.task_id(order_id, index))
        task = dict(stored.content)
        if task.get("status") == status:
            return
        task["status"] = status
        if status == "completed" and at is not None:
            task["executionPeriod"] = {**task.get("executionPeriod", {}), "end": at.isoformat()}
            task["lastModified"] = self.work.now.isoformat()
        self.resources.update(self.work, task, reason=f"task {status}")

    def _current_task_index(self, order: TherapyOrder) -> int | None:
        product = get_product(order.product_code)
        index = product.index(order.stage) + 1
        return index if index < len(product.stages) else None

    def _pause_or_resume(self, order: TherapyOrder, status: str, reason: str) -> None:
        """Hold ("on-hold") or resume ("active"): the order, its ServiceRequest and the Task of the
        step being worked toward change together."""
        order.status = status
        self._set_request_status(order.id, status, reason)
        index = self._current_task_index(order)
        if index is not None:
            self._set_task(order.id, index, "on-hold" if status == "on-hold" else "ready", None)

    def _set_request_status(self, order_id: str, status: str, reason: str) -> Stored:
        sr = dict(self.resources.read("ServiceRequest", order_id).content)
        sr["status"] = status
        return self.resources.update(self.work, sr, reason=reason)

    # ------------------------------------------------------------------ hold / release / cancel
    def hold(self, cmd: PlaceHold, *, verification_id: str | None = None) -> OrderHold:
        work = self.work
        order = self.orders.get(cmd.order_id, for_update=True)
        if order.status in ("revoked", "completed"):
            raise GuardFailed(f"order {order.id} is {order.status}; it cannot be held")
        before = _snapshot(order)
        hold = OrderHold(
            id=uuid7(),
            order_id=order.id,
            kind=cmd.kind,
            reason=cmd.reason,
            opened_at=work.now,
            opened_by=work.actor,
            verification_id=verification_id,
        )
        self.orders.add_hold(hold)
        order.journey_seq += 1
        order.open_holds += 1
        order.updated_at = work.now
        if order.status != "on-hold":
            self._pause_or_resume(order, "on-hold", f"hold: {cmd.kind}")
        work.session.flush()
        work.audit(
            "create",
            "OrderHold",
            hold.id,
            new={"order": order.id, "kind": cmd.kind, "reason": cmd.reason},
            reason=cmd.reason,
        )
        work.audit("update", "TherapyOrder", order.id, old=before, new=_snapshot(order), reason=f"hold {hold.id}")
        work.emit(
            EventType.ORDER_HELD,
            order.id,
            OrderHeld(order_id=order.id, coi=order.coi, hold_id=hold.id, kind=cmd.kind, reason=cmd.reason),
        )
        severity = "critical" if cmd.kind == IDENTITY_HOLD else "warning"
        work.emit(
            EventType.ALERT_RAISED,
            order.id,
            AlertRaised(
                order_id=order.id,
                severity=severity,
                kind=f"hold.{cmd.kind}",
                message=f"order {order.id} (CoI {order.coi}) held: {cmd.reason}",
            ),
        )
        return hold

    def release_hold(self, cmd: ReleaseHold) -> OrderView:
        """Only a signed decision releases a hold; an identity hold needs a QA signer."""
        work = self.work
        order = self.orders.get(cmd.order_id, for_update=True)
        hold = self.orders.hold(cmd.hold_id, order.id)
        if hold.released_at is not None:
            raise GuardFailed(f"hold {hold.id} was already released")
        if order.status in ("revoked", "completed"):
            raise GuardFailed(f"order {order.id} is {order.status}")
        current = self.resources.read("ServiceRequest", order.id)
        signature = sign(
            work,
            record_type="ServiceRequest",
            record_id=order.id,
            record_version=current.version_id,
            username=cmd.signer.username,
            password=cmd.signer.password,
            meaning=Meaning.approval,
            reason=f"release of hold {hold.id}: {cmd.rationale}",
            required_role="qa" if hold.kind in QA_RELEASED_HOLDS else None,
        )
        decision = QaDecision(
            id=uuid7(),
            order_id=order.id,
            hold_id=hold.id,
            decision="release",
            rationale=cmd.rationale,
            signature_id=signature.id,
            decided_at=work.now,
        )
        work.session.add(decision)
        before = _snapshot(order)
        hold.released_at = work.now
        hold.released_by = signature.username
        hold.release_reason = cmd.rationale
        hold.qa_decision_id = decision.id
        order.journey_seq += 1
        order.release_seq = order.journey_seq
        order.open_holds -= 1
        order.updated_at = work.now
        if order.open_holds == 0:
            self._pause_or_resume(order, "active", f"hold {hold.id} released by QA decision {decision.id}")
        work.session.flush()
        work.audit(
            "create",
            "QaDecision",
            decision.id,
            actor=signature.username,
            reason=cmd.rationale,
            new={"order": order.id, "hold": hold.id, "decision": "release", "signature": signature.id},
        )
        work.audit(
            "update",
            "OrderHold",
            hold.id,
            actor=signature.username,
            reason=cmd.rationale,
            old={"released": False},
            new={"released": True, "qa_decision": decision.id},
        )
        work.audit(
            "update",
            "TherapyOrder",
            order.id,
            actor=signature.username,
            old=before,
            new=_snapshot(order),
            reason=f"hold {hold.id} released",
        )
        work.emit(
            EventType.ORDER_HOLD_RELEASED,
            order.id,
            OrderHoldReleased(order_id=order.id, coi=order.coi, hold_id=hold.id, qa_decision_id=decision.id),
        )
        return view(order)

    def cancel(self, cmd: Cancel) -> OrderView:
        work = self.work
        order = self.orders.get(cmd.order_id, for_update=True)
        if order.status in ("revoked", "completed"):
            raise GuardFailed(f"order {order.id} is already {order.status}")
        before = _snapshot(order)
        product = get_product(order.product_code)
        order.status = "revoked"
        order.journey_seq += 1
        order.updated_at = work.now
        self._set_request_status(order.id, "revoked", f"cancelled: {cmd.reason}")
        for index in range(product.index(order.stage) + 1, len(product.stages)):
            self._set_task(order.id, index, "cancelled", None)
        work.session.flush()
        work.audit("update", "TherapyOrder", order.id, old=before, new=_snapshot(order), reason=cmd.reason)
        work.emit(
            EventType.ORDER_CANCELLED, order.id, OrderCancelled(order_id=order.id, coi=order.coi, reason=cmd.reason)
        )
        return view(order)

    # ------------------------------------------------------------------ results
    def record_result(self, cmd: RecordResult) -> Stored:
        work = self.work
        order = self.orders.get(cmd.order_id, for_update=True)
        product = get_product(order.product_code)
        if order.status in ("revoked", "completed"):
            raise GuardFailed(f"order {order.id} is {order.status}")
        if cmd.performer is not None:
            roles = {r for p, r in self.orders.participants(order.id) if p == cmd.performer}
            if not roles & RESULT_ROLES:
                raise Forbidden(
                    f"partner {cmd.performer} is not the lab or manufacturing site of order {order.id}; "
                    "release results come only from them"
                )
        if product.index(order.stage) < product.index("in-manufacturing") or product.index(
            order.stage
        ) >= product.index("released"):
            raise GuardFailed(f"release results are recorded during manufacturing and QC, not at {order.stage}")
        spec = product.spec(cmd.test_code)
        if spec is None:
            raise ValidationFailed(
                f"{cmd.test_code!r} is not on the release panel of {product.code}",
                [Issue(f"known tests: {', '.join(s.code for s in product.release_panel)}", "test_code")],
            )
        if spec.expected is None:
            try:
                number = float(cmd.value)
            except ValueError:
                number = math.nan
            if not math.isfinite(number):  # NaN and inf are no results (the FHIR Observation refuses them)
                raise WrongDataType(f"{spec.name} needs a number", [Issue("not a number", "value")]) from None
            if cmd.unit and spec.unit and cmd.unit != spec.unit:
                raise ValidationFailed(
                    f"{spec.name} is reported in {spec.unit}, not {cmd.unit}", [Issue("unit mismatch", "unit")]
                )
        at = event_time(work, cmd.occurred_at)
        in_spec = spec.evaluate(cmd.value)
        performer_ref = None
        if cmd.performer:
            performer_ref = self._organization(cmd.performer).ref
        patient_ref = f"Patient/{order.patient_id}"
        obs = self.resources.create(
            work,
            fhir.observation(
                order_id=order.id,
                patient_ref=patient_ref,
                spec=spec,
                value=cmd.value,
                unit=cmd.unit,
                in_spec=in_spec,
                effective=at,
                performer_ref=performer_ref,
            ),
            reason=f"release result {spec.code}",
        )
        self.orders.supersede_results(order.id, spec.code)
        self.orders.add_result(
            id=uuid7(),
            order_id=order.id,
            test_code=spec.code,
            value=cmd.value,
            unit=cmd.unit or spec.unit,
            in_spec=in_spec,
            observation_id=obs.id,
            recorded_at=work.now,
            superseded=False,
        )
        order.journey_seq += 1
        order.updated_at = work.now
        current = self.orders.current_results(order.id)
        complete = {r.test_code for r in current} >= {s.code for s in product.release_panel}
        report = fhir.release_report(
            order_id=order.id,
            patient_ref=patient_ref,
            product=product,
            result_refs=[f"Observation/{r.observation_id}" for r in current],
            complete=complete,
            issued=work.now,
            all_in_spec=all(r.in_spec for r in current),
        )
        existing: Stored | None
        try:
            existing = self.resources.read("DiagnosticReport", report["id"])
        except NotFound:
            existing = None
        if existing is None:
            self.resources.create(work, report, id=report["id"], reason="release panel report")
        else:
            self.resources.update(work, report, reason="release panel report updated")
        work.audit(
            "create",
            "QcResult",
            obs.id,
            new={
                "order": order.id,
                "test": spec.code,
                "value": cmd.value,
                "unit": cmd.unit or spec.unit,
                "in_spec": in_spec,
            },
        )
        work.emit(
            EventType.ORDER_RESULT_RECORDED,
            order.id,
            OrderResultRecorded(
                order_id=order.id, coi=order.coi, test_code=spec.code, in_spec=in_spec, observation_id=obs.id
            ),
        )
        if not in_spec:
            work.emit(
                EventType.ALERT_RAISED,
                order.id,
                AlertRaised(
                    order_id=order.id,
                    severity="warning",
                    kind="result.out-of-spec",
                    message=f"order {order.id}: {spec.code} out of specification",
                ),
            )
        return obs

    def sign_release(self, order_id: str, signer_username: str, signer_password: str, reason: str) -> str:
        """QA signs the current release report version with meaning "release"."""
        order = self.orders.get(order_id, for_update=True)
        report = self.resources.read("DiagnosticReport", fhir.release_report_id(order.id))
        sig = sign(
            self.work,
            record_type="DiagnosticReport",
            record_id=report.id,
            record_version=report.version_id,
            username=signer_username,
            password=signer_password,
            meaning=Meaning.release,
            reason=reason,
            required_role="qa",
        )
        return sig.id
