"""Identity verification at the checkpoints, and the custody trail.

The hub never "fixes" a mismatch: a verification whose scanned identifiers differ from what the
order expects is recorded as a mismatch, the order is put on hold in the same transaction, and a
critical alert is raised. Only a signed QA decision (``OrderService.release_hold``) lifts that hold,
and verifications made before the release never count as evidence afterwards.

A scan that cannot be read correctly (length, format, check character) is refused before anything
is written: the operator scans again.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any
from zoneinfo import ZoneInfo

from hub import canonical
from hub.db.uow import Work
from hub.errors import GuardFailed, Issue, ValidationFailed
from hub.events import CustodyHandoffEvent, EventType, IdentityVerified
from hub.fhirstore.repository import ResourceRepository
from hub.identity.scans import interpret
from hub.ids import uuid7
from hub.orders.repository import OrderRepository
from hub.orders.schemas import PlaceHold, RecordHandoff, VerificationView, VerifyIdentity
from hub.orders.service import IDENTITY_HOLD, OrderService, _primary_identifier, event_time
from hub.partners.loader import PartnerDirectory
from hub.products.registry import get_product
from hub.products.schemas import Checkpoint


@dataclass
class IdentityService:
    work: Work
    partners: PartnerDirectory

    @property
    def orders(self) -> OrderRepository:
        return OrderRepository.from_session(self.work.session)

    def verify(self, cmd: VerifyIdentity) -> VerificationView:
        work = self.work
        order = self.orders.get(cmd.order_id, for_update=True)
        if order.status in ("revoked", "completed"):
            raise GuardFailed(f"order {order.id} is {order.status}; no verification is due")
        product = get_product(order.product_code)
        nxt = product.next_stage(order.stage)
        due = set(nxt.checkpoints) if nxt else set()
        if order.stage == "in-manufacturing":
            due.add(Checkpoint.processing_step)  # each further processing step is verified too
        # Names compared as people type them: " op", "Op" and "op " are the operator, and a blank is
        # no one (a second person who is the operator, or no one, is no second check).
        second = (cmd.second_person or "").strip().casefold()
        if cmd.method == "manual" and (not second or second == cmd.operator.strip().casefold()):
            raise ValidationFailed(
                "a manual verification needs a second person, other than the operator",
                [Issue("second person missing", "second_person")],
            )
        scanned = interpret([(s.kind, s.value) for s in cmd.scans])  # refuses unreadable scans
        if not scanned.coi:
            raise ValidationFailed(
                "verification incomplete: no chain-of-identity identifier was scanned",
                [Issue("scan the CoI label", "scans")],
            )
        wrong_coi = [c for c in scanned.coi if c != order.coi]
        # Another order's bag in hand is a mismatch whatever step the order is at: it is recorded,
        # held and alerted, not refused as "not due" (which reads as a workflow slip and leaves
        # no trace). A matching scan at a step that is not due is refused as before.
        if cmd.checkpoint not in due and not wrong_coi:
            raise GuardFailed(
                f"the {cmd.checkpoint.value} checkpoint is not due at stage {order.stage}",
                [Issue(f"due: {', '.join(sorted(c.value for c in due)) or 'none'}", "checkpoint")],
            )
        if (
            cmd.checkpoint in due
            and cmd.checkpoint is Checkpoint.processing_step
            and cmd.step not in product.processing_steps
        ):
            raise ValidationFailed(
                f"processing step {cmd.step!r} is not one of {', '.join(product.processing_steps)}",
                [Issue("unknown processing step", "step")],
            )
        needs_patient = (
            nxt is not None
            and nxt.requires_patient_scan
            and cmd.checkpoint is Checkpoint.administration
            and cmd.checkpoint in due
        )
        if needs_patient and not scanned.patient:
            raise ValidationFailed(
                "verification incomplete: scan the patient's wristband as well",
                [Issue("patient identifier missing", "scans")],
            )

        patient = ResourceRepository.for_work(work).read("Patient", order.patient_id).content
        ident = _primary_identifier(patient)
        expected_patient = str(ident["value"]) if ident else ""
        reasons: list[str] = []
        if wrong_coi:
            reasons.append(f"scanned CoI {', '.join(wrong_coi)} is not this order's CoI {order.coi}")
        if scanned.patient and not all(_is_patient(p, patient, expected_patient) for p in scanned.patient):
            reasons.append("scanned patient identifier is not this order's patient")
        result = "mismatch" if reasons else "match"

        at = event_time(work, cmd.occurred_at)
        zone_name = cmd.timezone or self._site_zone(cmd.site) or order.timezone
        try:
            zone = ZoneInfo(zone_name)
        except Exception:
            raise ValidationFailed(
                f"unknown time zone {zone_name!r}", [Issue("unknown time zone", "timezone")]
            ) from None
        order.journey_seq += 1
        verification_id = uuid7()
        expected = {"coi": order.coi}
        if needs_patient or scanned.patient:
            expected["patient"] = expected_patient
        scanned_record = {"coi": scanned.coi, "patient": scanned.patient, "read": scanned.recorded}
        self.orders.add_verification(
            id=verification_id,
            order_id=order.id,
            seq=order.journey_seq,
            checkpoint=cmd.checkpoint.value,
            step=cmd.step,
            occurred_at=at,
            local_time=at.astimezone(zone).isoformat(),
            timezone=zone_name,
            operator=cmd.operator,
            second_person=cmd.second_person,
            method=cmd.method,
            device=cmd.device,
            site=cmd.site,
            scanned=canonical.dumps(scanned_record),
            expected=canonical.dumps(expected),
            result=result,
            reason="; ".join(reasons) or None,
        )
        work.session.flush()
        # Identifiers are recorded in the verification row; the audit entry carries its content hash.
        work.audit(
            "create",
            "IdentityVerification",
            verification_id,
            reason=f"{cmd.checkpoint.value} verification",
            new={
                "order": order.id,
                "checkpoint": cmd.checkpoint.value,
                "step": cmd.step,
                "result": result,
                "operator": cmd.operator,
                "method": cmd.method,
                "device": cmd.device,
                "scanned_hash": canonical.sha256_hex(canonical.dumps(scanned_record)),
                "expected_hash": canonical.sha256_hex(canonical.dumps(expected)),
            },
        )
        hold_id = None
        event = EventType.IDENTITY_VERIFIED if result == "match" else EventType.IDENTITY_MISMATCH
        work.emit(
            event,
            order.id,
            IdentityVerified(
                order_id=order.id,
                coi=order.coi,
                verification_id=verification_id,
                checkpoint=cmd.checkpoint.value,
                result=result,
            ),
        )
        if result == "mismatch":
            hold = OrderService(work, self.partners).hold(
                PlaceHold(
                    order_id=order.id,
                    kind=IDENTITY_HOLD,
                    reason=f"identity mismatch at {cmd.checkpoint.value}: {'; '.join(reasons)}",
                ),
                verification_id=verification_id,
            )
            hold_id = hold.id
        return VerificationView(
            id=verification_id,
            order_id=order.id,
            checkpoint=cmd.checkpoint.value,
            result=result,
            reason="; ".join(reasons) or None,
            order_status=order.status,
            hold_id=hold_id,
        )

    def _site_zone(self, site: str | None) -> str | None:
        if site is None:
            return None
        profile = self.partners.get(site)
        return profile.timezone if profile else None

    def handoff(self, cmd: RecordHandoff) -> str:
        work = self.work
        order = self.orders.get(cmd.order_id, for_update=True)
        if order.status in ("revoked",):
            raise GuardFailed(f"order {order.id} is revoked")
        if cmd.from_party == cmd.to_party:
            raise ValidationFailed("a handoff needs two different parties", [Issue("same party", "to_party")])
        at = event_time(work, cmd.at)
        order.journey_seq += 1
        handoff_id = uuid7()
        self.orders.add_handoff(
            id=handoff_id,
            order_id=order.id,
            seq=order.journey_seq,
            material=cmd.material,
            from_party=cmd.from_party,
            to_party=cmd.to_party,
            at=at,
            location=cmd.location,
            reference=cmd.reference,
            recorded_by=work.actor,
        )
        work.session.flush()
        work.audit(
            "create",
            "CustodyHandoff",
            handoff_id,
            reason="custody handoff",
            new={
                "order": order.id,
                "material": cmd.material,
                "from": cmd.from_party,
                "to": cmd.to_party,
                "at": at.isoformat(),
                "location": cmd.location,
                "reference": cmd.reference,
            },
        )
        work.emit(
            EventType.CUSTODY_HANDOFF,
            order.id,
            CustodyHandoffEvent(
                order_id=order.id,
                coi=order.coi,
                handoff_id=handoff_id,
                material=cmd.material,
                from_party=cmd.from_party,
                to_party=cmd.to_party,
            ),
        )
        return handoff_id


def _is_patient(scanned: str, patient: dict[str, Any], primary_value: str) -> bool:
    """A wristband scan names this patient: ``system|value`` must be one of the patient's
    identifiers, system included (the same MRN value from another hospital is another person);
    a bare value must be the patient's primary identifier (MRN)."""
    if "|" not in scanned:
        return bool(primary_value) and scanned == primary_value
    system, value = scanned.rsplit("|", 1)
    return any(
        isinstance(i, dict) and str(i.get("system")) == system and str(i.get("value")) == value
        for i in patient.get("identifier", []) or []
    )
