"""REST semantics: conditional create under concurrency, Idempotency-Key, Prefer, ETag/If-Match,
formats, search paging and _include, history, batch, and third-party examples round-tripping."""

from __future__ import annotations

import json
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

from hub.api.app import create_app
from hub.context import HubContext
from hub.db.uow import open_store
from hub.partners.loader import PartnerDirectory
from hub.settings import Settings
from tests.conftest import CORPORA
from tests.hub.api.conftest import OPERATOR, ClientKey, LiveServer, bearer
from tests.hub.api.fhir_data import order

R4 = CORPORA / "fhir" / "r4-spec-examples"
SYNTHEA = CORPORA / "fhir" / "synthea-transaction-bundles"


def _location(name: str, value: str) -> dict[str, Any]:
    return {"resourceType": "Location", "name": name, "identifier": [{"system": "urn:test:loc", "value": value}]}


@pytest.mark.slow
def test_fifty_parallel_conditional_creates_make_one(
    fhir_app: FastAPI, fhir_settings: Settings, fhir_partners: PartnerDirectory, db_url: str
) -> None:
    """Two server processes' worth of stores (separate engines and committers) on one database,
    25 identical conditional creates each, all at once: exactly one resource."""
    second_store = open_store(db_url)
    second = create_app(HubContext(fhir_settings, second_store, fhir_partners))
    value = uuid.uuid4().hex
    try:
        with LiveServer(fhir_app) as one, LiveServer(second) as two:
            with httpx.Client() as c:
                token = c.post(f"{one}/auth/token", data=_form(one)).json()["access_token"]

            def create(i: int) -> tuple[int, str]:
                base = one if i % 2 else two
                with httpx.Client(timeout=60) as c:
                    r = c.post(
                        f"{base}/fhir/Location",
                        json=_location("Apheresis unit", value),
                        headers={
                            "Authorization": f"Bearer {token}",
                            "If-None-Exist": f"identifier=urn:test:loc|{value}",
                            "Content-Type": "application/fhir+json",
                        },
                    )
                    assert r.status_code in (200, 201), r.text
                    return r.status_code, r.json()["id"]

            with ThreadPoolExecutor(50) as pool:
                results = list(pool.map(create, range(50)))
            with httpx.Client() as c:
                found = c.get(f"{one}/fhir/Location", params={"identifier": f"urn:test:loc|{value}"}, headers=OPERATOR)
    finally:
        second_store.dispose()
    assert [s for s, _ in results].count(201) == 1
    assert len({i for _, i in results}) == 1
    assert len(found.json()["entry"]) == 1


_FORM_KEYS: dict[str, ClientKey] = {}


@pytest.fixture(autouse=True)
def _keys(client_keys: dict[str, ClientKey]) -> None:
    _FORM_KEYS.update(client_keys)


def _form(base: str) -> dict[str, str]:
    from tests.hub.api.conftest import token_form

    return token_form(_FORM_KEYS["st-marys"], f"{base}/auth/token")


def test_idempotency_key(api: TestClient, client_keys: dict[str, ClientKey], fhir_app: FastAPI) -> None:
    h = bearer(api, client_keys["st-marys"])
    key = {"Idempotency-Key": str(uuid.uuid4())}
    body = order()
    first = api.post("/fhir/ServiceRequest", json=body, headers={**h, **key})
    again = api.post("/fhir/ServiceRequest", json=body, headers={**h, **key})
    assert first.status_code == again.status_code == 201
    assert first.content == again.content
    assert again.headers["idempotent-replayed"] == "true"
    assert api.get("/fhir/ServiceRequest", params={"_id": first.json()["id"]}, headers=h).json()["total"] == 1
    other = api.post("/fhir/ServiceRequest", json=order(), headers={**h, **key})
    assert other.status_code == 422
    # the same key from another partner is another key
    hl = bearer(api, client_keys["lakeside-hospital"])
    loc = api.post("/fhir/Location", json=_location("x", "1"), headers={**hl, **key})
    assert loc.status_code == 201
    # in flight: the first request still holds the key
    busy = str(uuid.uuid4())
    with fhir_app.state.inflight.claim("st-marys", busy):
        r = api.post("/fhir/ServiceRequest", json=order(), headers={**h, "Idempotency-Key": busy})
    assert r.status_code == 409
    assert api.post("/fhir/ServiceRequest", json=order(), headers={**h, "Idempotency-Key": busy}).status_code == 201


