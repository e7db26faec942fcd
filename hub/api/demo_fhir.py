"""The demo's FHIR part: a hospital's EHR places one therapy order over FHIR R4, as it would for
real — SMART Backend Services token (ES384 client assertion), POST ServiceRequest, read the journey
back as Tasks — over HTTP against the hub's API on an ephemeral local port.

The demo registers the hospital's test key the way ``cgt-hub fhir register-client`` does, but in
memory (the profiles on disk stay as they are); the private key is generated for this run only.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable
from typing import Any

import httpx
import uvicorn

from hub.api.app import create_app
from hub.api.conformance import SITE_EXTENSION, THERAPY_ORDER
from hub.api.onboarding import client_assertion, generate_key, public_jwks
from hub.api.smart_schemas import SmartClientSettings
from hub.context import HubContext
from hub.orders.fhir import PARTNER_SYSTEM, PRODUCT_SYSTEM
from hub.partners.loader import PartnerDirectory

HOSPITAL = "st-marys"
CLIENT_ID = "st-marys-ehr-demo"
SCOPES = "system/ServiceRequest.cruds system/Patient.rs system/Task.rs"


def with_demo_client(partners: PartnerDirectory, jwks: dict[str, Any]) -> PartnerDirectory:
    """The directory with the hospital's FHIR client registered (inline JWKS, order scopes)."""
    profile = partners.profiles[HOSPITAL]
    channels = []
    for channel in profile.channels:
        if getattr(channel, "adapter", None) == "fhir-rest":
            smart = SmartClientSettings(
                client_id=CLIENT_ID,
                jwks=jwks,
                scopes=("system/ServiceRequest.cruds", "system/Patient.cruds", "system/Task.rs"),
                order_defaults={"manufacturing": "leiden-cell-factory", "lab": "northlab-analytics"},
            )
            channel = channel.model_copy(update={"smart": smart})
        channels.append(channel)
    profiles = dict(partners.profiles)
    profiles[HOSPITAL] = profile.model_copy(update={"channels": tuple(channels)})
    return PartnerDirectory(profiles)


def fhir_order(stamp: str) -> dict[str, Any]:
    return {
        "resourceType": "ServiceRequest",
        "meta": {"profile": [THERAPY_ORDER]},
        "contained": [
            {
                "resourceType": "Patient",
                "id": "p",
                "identifier": [
                    {
                        "type": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v2-0203", "code": "MR"}]},
                        "system": "urn:oid:2.16.840.1.113883.3.8998.1",
                        "value": f"MRN-{stamp}-4",
                    }
                ],
                "name": [{"family": "Lindqvist", "given": ["Eva"]}],
                "birthDate": "1980-07-14",
                "gender": "female",
            },
            {
                "resourceType": "Practitioner",
                "id": "r",
                "identifier": [{"system": "http://hl7.org/fhir/sid/us-npi", "value": "1234567893"}],
                "name": [{"family": "Okafor", "given": ["Chidi"]}],
            },
        ],
        "extension": [
            {
                "url": SITE_EXTENSION,
                "extension": [
                    {"url": "role", "valueCode": "manufacturing"},
                    {"url": "partner", "valueIdentifier": {"system": PARTNER_SYSTEM, "value": "leiden-cell-factory"}},
                ],
            }
        ],
        "identifier": [
            {
                "type": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v2-0203", "code": "PLAC"}]},
                "system": "urn:oid:2.16.840.1.113883.3.8998.2",
                "value": f"FHIR-{stamp}",
            }
        ],
        "status": "active",
        "intent": "order",
        "code": {"coding": [{"system": PRODUCT_SYSTEM, "code": "car-t-fresh"}]},
        "subject": {"reference": "#p"},
        "requester": {"reference": "#r"},
    }


class _Server:
    def __init__(self, app: Any) -> None:
        config = uvicorn.Config(app, host="127.0.0.1", port=0, log_level="error", lifespan="on")
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=lambda: asyncio.run(self.server.serve()), daemon=True)

    def __enter__(self) -> str:
        self.thread.start()
        deadline = time.time() + 20
        while not self.server.started:
            if time.time() > deadline or not self.thread.is_alive():
                raise RuntimeError("the API did not start")
            time.sleep(0.02)
        return f"http://127.0.0.1:{self.server.servers[0].sockets[0].getsockname()[1]}"

    def __exit__(self, *exc: object) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=20)


def order_over_fhir(ctx: HubContext, stamp: str, say: Callable[[str], None]) -> dict[str, Any]:
    """Place one order as the hospital's EHR would; returns the ServiceRequest the hub stored."""
    key = generate_key("ES384")
    partners = with_demo_client(ctx.partners, public_jwks(key, "ES384"))
    app = create_app(HubContext(ctx.settings, ctx.store, partners))
    with _Server(app) as base, httpx.Client(base_url=base, timeout=30) as http:
        conf = http.get("/fhir/.well-known/smart-configuration").json()
        token_url = conf["token_endpoint"]
        assertion = client_assertion(key.as_pem(private=True), CLIENT_ID, token_url, "ES384")
        token = http.post(
            token_url,
            data={
                "grant_type": "client_credentials",
                "scope": SCOPES,
                "client_assertion_type": "urn:ietf:params:oauth:client-assertion-type:jwt-bearer",
                "client_assertion": assertion,
            },
        )
        token.raise_for_status()
        auth = {"Authorization": f"Bearer {token.json()['access_token']}"}
        r = http.post(
            "/fhir/ServiceRequest",
            json=fhir_order(stamp),
            headers={**auth, "Content-Type": "application/fhir+json", "Idempotency-Key": f"demo-{stamp}"},
        )
        if r.status_code != 201:
            raise SystemExit(f"FHIR order refused: {r.status_code} {r.text[:500]}")
        sr = r.json()
        tasks = http.get("/fhir/Task", params={"based-on": f"ServiceRequest/{sr['id']}", "_count": 3}, headers=auth)
        tasks.raise_for_status()
        say(
            f"3. FHIR order from {HOSPITAL}'s EHR (SMART token, ES384, {token.json()['expires_in']} s): "
            f"POST ServiceRequest → 201, CoI {r.headers.get('x-coi')}"
        )
        steps = [
            e["resource"]["code"]["coding"][0]["code"] + "=" + e["resource"]["status"] for e in tasks.json()["entry"]
        ]
        say(f"   journey as Tasks: {', '.join(steps)}, … (next page: {'next' in str(tasks.json()['link'])})")
    result: dict[str, Any] = sr
    return result
