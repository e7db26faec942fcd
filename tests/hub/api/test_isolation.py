"""Tenant matrix: partner A's token × every endpoint × partner B's ids → always denied, and the
same on PostgreSQL with the application's filter switched off (row-level security alone)."""

from __future__ import annotations

import uuid
from typing import Any

import pytest
from fastapi.testclient import TestClient

from hub.db.uow import Store
from hub.fhirstore.repository import ResourceRepository
from tests.hub.api.conftest import OPERATOR, ClientKey, bearer
from tests.hub.api.fhir_data import order, patient

TYPES_WITH_IDS = (
    "ServiceRequest",
    "Patient",
    "Practitioner",
    "Task",
    "Observation",
    "Location",
    "Device",
    "Organization",
    "Subscription",
)


def _b_world(api: TestClient, hb: dict[str, str]) -> dict[str, list[str]]:
    """Partner B (st-marys) places an order and writes resources around it."""
    sr = api.post("/fhir/ServiceRequest", json=order(), headers=hb).json()
    oid = sr["id"]
    pid = sr["subject"]["reference"].split("/")[1]
    prid = sr["requester"]["reference"].split("/")[1]
    obs = api.post(
        "/fhir/Observation",
        json={
            "resourceType": "Observation",
            "status": "final",
            "code": {"text": "weight"},
            "subject": {"reference": f"Patient/{pid}"},
            "basedOn": [{"reference": f"ServiceRequest/{oid}"}],
            "identifier": [{"system": "urn:b", "value": "obs-1"}],
        },
        headers=hb,
    )
    assert obs.status_code == 201, obs.text
    loc = api.post(
        "/fhir/Location",
        json={
            "resourceType": "Location",
            "name": "B apheresis unit",
            "identifier": [{"system": "urn:b", "value": "loc-1"}],
        },
        headers=hb,
    )
    dev = api.post(
        "/fhir/Device",
        json={"resourceType": "Device", "status": "active", "patient": {"reference": f"Patient/{pid}"}},
        headers=hb,
    )
    sub = api.post(
        "/fhir/Subscription",
        json={
            "resourceType": "Subscription",
            "status": "requested",
            "reason": "order status",
            "criteria": "ServiceRequest",
            "channel": {"type": "rest-hook", "endpoint": "http://127.0.0.1:9/hook", "payload": "application/fhir+json"},
        },
        headers=hb,
    )
    assert sub.status_code == 201, sub.text
    return {
        "ServiceRequest": [oid],
        "Patient": [pid],
        "Practitioner": [prid],
        "Task": [f"{oid}-s01", f"{oid}-s05"],
        "Observation": [obs.json()["id"]],
        "Location": [loc.json()["id"]],
        "Device": [dev.json()["id"]],
        "Organization": ["org-st-marys"],
        "Subscription": [sub.json()["id"]],
    }