def test_a_replay_needs_the_scope_of_the_request(api: TestClient, client_keys: dict[str, ClientKey]) -> None:
    """The stored answer was replayed before any scope check: a token without
    system/ServiceRequest.c got the 201 and the whole resource by repeating someone's key."""
    ck = client_keys["st-marys"]
    full, task_only = bearer(api, ck), bearer(api, ck, "system/Task.rs")
    key = {"Idempotency-Key": str(uuid.uuid4())}
    body = order()
    assert api.post("/fhir/ServiceRequest", json=body, headers={**full, **key}).status_code == 201
    again = api.post("/fhir/ServiceRequest", json=body, headers={**task_only, **key})
    assert again.status_code == 403, again.text
    assert "system/ServiceRequest.c" in again.text
    assert "idempotent-replayed" not in again.headers
    assert api.post("/fhir/ServiceRequest", json=body, headers={**full, **key}).status_code == 201  # still replays

    location = bearer(api, ck, "system/Location.c")
    tx = {
        "resourceType": "Bundle",
        "type": "transaction",
        "entry": [
            {"resource": _location("Ward 9", "w9"), "request": {"method": "POST", "url": "Location"}},
            {"request": {"method": "GET", "url": "ServiceRequest?status=active"}},
        ],
    }
    tx_key = {"Idempotency-Key": str(uuid.uuid4())}
    assert api.post("/fhir", json=tx, headers={**full, **tx_key}).status_code == 200
    replay = api.post("/fhir", json=tx, headers={**location, **tx_key})
    assert replay.status_code == 403, replay.text
    assert "system/ServiceRequest.s" in replay.text


def test_bundle_needs() -> None:
    from hub.api.fhir import bundle_needs

    body = {
        "resourceType": "Bundle",
        "entry": [
            {"request": {"method": "POST", "url": "Observation", "ifNoneExist": "identifier=x|1"}},
            {
                "resource": {"resourceType": "Task", "focus": {"reference": "Specimen?identifier=x|2"}},
                "request": {"method": "PUT", "url": "Task/t1"},
            },
            {"request": {"method": "GET", "url": "Patient/p1"}},
            {"request": {"method": "GET", "url": "Banana?x=1"}},
        ],
    }
    assert bundle_needs(json.dumps(body).encode()) == [
        ("Observation", "c"),
        ("Observation", "s"),
        ("Task", "u"),
        ("Specimen", "s"),
        ("Patient", "r"),
    ]
    assert bundle_needs(b"not json") == []


def test_failed_request_is_replayed_too(api: TestClient, client_keys: dict[str, ClientKey]) -> None:
    h = bearer(api, client_keys["st-marys"])
    key = {"Idempotency-Key": str(uuid.uuid4())}
    bad = order()
    bad["intent"] = "plan"
    a = api.post("/fhir/ServiceRequest", json=bad, headers={**h, **key})
    b = api.post("/fhir/ServiceRequest", json=bad, headers={**h, **key})
    assert a.status_code == b.status_code == 422
    assert a.content == b.content


def test_prefer_etag_if_match(api: TestClient, client_keys: dict[str, ClientKey]) -> None:
    h = bearer(api, client_keys["st-marys"])
    r = api.post("/fhir/Location", json=_location("Unit A", "pa"), headers={**h, "Prefer": "return=minimal"})
    assert r.status_code == 201
    assert r.content == b""
    rid = r.headers["location"].split("/Location/")[1].split("/")[0]
    oo = api.post("/fhir/Location", json=_location("Unit B", "pb"), headers={**h, "Prefer": "return=OperationOutcome"})
    assert oo.json()["resourceType"] == "OperationOutcome"
    current = api.get(f"/fhir/Location/{rid}", headers=h)
    assert current.headers["etag"] == 'W/"1"'
    assert "GMT" in current.headers["last-modified"]
    changed = {**current.json(), "name": "Unit A (renamed)"}
    stale = api.put(f"/fhir/Location/{rid}", json=changed, headers={**h, "If-Match": 'W/"7"'})
    assert stale.status_code == 412
    ok = api.put(f"/fhir/Location/{rid}", json=changed, headers={**h, "If-Match": 'W/"1"'})
    assert ok.status_code == 200
    assert ok.headers["etag"] == 'W/"2"'
    assert api.get(f"/fhir/Location/{rid}/_history/1", headers=h).json()["name"] == "Unit A"
    hist = api.get(f"/fhir/Location/{rid}/_history", headers=h).json()
    assert [e["response"]["etag"] for e in hist["entry"]] == ['W/"2"', 'W/"1"']
    assert api.put(f"/fhir/Location/{rid}", json={**changed, "id": "other"}, headers=h).status_code == 400


