from __future__ import annotations

import pytest

from hub.db.uow import Store
from hub.errors import Conflict, ValidationFailed
from hub.fhirstore.repository import ResourceRepository
from hub.patients.schemas import RegisterPatient
from hub.patients.service import PatientService
from tests.builders import patient


def _register(store: Store, body: dict, mode: str = "register"):  # type: ignore[no-untyped-def,type-arg]
    return store.run(lambda w: PatientService(w).register(RegisterPatient(patient=body, source="st-marys", mode=mode)))


def test_create_then_update_non_identity_fields(store: Store) -> None:
    first = _register(store, patient("P-1"))
    assert first.created
    same = _register(store, patient("P-1"))
    assert not same.changed
    changed = patient("P-1")
    changed["gender"] = "other"
    changed["identifier"].append({"system": "urn:example:other", "value": "X-1"})
    view = _register(store, changed, "update")
    assert view.changed
    assert view.version == 2
    stored = store.read(lambda s: ResourceRepository.from_session(s).read("Patient", first.id)).content
    assert stored["gender"] == "other"
    assert {i["value"] for i in stored["identifier"]} == {"P-1", "X-1"}


def test_identity_fields_are_never_changed_and_people_never_merged(store: Store) -> None:
    _register(store, patient("P-2", family="Rivera", birth="1971-03-09"))
    with pytest.raises(Conflict, match="birth date"):
        _register(store, patient("P-2", family="Rivera", birth="1980-01-01"), "update")
    with pytest.raises(Conflict, match="family name"):
        _register(store, patient("P-2", family="Other", birth="1971-03-09"))
    _register(store, patient("P-3", family="Novak", birth="1968-11-30"))
    both = patient("P-2")
    both["identifier"].append(dict(patient("P-3")["identifier"][0]))
    with pytest.raises(Conflict, match="different patients"):
        _register(store, both)
    stolen = patient("P-4", family="Rivera", birth="1971-03-09")
    stolen["identifier"].append({**patient("P-3")["identifier"][0], "type": {"text": "x"}})
    with pytest.raises(Conflict):
        _register(store, stolen)


def test_registration_needs_mrn_family_and_birth_date(store: Store) -> None:
    body = patient("P-5")
    del body["birthDate"]
    body["name"] = []
    with pytest.raises(ValidationFailed) as err:
        _register(store, body)
    assert {i.location for i in err.value.issues} >= {"Patient.name", "Patient.birthDate"}


def test_another_partners_registration_never_matches_changes_or_reveals_a_patient(store: Store) -> None:
    """ADT from hospital B carrying hospital A's MRN: not a conflict (that would tell B the MRN
    exists), not an update of A's record (that would be B writing A's patient): B's own record."""
    a = _register(store, patient("P-9", family="Rivera", birth="1971-03-09"))

    def from_b(body: dict, mode: str = "register"):  # type: ignore[no-untyped-def,type-arg]
        cmd = RegisterPatient(patient=body, source="lakeside-hospital", mode=mode)
        return store.run(lambda w: PatientService(w).register(cmd))

    other = patient("P-9", family="Other", birth="1980-01-01")
    other["gender"] = "male"
    b = from_b(other)
    assert b.created
    assert b.id != a.id
    # B's next update finds B's record, and A's own identifier rules still apply within A.
    assert from_b(other, "update").id == b.id
    with pytest.raises(Conflict, match="family name"):
        _register(store, patient("P-9", family="Other", birth="1971-03-09"))
    stored_a = store.read(lambda s: ResourceRepository.from_session(s).read("Patient", a.id))
    assert stored_a.version_id == 1
    assert stored_a.content["name"][0]["family"] == "Rivera"
    # An extra identifier that only another partner's patient holds does not block B either.
    extra = patient("P-10", family="Novak", birth="1968-11-30")
    _register(store, extra)
    more = dict(other)
    more["identifier"] = [*other["identifier"], dict(extra["identifier"][0])]
    assert from_b(more, "update").id == b.id
