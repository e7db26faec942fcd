"""Decisions about customs declarations for international legs.

A leg that names a customs partner gets a declaration when it is planned (so it is lodged before
the goods move). The outbound dispatcher submits it (``customs-submit``) and then follows its
status (``customs-poll``) until the authority releases or rejects it. Faults from the authority
are final and alert a person; transport failures are retried with backoff. While a declaration is
followed, an unreachable authority says nothing about the declaration: its status stays, a warning
says the authority cannot be reached, and polling goes on until nothing was heard for
``Policy.customs_poll_give_up`` (then a critical alert, the status still untouched).
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from datetime import datetime

from hub.db.models_logistics import CustomsDeclaration, OutboundWork, Shipment
from hub.db.uow import Work
from hub.events import CustomsStatusChanged, EventType
from hub.logistics.policy import Policy
from hub.logistics.ports import CustomsStatus
from hub.logistics.repository import LogisticsRepository
from hub.logistics.service import raise_alert
from hub.partners.loader import PartnerDirectory

TERMINAL = {"released", "rejected", "failed"}


def functional_reference(shipment: Shipment) -> str:
    """A reference without PHI, unique per shipment, within ICS2's 35 characters."""
    return ("CGT" + shipment.id.replace("-", "").upper())[:35]


@dataclass
class CustomsService:
    work: Work
    partners: PartnerDirectory
    policy: Policy = field(default_factory=Policy)

    @property
    def repo(self) -> LogisticsRepository:
        return LogisticsRepository.from_session(self.work.session)

    def open_declaration(self, shipment: Shipment) -> CustomsDeclaration:
        assert shipment.customs_partner is not None
        existing = self.repo.declaration_for(shipment.id)
        if existing is not None:
            return existing
        now = self.work.now
        decl = CustomsDeclaration(
            id=str(uuid.uuid4()),
            shipment_id=shipment.id,
            order_id=shipment.order_id,
            partner=shipment.customs_partner,
            functional_reference=functional_reference(shipment),
            status="pending",
            created_at=now,
        )
        self.repo.add(decl)
        self._work("customs-submit", decl, decl.functional_reference, now)
        self.work.audit(
            "create",
            "CustomsDeclaration",
            decl.id,
            new={"shipment": shipment.id, "partner": decl.partner, "reference": decl.functional_reference},
            reason="international leg",
        )
        return decl

    def _work(self, kind: str, decl: CustomsDeclaration, key: str, due: object) -> None:
        self.repo.add(
            OutboundWork(
                id=str(uuid.uuid4()),
                kind=kind,
                partner=decl.partner,
                subject_id=decl.id,
                idempotency_key=key,
                status="pending",
                attempts=0,
                next_attempt_at=due,
                created_at=self.work.now,
                updated_at=self.work.now,
            )
        )

    def submitted(self, declaration_id: str) -> None:
        decl = self.repo.declaration(declaration_id, for_update=True)
        if decl.status != "pending":
            return
        self._set(decl, "submitted", "declaration lodged")
        decl.submitted_at = self.work.now
        self._work("customs-poll", decl, decl.functional_reference + "-poll", self.work.now + self.policy.customs_poll)

    def update(self, declaration_id: str, status: CustomsStatus) -> bool:
        """Record what the authority says. True when the declaration needs no more polling."""
        decl = self.repo.declaration(declaration_id, for_update=True)
        decl.last_polled_at = self.work.now
        if status.mrn and not decl.mrn:
            decl.mrn = status.mrn[:18]
        if status.status != decl.status and decl.status not in TERMINAL:
            self._set(decl, status.status, status.detail)
            if status.status == "released":
                decl.cleared_at = self.work.now
            elif status.status == "under-control":
                raise_alert(
                    self.work,
                    decl.order_id,
                    "warning",
                    "customs.under-control",
                    f"customs {decl.partner} placed declaration {decl.functional_reference} "
                    f"(shipment {decl.shipment_id}) under control: {status.detail[:300]}",
                )
            elif status.status == "rejected":
                raise_alert(
                    self.work,
                    decl.order_id,
                    "critical",
                    "customs.rejected",
                    f"customs {decl.partner} rejected declaration {decl.functional_reference} "
                    f"(shipment {decl.shipment_id}): {status.detail[:300]}",
                )
        self.work.session.flush()
        return decl.status in TERMINAL

    def last_heard(self, declaration_id: str) -> datetime:
        """When the authority last answered about this declaration (its last poll, else lodging)."""
        decl = self.repo.declaration(declaration_id)
        return decl.last_polled_at or decl.submitted_at or decl.created_at

    def unreachable(self, declaration_id: str, reason: str, since: datetime, *, giving_up: bool) -> None:
        """The authority could not be asked about a declaration. Its status is not changed: the
        declaration is as the authority last said, only the hub cannot see it."""
        decl = self.repo.declaration(declaration_id)
        subject = (
            f"declaration {decl.functional_reference} (shipment {decl.shipment_id}, {decl.status} as last "
            f"heard at {since.isoformat(timespec='seconds')})"
        )
        if giving_up:
            raise_alert(
                self.work,
                decl.order_id,
                "critical",
                "customs.poll-abandoned",
                f"customs {decl.partner} unreachable since {since.isoformat(timespec='seconds')}: the hub stopped "
                f"following {subject}; follow it with the authority ({reason[:300]})",
            )
            return
        raise_alert(
            self.work,
            decl.order_id,
            "warning",
            "customs.unreachable",
            f"customs {decl.partner} cannot be reached about {subject}: {reason[:300]}; the hub keeps asking "
            f"and gives up after {self.policy.customs_poll_give_up} without an answer",
        )

    def failed(self, declaration_id: str, code: str | None, message: str) -> None:
        decl = self.repo.declaration(declaration_id, for_update=True)
        if decl.status in TERMINAL:
            return
        self._set(decl, "failed", f"{code or 'error'}: {message}"[:2000])
        subject = f"declaration {decl.functional_reference} (shipment {decl.shipment_id})"
        if code == "config":  # the hub's own set-up: nothing reached the authority
            kind, what = "customs.config", f"{subject} for customs {decl.partner} was not lodged"
        elif code == "unrecorded":
            kind, what = "customs.unrecorded", f"{subject} was lodged with customs {decl.partner}, not recorded"
        else:
            kind, what = "customs.fault", f"customs {decl.partner} refused {subject}"
        raise_alert(self.work, decl.order_id, "critical", kind, f"{what}: {code or 'error'}: {message[:600]}")

    def _set(self, decl: CustomsDeclaration, status: str, detail: str) -> None:
        old = decl.status
        decl.status = status
        decl.detail = detail[:2000]
        self.work.session.flush()
        self.work.audit(
            "update",
            "CustomsDeclaration",
            decl.id,
            old={"status": old},
            new={"status": status},
            reason=detail[:500],
        )
        self.work.emit(
            EventType.CUSTOMS_STATUS_CHANGED,
            decl.order_id,
            CustomsStatusChanged(
                order_id=decl.order_id, shipment_id=decl.shipment_id, declaration_id=decl.id, status=status
            ),
        )