def test_formats(api: TestClient, client_keys: dict[str, ClientKey]) -> None:
    h = bearer(api, client_keys["st-marys"])
    xml = api.post("/fhir/Location", content=b"<Location/>", headers={**h, "Content-Type": "application/fhir+xml"})
    assert xml.status_code == 415
    assert xml.json()["resourceType"] == "OperationOutcome"
    assert api.get("/fhir/Location", headers={**h, "Accept": "application/fhir+xml"}).status_code == 406
    assert api.get("/fhir/Location", params={"_format": "xml"}, headers=h).status_code == 406
    assert api.get("/fhir/metadata", params={"_format": "json"}).status_code == 200
    broken = api.post("/fhir/Location", content=b"{not json", headers={**h, "Content-Type": "application/fhir+json"})
    assert broken.status_code == 400
    assert api.post("/fhir/AuditEvent", json={"resourceType": "AuditEvent"}, headers=OPERATOR).status_code == 405


def test_search_paging_include_and_type_history(api: TestClient, client_keys: dict[str, ClientKey]) -> None:
    h = bearer(api, client_keys["st-marys"])
    ids = [api.post("/fhir/ServiceRequest", json=order(), headers=h).json()["id"] for _ in range(5)]
    page = api.get("/fhir/ServiceRequest", params={"_count": 2, "status": "active"}, headers=h).json()
    seen = [e["resource"]["id"] for e in page["entry"]]
    while any(link["relation"] == "next" for link in page["link"]):
        nxt = next(link["url"] for link in page["link"] if link["relation"] == "next")
        page = api.get(nxt, headers=h).json()
        seen += [e["resource"]["id"] for e in page["entry"]]
    assert set(ids) <= set(seen)
    assert len(seen) == len(set(seen))
    inc = api.get(
        "/fhir/ServiceRequest", params={"_id": ids[0], "_include": "ServiceRequest:patient"}, headers=h
    ).json()
    modes = sorted(e["search"]["mode"] for e in inc["entry"])
    assert modes == ["include", "match"]
    authored = api.get("/fhir/ServiceRequest", params={"authored": "ge2000-01-01", "_id": ids[1]}, headers=h).json()
    assert len(authored["entry"]) == 1
    hist = api.get("/fhir/ServiceRequest/_history", params={"_count": 3}, headers=h).json()
    assert hist["type"] == "history"
    assert len(hist["entry"]) == 3
    assert hist["link"][0]["relation"] == "next"
    bad = api.get("/fhir/ServiceRequest", params={"_include": "ServiceRequest:banana"}, headers=h)
    assert bad.status_code == 422


def test_batch_entries_are_independent(api: TestClient, client_keys: dict[str, ClientKey]) -> None:
    h = bearer(api, client_keys["st-marys"])
    batch = {
        "resourceType": "Bundle",
        "type": "batch",
        "entry": [
            {"resource": _location("ok", "b1"), "request": {"method": "POST", "url": "Location"}},
            {
                "resource": {"resourceType": "Location", "colour": "red"},
                "request": {"method": "POST", "url": "Location"},
            },
            {"request": {"method": "GET", "url": "Location?identifier=urn:test:loc|b1"}},
        ],
    }
    r = api.post("/fhir", json=batch, headers=h).json()
    assert [e["response"]["status"] for e in r["entry"]] == ["201 Created", "422", "200 OK"]
    assert r["entry"][1]["response"]["outcome"]["resourceType"] == "OperationOutcome"


def test_transaction_is_atomic(api: TestClient, client_keys: dict[str, ClientKey]) -> None:
    h = bearer(api, client_keys["st-marys"])
    tx = {
        "resourceType": "Bundle",
        "type": "transaction",
        "entry": [
            {"resource": _location("first", "t1"), "request": {"method": "POST", "url": "Location"}},
            {
                "resource": {"resourceType": "Location", "colour": "red"},
                "request": {"method": "POST", "url": "Location"},
            },
        ],
    }
    r = api.post("/fhir", json=tx, headers=h)
    assert r.status_code == 422
    assert "Bundle.entry[1]" in r.json()["issue"][0]["expression"][0]
    assert api.get("/fhir/Location", params={"identifier": "urn:test:loc|t1"}, headers=h).json()["entry"] == []


def _examples() -> list[Path]:
    """Examples of every type a client may create. Not AuditEvent (read-only: the hub writes it)
    nor Subscription (accepted only from a partner, to an endpoint in its profile, and the server
    sets its status: by design it cannot come back unchanged)."""
    from hub.api.fhir_service import WRITABLE_TYPES

    served = set(WRITABLE_TYPES) - {"Subscription"}
    return sorted(p for p in R4.glob("*.json") if p.name.split("-")[0] in served)


def _strip(resource: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in resource.items() if k not in ("meta", "id")}