def _matrix(api: TestClient, ha: dict[str, str], b: dict[str, list[str]]) -> list[str]:
    """Every way A could reach B's data; returns the leaks found (empty = isolated)."""
    leaks: list[str] = []
    every_b = {i for ids in b.values() for i in ids}

    def expect(resp: Any, what: str, statuses: tuple[int, ...] = (404,)) -> None:
        if resp.status_code not in statuses:
            leaks.append(f"{what} -> {resp.status_code}: {resp.text[:200]}")
        elif resp.status_code == 404:
            # exactly what a never-existing id gets (the OperationOutcome echoes the asked-for id)
            issue = resp.json()["issue"][0]
            if issue["code"] != "not-found":
                leaks.append(f"{what}: 404 with code {issue['code']}")
        else:
            # a Bundle: no entry may be one of B's (links echo the query, that is fine)
            entries = resp.json().get("entry", [])
            found = {e.get("resource", {}).get("id") for e in entries} & every_b
            if found:
                leaks.append(f"{what} returned B's {sorted(found)}")

    for rtype, ids in b.items():
        for rid in ids:
            expect(api.get(f"/fhir/{rtype}/{rid}", headers=ha), f"read {rtype}")
            expect(api.get(f"/fhir/{rtype}/{rid}/_history", headers=ha), f"history {rtype}")
            expect(api.get(f"/fhir/{rtype}/{rid}/_history/1", headers=ha), f"vread {rtype}")
            current = api.get(f"/fhir/{rtype}/{rid}", headers=OPERATOR).json()
            expect(api.put(f"/fhir/{rtype}/{rid}", json=current, headers=ha), f"update {rtype}")
            expect(api.get(f"/fhir/{rtype}", params={"_id": rid}, headers=ha), f"search _id {rtype}", (200,))
            expect(api.get(f"/fhir/{rtype}/_history", headers=ha), f"type history {rtype}", (200,))
            ref = {"reference": f"{rtype}/{rid}"}
            expect(
                api.post(
                    "/fhir/Observation",
                    json={"resourceType": "Observation", "status": "final", "code": {"text": "x"}, "focus": [ref]},
                    headers=ha,
                ),
                f"reference {rtype} in a write",
            )
            batch = {
                "resourceType": "Bundle",
                "type": "batch",
                "entry": [{"request": {"method": "GET", "url": f"{rtype}/{rid}"}}],
            }
            r = api.post("/fhir", json=batch, headers=ha)
            if r.status_code != 200 or r.json()["entry"][0]["response"]["status"] != "404":
                leaks.append(f"batch GET {rtype}")
            tx = {**batch, "type": "transaction"}
            expect(api.post("/fhir", json=tx, headers=ha), f"transaction GET {rtype}")
    for params in (
        {"identifier": "urn:b|obs-1"},
        {"identifier": "urn:b|loc-1"},
        {"_include": "ServiceRequest:patient"},
        {"patient": b["Patient"][0]},
        {"subject": f"Patient/{b['Patient'][0]}"},
    ):
        rtype = "ServiceRequest" if "_include" in params else ("Location" if "loc" in str(params) else "Observation")
        if "patient" in params or "subject" in params:
            for t in ("ServiceRequest", "Task", "Observation"):
                expect(api.get(f"/fhir/{t}", params=params, headers=ha), f"search {t} {params}", (200,))
            continue
        expect(api.get(f"/fhir/{rtype}", params=params, headers=ha), f"search {rtype} {params}", (200,))
    # An order for B's patient, and B's order cancelled: both refused.
    sneaky = order()
    sneaky.pop("contained")
    sneaky["contained"] = [{**order()["contained"][1]}]
    sneaky["subject"] = {"reference": f"Patient/{b['Patient'][0]}"}
    r = api.post("/fhir/ServiceRequest", json=sneaky, headers=ha)
    if r.status_code < 400 or (b["Patient"][0] in r.text and r.status_code != 422):
        leaks.append(f"order for B's patient -> {r.status_code}")
    # Conditional create with B's identifier creates A's own, never answers with B's.
    r = api.post(
        "/fhir/Location",
        json={"resourceType": "Location", "name": "A", "identifier": [{"system": "urn:b", "value": "loc-1"}]},
        headers={**ha, "If-None-Exist": "identifier=urn:b|loc-1"},
    )
    if r.status_code != 201 or r.json()["id"] in b["Location"]:
        leaks.append(f"conditional create matched B's Location -> {r.status_code}")
    return leaks


def test_tenant_matrix(api: TestClient, client_keys: dict[str, ClientKey]) -> None:
    hb = bearer(api, client_keys["st-marys"])
    ha = bearer(api, client_keys["lakeside-hospital"])
    b = _b_world(api, hb)
    # B sees its own world (the matrix is not vacuous).
    for rtype, ids in b.items():
        for rid in ids:
            assert api.get(f"/fhir/{rtype}/{rid}", headers=hb).status_code == 200, (rtype, rid)
    assert _matrix(api, ha, b) == []


def test_manufacturing_site_sees_the_order_it_takes_part_in(api: TestClient, client_keys: dict[str, ClientKey]) -> None:
    hb = bearer(api, client_keys["st-marys"])
    hl = bearer(api, client_keys["leiden-cell-factory"])
    sr = api.post("/fhir/ServiceRequest", json=order(), headers=hb).json()
    assert api.get(f"/fhir/ServiceRequest/{sr['id']}", headers=hl).status_code == 200
    assert api.get(f"/fhir/{sr['subject']['reference']}", headers=hl).status_code == 200
    tasks = api.get("/fhir/Task", params={"based-on": f"ServiceRequest/{sr['id']}"}, headers=hl).json()
    assert len(tasks["entry"]) > 5
    # ... but it cannot cancel it: only the ordering partner may.
    cancel = {**sr, "status": "revoked"}
    assert api.put(f"/fhir/ServiceRequest/{sr['id']}", json=cancel, headers=hl).status_code == 403
    r = api.put(f"/fhir/ServiceRequest/{sr['id']}", json=cancel, headers={**hb, "If-Match": 'W/"1"'})
    assert r.status_code == 200, r.text
    assert r.json()["status"] == "revoked"


