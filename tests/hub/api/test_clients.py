"""Real FHIR client libraries against the running server over HTTP: fhirpy and fhirclient."""

from __future__ import annotations

import httpx
import pytest

from tests.hub.api.conftest import ClientKey, token_form
from tests.hub.api.fhir_data import order, patient

pytestmark = pytest.mark.slow


def _token(live: str, ck: ClientKey) -> str:
    r = httpx.post(f"{live}/auth/token", data=token_form(ck, f"{live}/auth/token"))
    assert r.status_code == 200, r.text
    return str(r.json()["access_token"])


def test_fhirpy_creates_and_searches(live: str, client_keys: dict[str, ClientKey]) -> None:
    from fhirpy import SyncFHIRClient

    client = SyncFHIRClient(f"{live}/fhir", authorization=f"Bearer {_token(live, client_keys['st-marys'])}")
    sr = client.resource("ServiceRequest", **order())
    sr.save()
    assert sr["id"]
    coi = [i for i in sr["identifier"] if i["system"].endswith("isbt128-coi")]
    assert coi
    found = client.resources("ServiceRequest").search(identifier=f"{coi[0]['system']}|{coi[0]['value']}").fetch()
    assert [r["id"] for r in found] == [sr["id"]]
    loc = client.resource("Location", name="Apheresis unit 2", status="active")
    loc.save()
    loc["name"] = "Apheresis unit 2 (north)"
    loc.save()
    assert client.reference("Location", loc["id"]).to_resource()["meta"]["versionId"] == "2"
    tasks = client.resources("Task").search(**{"based-on": f"ServiceRequest/{sr['id']}"}).limit(3).fetch_all()
    assert len(tasks) >= 10  # fetch_all follows the next links
    pat = client.resource("Patient", **{k: v for k, v in patient().items() if k != "resourceType"})
    pat.save()
    included = client.resources("ServiceRequest").search(_id=sr["id"]).include("ServiceRequest", "patient").fetch_raw()
    assert {e["search"]["mode"] for e in included["entry"]} == {"match", "include"}


def test_fhirclient_reads_capability_and_resources(live: str, client_keys: dict[str, ClientKey]) -> None:
    from fhirclient import server as fhir_server
    from fhirclient.models.location import Location
    from fhirclient.models.servicerequest import ServiceRequest

    srv = fhir_server.FHIRServer(None, base_uri=f"{live}/fhir/")
    srv.session.headers["Authorization"] = f"Bearer {_token(live, client_keys['st-marys'])}"
    srv.get_capability()
    assert srv._capability.fhirVersion == "4.0.1"
    created = ServiceRequest(order(), strict=False).create(srv)
    assert created["resourceType"] == "ServiceRequest"
    sr = ServiceRequest.read(created["id"], srv)
    assert sr.intent == "order"
    assert sr.subject.reference.startswith("Patient/")
    loc = Location({"resourceType": "Location", "name": "Cell lab"})
    made = loc.create(srv)
    assert Location.read(made["id"], srv).name == "Cell lab"
    bundle = next(iter(ServiceRequest.where(struct={"_id": created["id"]}).perform_iter(srv)))
    assert bundle.entry[0].resource.id == created["id"]