def test_every_r4_example_of_a_served_type_round_trips(api: TestClient) -> None:
    """Create → read → equal apart from meta (and the server-assigned id). Operators load them:
    they are reference data, not therapy orders (a partner's ServiceRequest is an order)."""
    examples = _examples()
    assert len(examples) > 60
    failures = []
    for path in examples:
        doc = json.loads(path.read_text())
        r = api.post(f"/fhir/{doc['resourceType']}", json=doc, headers=OPERATOR)
        if r.status_code != 201:
            failures.append(f"{path.name}: {r.status_code} {r.text[:300]}")
            continue
        back = api.get(f"/fhir/{doc['resourceType']}/{r.json()['id']}", headers=OPERATOR).json()
        if _strip(back) != _strip(doc):
            failures.append(f"{path.name}: differs after the round trip")
    assert failures == []


def _synthea(path: Path) -> dict[str, Any]:
    """A Synthea patient bundle as a hub hospital would send it: only the types the hub serves,
    practitioners and organizations by conditional reference (as current Synthea writes them)."""
    from hub.fhirstore.validation import SUPPORTED_TYPES

    doc = json.loads(path.read_text())
    keep, dropped, conditional = [], set(), {}
    for e in doc["entry"]:
        r = e["resource"]
        if r["resourceType"] in ("Practitioner", "Organization"):
            ident = r["identifier"][0]
            conditional[e["fullUrl"]] = f"{r['resourceType']}?identifier={ident['system']}|{ident['value']}"
            keep.append(
                {
                    **e,
                    "request": {
                        "method": "POST",
                        "url": r["resourceType"],
                        "ifNoneExist": conditional[e["fullUrl"]].split("?", 1)[1],
                    },
                }
            )
        elif r["resourceType"] in SUPPORTED_TYPES:
            keep.append(e)
        else:
            dropped.add(e["fullUrl"])

    def clean(value: Any) -> Any:
        if isinstance(value, dict):
            out = {}
            for k, v in value.items():
                if isinstance(v, dict) and v.get("reference") in dropped:
                    continue
                if isinstance(v, list):
                    v = [x for x in v if not (isinstance(x, dict) and x.get("reference") in dropped)]
                    if not v:
                        continue
                out[k] = clean(v)
            if out.get("reference") in conditional:
                out["reference"] = conditional[out["reference"]]
            return out
        if isinstance(value, list):
            return [clean(v) for v in value]
        return value

    return {"resourceType": "Bundle", "type": "transaction", "entry": [clean(e) for e in keep]}


@pytest.mark.slow
def test_synthea_bundles_post_as_transactions(api: TestClient) -> None:
    practitioners = json.loads((SYNTHEA / "practitionerInformation1559319163815.json").read_text())
    r = api.post("/fhir", json=practitioners, headers=OPERATOR)
    assert r.status_code == 200, r.text[:500]
    assert len(r.json()["entry"]) == 102
    for path in sorted(SYNTHEA.glob("*_*.json")):
        bundle = _synthea(path)
        r = api.post("/fhir", json=bundle, headers=OPERATOR)
        assert r.status_code == 200, f"{path.name}: {r.text[:800]}"
        entries = r.json()["entry"]
        assert len(entries) == len(bundle["entry"])
        # conditional references were resolved to the practitioner posted before
        obs = [e for e in entries if e["response"]["location"].startswith("DiagnosticReport/")]
        for e in obs[:1]:
            dr = api.get(f"/fhir/{e['response']['location'].rsplit('/_history', 1)[0]}", headers=OPERATOR).json()
            for ref in json.dumps(dr).split('"reference": "')[1:]:
                assert "?" not in ref.split('"')[0]
                assert "urn:uuid" not in ref.split('"')[0]
    # posting the same patient bundle again: conditional creates match, nothing duplicated
    bundle = _synthea(sorted(SYNTHEA.glob("*_*.json"))[0])
    again = api.post("/fhir", json=bundle, headers=OPERATOR).json()
    org = [e for e in again["entry"] if e["response"]["location"].startswith("Organization/")]
    assert org
    assert org[0]["response"]["status"] == "200 OK"


def test_control_characters_refused(api: TestClient, client_keys: dict[str, ClientKey]) -> None:
    """Found by schemathesis on PostgreSQL: NUL in a string (text columns cannot hold it)."""
    h = bearer(api, client_keys["st-marys"])
    r = api.post("/fhir/Location", json={"resourceType": "Location", "name": "a\x00b"}, headers=h)
    assert r.status_code == 422
    assert r.json()["issue"][0]["expression"] == ["Location.name"]
    r = api.post("/fhir/Task", json={"resourceType": "\x00"}, headers=h)
    assert r.status_code in (400, 422)
    r = api.post(
        "/fhir",
        json={"resourceType": "Bundle", "type": "batch", "entry": [{"request": {"method": "GET", "url": "\x00/1"}}]},
        headers=h,
    )
    assert r.status_code == 200