def test_row_level_security_alone_denies(
    api: TestClient, client_keys: dict[str, ClientKey], db_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """PostgreSQL: with the application's predicate switched off, the policies still hide B."""
    if not db_url.startswith("postgresql"):
        pytest.skip("row-level security is PostgreSQL's; SQLite relies on the application rule")
    hb = bearer(api, client_keys["st-marys"])
    ha = bearer(api, client_keys["lakeside-hospital"])
    b = _b_world(api, hb)
    from sqlalchemy import true

    import hub.api.fhir_search as fs
    import hub.api.isolation as iso

    monkeypatch.setattr(iso, "visible_ids", lambda session, principal, rtype, ids: set(ids))
    monkeypatch.setattr(iso, "require_visible", lambda *a, **k: None)
    monkeypatch.setattr(fs, "require_visible", lambda *a, **k: None)
    monkeypatch.setattr(fs, "visible_ids", lambda session, principal, rtype, ids: set(ids))
    monkeypatch.setattr(fs, "visible_condition", lambda *a, **k: true())
    for rtype, ids in b.items():
        for rid in ids:
            assert api.get(f"/fhir/{rtype}/{rid}", headers=ha).status_code == 404, (rtype, rid)
            assert api.get(f"/fhir/{rtype}", params={"_id": rid}, headers=ha).json().get("entry", []) == []
            assert api.get(f"/fhir/{rtype}/{rid}/_history", headers=ha).status_code == 404
    # and B still sees its own through RLS
    assert api.get(f"/fhir/ServiceRequest/{b['ServiceRequest'][0]}", headers=hb).status_code == 200


def test_an_mrn_is_matched_only_among_the_partners_own_patients(
    api: TestClient, client_keys: dict[str, ClientKey]
) -> None:
    """Hospital B sends hospital A's MRN. Matching across partners would be an oracle (a 409 tells
    B the MRN exists) and a leak (B's order would link to, and let B read, A's Patient record). B
    gets a record of its own instead; A's record is neither revealed nor changed."""
    ha, hb = bearer(api, client_keys["st-marys"]), bearer(api, client_keys["lakeside-hospital"])
    # Another person under A's MRN, and what may be the same person: each with an MRN of its own.
    for family in ("Someone-Else", "Rivera"):
        mrn = f"MRN-SHARED-{uuid.uuid4().hex[:8]}"
        a = api.post("/fhir/ServiceRequest", json=order(pat=patient(mrn, family="Rivera")), headers=ha)
        assert a.status_code == 201, a.text
        a_patient = a.json()["subject"]["reference"]
        b = api.post("/fhir/ServiceRequest", json=order(pat=patient(mrn, family=family)), headers=hb)
        assert b.status_code == 201, b.text
        assert b.json()["subject"]["reference"] != a_patient
        assert api.get(f"/fhir/{a_patient}", headers=hb).status_code == 404
    # Within one partner the collision rule still holds: A's MRN on another person is refused...
    again = api.post("/fhir/ServiceRequest", json=order(pat=patient(mrn, family="Someone-Else")), headers=ha)
    assert again.status_code == 409, again.text
    # ...and A's next order for the same person reuses A's record, unchanged.
    same = api.post("/fhir/ServiceRequest", json=order(pat=patient(mrn, family="Rivera")), headers=ha)
    assert same.status_code == 201, same.text
    assert same.json()["subject"]["reference"] == a_patient
    assert api.get(f"/fhir/{a_patient}", headers=ha).json()["meta"]["versionId"] == "1"


def test_a_requester_is_matched_only_among_the_partners_own_practitioners(
    api: TestClient, client_keys: dict[str, ClientKey]
) -> None:
    """Hospital A registers a Practitioner under the NPI hospital B's clinician has. Matched across
    partners, B's order would name A's record as its requester, and A, which may update what it
    registered, could change the name and telephone B's order shows."""
    ha, hb = bearer(api, client_keys["lakeside-hospital"]), bearer(api, client_keys["st-marys"])
    npi = {"system": "http://hl7.org/fhir/sid/us-npi", "value": f"9{uuid.uuid4().int % 10**9:09d}"}
    theirs = api.post(
        "/fhir/Practitioner",
        json={"resourceType": "Practitioner", "identifier": [npi], "name": [{"family": "Mallory"}]},
        headers=ha,
    )
    assert theirs.status_code == 201, theirs.text
    mine = order()
    for c in mine["contained"]:
        if c["resourceType"] == "Practitioner":
            c["identifier"] = [npi]
    first = api.post("/fhir/ServiceRequest", json=mine, headers=hb)
    assert first.status_code == 201, first.text
    requester = first.json()["requester"]["reference"]
    assert requester != f"Practitioner/{theirs.json()['id']}"
    # B's next order under the same NPI reuses B's own record of the clinician.
    second = api.post("/fhir/ServiceRequest", json={**mine, "identifier": order()["identifier"]}, headers=hb)
    assert second.status_code == 201, second.text
    assert second.json()["requester"]["reference"] == requester
    # A's record stays A's: B does not see it, A cannot see B's.
    assert api.get(f"/fhir/Practitioner/{theirs.json()['id']}", headers=hb).status_code == 404
    assert api.get(f"/fhir/{requester}", headers=ha).status_code == 404


def test_a_transaction_cannot_give_two_entries_one_full_url(api: TestClient, client_keys: dict[str, ClientKey]) -> None:
    """A POST sharing its fullUrl with a PUT took the PUT's id: a client-chosen id for a new
    resource, e.g. another partner's ``org-<partner>`` Organization, which the hub reuses on every
    order naming that partner as a site."""
    ha = bearer(api, client_keys["lakeside-hospital"])
    url = f"urn:uuid:{uuid.uuid4()}"
    target = "org-riverside-cancer-center"
    spoof = {"resourceType": "Organization", "name": "Riverside (spoofed)"}
    tx = {
        "resourceType": "Bundle",
        "type": "transaction",
        "entry": [
            {"fullUrl": url, "resource": spoof, "request": {"method": "POST", "url": "Organization"}},
            {
                "fullUrl": url,
                "resource": {**spoof, "id": target},
                "request": {"method": "PUT", "url": f"Organization/{target}"},
            },
        ],
    }
    r = api.post("/fhir", json=tx, headers=ha)
    assert r.status_code == 400, r.text
    outcome = r.json()
    assert outcome["resourceType"] == "OperationOutcome"
    assert outcome["issue"][0]["expression"] == ["Bundle.entry[1].fullUrl"]
    assert api.get(f"/fhir/Organization/{target}", headers=OPERATOR).status_code == 404


def test_a_reference_type_in_the_wrong_letter_case_reaches_no_order(
    api: TestClient, client_keys: dict[str, ClientKey], store: Store
) -> None:
    """``servicerequest/<id>`` names no resource (type names are case-sensitive), but SQLite's
    LIKE ignores case: such a reference linked a partner's Observation into another's order."""
    ha, hb = bearer(api, client_keys["lakeside-hospital"]), bearer(api, client_keys["st-marys"])
    oid = api.post("/fhir/ServiceRequest", json=order(), headers=hb).json()["id"]
    obs = {"resourceType": "Observation", "status": "final", "code": {"text": "injected"}}
    for headers in (ha, OPERATOR):
        r = api.post(
            "/fhir/Observation", json={**obs, "basedOn": [{"reference": f"servicerequest/{oid}"}]}, headers=headers
        )
        assert r.status_code == 422, r.text
        assert "case-sensitive" in r.json()["issue"][0]["diagnostics"]
    # One stored before this check (or by another path) still reaches no order: the read rule
    # compares the type case-sensitively on both databases.
    stored = store.run(
        lambda w: ResourceRepository.for_work(w).create(
            w, {**obs, "basedOn": [{"reference": f"servicerequest/{oid}"}]}, reason="test: stored before the check"
        )
    )
    assert api.get(f"/fhir/Observation/{stored.id}", headers=hb).status_code == 404
    assert api.get(f"/fhir/Observation/{stored.id}", headers=OPERATOR).status_code == 200
