"""Create or update a Patient, identity-safe.

The rules that keep two people apart:

* A patient is found by its identifiers (system + value). If the identifiers of one registration
  point at two different stored patients, it is refused: the hub never merges records by itself.
* The identity-defining demographics of a stored patient — family name and birth date — are never
  changed by a registration or update. A message that carries a known identifier with a different
  family name or birth date is refused with a clear reason: either it is another person wearing
  the wrong identifier (a mix-up at the source) or a correction that a person must review. Other
  demographics (given names, gender, address, telecom, extra identifiers) are updated.
* A new identifier is added to the stored patient only when it is held by nobody else.
* All of this happens within the sending partner's own patients (``scope.py``): another partner's
  patient is never matched, changed or revealed by a registration.

Concurrency: on PostgreSQL each identifier is locked (transaction-scoped advisory lock) before it is
looked up, so two hubs registering the same person at once cannot create two records; on SQLite
every write transaction is already serial (``BEGIN IMMEDIATE``).
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass
from typing import Any

from sqlalchemy import text

from hub import canonical
from hub.db.uow import Work
from hub.errors import Conflict, Issue, ValidationFailed
from hub.fhirstore.repository import ResourceRepository, Stored
from hub.fhirstore.validation import validate
from hub.patients import scope
from hub.patients.schemas import PatientView, RegisterPatient

IDENTITY_FIELDS = ("family name", "birth date")


def identifiers(patient: dict[str, Any]) -> list[tuple[str, str]]:
    out = []
    for ident in patient.get("identifier", []) or []:
        if isinstance(ident, dict) and ident.get("system") and ident.get("value"):
            out.append((str(ident["system"]), str(ident["value"])))
    return out


def family(patient: dict[str, Any]) -> str:
    for name in patient.get("name", []) or []:
        if isinstance(name, dict) and name.get("family"):
            return str(name["family"]).strip().casefold()
    return ""


def has_mrn(patient: dict[str, Any]) -> bool:
    for ident in patient.get("identifier", []) or []:
        for coding in ((ident or {}).get("type") or {}).get("coding", []) or []:
            if coding.get("code") == "MR" and ident.get("system") and ident.get("value"):
                return True
    return False


def _comparable(resource: dict[str, Any]) -> str:
    return canonical.dumps({k: v for k, v in resource.items() if k not in ("id", "meta")})


@dataclass
class PatientService:
    work: Work

    @property
    def resources(self) -> ResourceRepository:
        return ResourceRepository.for_work(self.work)

    def register(self, cmd: RegisterPatient) -> PatientView:
        patient = dict(cmd.patient)
        patient["resourceType"] = "Patient"
        patient.pop("id", None)
        patient.pop("meta", None)
        issues: list[Issue] = []
        if not has_mrn(patient):
            issues.append(
                Issue("the patient needs a medical record number (identifier of type MR)", "Patient.identifier")
            )
        if not family(patient):
            issues.append(Issue("the patient needs a family name", "Patient.name"))
        if not patient.get("birthDate"):
            issues.append(Issue("the patient needs a birth date", "Patient.birthDate"))
        if issues:
            raise ValidationFailed("the patient registration is not acceptable", issues)
        keys = identifiers(patient)
        self._lock(keys)
        found: dict[str, Stored] = {}
        for system, value in keys:
            for stored in self.resources.find_by_identifier("Patient", system, value):
                found[stored.id] = stored
        # Only the sender's own patients are candidates (scope.py): another partner's patient
        # with the same identifier is neither matched, nor updated, nor reported.
        mine = scope.patients_of(self.work.session, cmd.source, found)
        found = {pid: stored for pid, stored in found.items() if pid in mine}
        if len(found) > 1:
            raise Conflict(
                "the identifiers of this patient belong to different patients in the hub; they are never merged "
                "automatically — resolve the identity at the hospital",
                [Issue("identifiers held by different patients", "Patient.identifier")],
            )
        if not found:
            # (the resource store validates it with fhir.resources R4B; once is enough)
            stored = self.resources.create(self.work, patient, reason=f"patient registered by {cmd.source}")
            scope.own(self.work.session, cmd.source, stored.id)
            return PatientView(id=stored.id, version=stored.version_id, created=True, changed=True)
        validate(patient, "Patient")  # even when nothing changes, a malformed registration is refused
        current = next(iter(found.values()))
        changed = self._identity_changes(current.content, patient)
        if changed:
            raise Conflict(
                f"patient {current.id} is already registered with a different {' and '.join(changed)}; "
                "identity-defining data is never changed by a message — a person must review it",
                [Issue(f"{field} differs from the registered patient", _where(field)) for field in changed],
            )
        merged = self._merge(current.content, patient, cmd.source)
        if _comparable(merged) == _comparable(current.content):
            return PatientView(id=current.id, version=current.version_id, created=False, changed=False)
        merged["id"] = current.id
        stored = self.resources.update(
            self.work, merged, if_match=current.version_id, reason=f"patient {cmd.mode} by {cmd.source}"
        )
        return PatientView(id=stored.id, version=stored.version_id, created=False, changed=True)

    def _lock(self, keys: list[tuple[str, str]]) -> None:
        if self.work.session.get_bind().dialect.name != "postgresql":
            return
        for key in sorted({zlib.crc32(f"Patient|{s}|{v}".encode()) for s, v in keys}):
            self.work.session.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": key})

    @staticmethod
    def _identity_changes(stored: dict[str, Any], incoming: dict[str, Any]) -> list[str]:
        out = []
        if family(stored) != family(incoming):
            out.append("family name")
        if str(stored.get("birthDate", "")) != str(incoming.get("birthDate", "")):
            out.append("birth date")
        return out

    def _merge(self, stored: dict[str, Any], incoming: dict[str, Any], source: str) -> dict[str, Any]:
        merged = {k: v for k, v in stored.items() if k != "meta"}
        for key, value in incoming.items():
            if key in ("identifier", "resourceType"):
                continue
            merged[key] = value
        known = identifiers(stored)
        extra = []
        for ident in incoming.get("identifier", []) or []:
            pair = (str(ident.get("system")), str(ident.get("value")))
            if not ident.get("system") or pair in known:
                continue
            holders = self.resources.find_by_identifier("Patient", pair[0], pair[1])
            others = scope.patients_of(self.work.session, source, [h.id for h in holders if h.id != stored.get("id")])
            if others:
                raise Conflict(
                    "an identifier in this message is held by another patient; records are never merged",
                    [Issue("identifier held by another patient", "Patient.identifier")],
                )
            extra.append(ident)
            known.append(pair)
        merged["identifier"] = [*stored.get("identifier", []), *extra]
        return merged


def _where(field: str) -> str:
    return {"family name": "Patient.name", "birth date": "Patient.birthDate"}[field]
