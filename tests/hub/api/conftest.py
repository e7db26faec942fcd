"""Fixtures for the FHIR API: partner profiles with test SMART clients (keys generated here, never
committed), an app on the store, a real uvicorn server on an ephemeral port, and token helpers."""

from __future__ import annotations

import asyncio
import shutil
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import uvicorn
import yaml
from fastapi import FastAPI
from fastapi.testclient import TestClient
from joserfc import jwt
from joserfc.jwk import ECKey, RSAKey

from adapters.registry import channel_schemas
from hub.api.app import create_app
from hub.context import HubContext
from hub.db.uow import Store
from hub.partners.loader import PartnerDirectory, load_directory
from hub.settings import Settings
from tests.conftest import REPO

OPERATOR_TOKEN = "test-operator-token-0123456789abcdef"
SECRET_KEY = "test-secret-key-0123456789abcdef0123456789"
WEBHOOK_ENV = "CGTHUB_TEST_FHIR_WEBHOOK_SECRET"
WEBHOOK_SECRET = "whsec_" + "MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
NOTIFY = "http://127.0.0.1:*"
ALL_SCOPES = [
    "system/ServiceRequest.cruds",
    "system/Patient.cruds",
    "system/Practitioner.cruds",
    "system/Organization.cruds",
    "system/Location.cruds",
    "system/Task.cruds",
    "system/Specimen.cruds",
    "system/BiologicallyDerivedProduct.cruds",
    "system/Observation.cruds",
    "system/DiagnosticReport.cruds",
    "system/Device.cruds",
    "system/Provenance.cruds",
    "system/AuditEvent.rs",
    "system/Subscription.cruds",
]


@dataclass(frozen=True)
class ClientKey:
    client_id: str
    partner: str
    key: Any
    alg: str


def _jwks(key: Any) -> dict[str, Any]:
    return {
        "keys": [{**key.as_dict(private=False), "kid": key.kid, "alg": "ES384" if key.key_type == "EC" else "RS384"}]
    }


@pytest.fixture(scope="session")
def client_keys() -> dict[str, ClientKey]:
    return {
        "st-marys": ClientKey(
            "st-marys-ehr", "st-marys", ECKey.generate_key("P-384", parameters={"kid": "sm-1"}), "ES384"
        ),
        "lakeside-hospital": ClientKey(
            "lakeside-ehr", "lakeside-hospital", RSAKey.generate_key(2048, parameters={"kid": "lk-1"}), "RS384"
        ),
        "leiden-cell-factory": ClientKey(
            "leiden-mes", "leiden-cell-factory", ECKey.generate_key("P-384", parameters={"kid": "ld-1"}), "ES384"
        ),
    }


@pytest.fixture(scope="session")
def fhir_profiles(tmp_path_factory: pytest.TempPathFactory, client_keys: dict[str, ClientKey]) -> Path:
    """The repository's profiles, with test clients registered inline, plus a second hospital."""
    directory = tmp_path_factory.mktemp("profiles")
    for path in (REPO / "partner-profiles").glob("*.yaml"):
        shutil.copy(path, directory / path.name)
    lakeside = {
        "id": "lakeside-hospital",
        "name": "Lakeside General Hospital",
        "kind": "hospital",
        "tier": 1,
        "timezone": "America/Chicago",
        "identifiers": {"fin": "B9999"},
        "channels": [{"adapter": "fhir-rest", "direction": "both"}],
        "secrets": {"fhir_webhook": f"env:{WEBHOOK_ENV}"},
    }
    (directory / "lakeside-hospital.yaml").write_text(yaml.safe_dump(lakeside))
    for partner, ck in client_keys.items():
        path = directory / f"{partner}.yaml"
        data = yaml.safe_load(path.read_text())
        data.setdefault("secrets", {})["fhir_webhook"] = f"env:{WEBHOOK_ENV}"
        channels = [c for c in data.get("channels", []) if c.get("adapter") != "fhir-rest"]
        smart: dict[str, Any] = {
            "client_id": ck.client_id,
            "jwks": _jwks(ck.key),
            "scopes": ALL_SCOPES,
            "webhook_secret": "fhir_webhook",
            "notify_urls": [NOTIFY],
        }
        if partner != "leiden-cell-factory":
            smart["order_defaults"] = {"manufacturing": "leiden-cell-factory", "lab": "northlab-analytics"}
        channels.append({"adapter": "fhir-rest", "direction": "both", "smart": smart})
        data["channels"] = channels
        path.write_text(yaml.safe_dump(data))
    return directory


@pytest.fixture(scope="session")
def fhir_partners(fhir_profiles: Path) -> PartnerDirectory:
    directory, errors = load_directory(fhir_profiles, channel_schemas())
    assert not errors, errors
    return directory


@pytest.fixture
def fhir_settings(db_url: str, fhir_profiles: Path, monkeypatch: pytest.MonkeyPatch) -> Settings:
    monkeypatch.setenv(WEBHOOK_ENV, WEBHOOK_SECRET)
    return Settings(
        database_url=db_url,
        operator_token=OPERATOR_TOKEN,  # type: ignore[arg-type]
        secret_key=SECRET_KEY,  # type: ignore[arg-type]
        profiles_dir=fhir_profiles,
    )


@pytest.fixture
def fhir_app(store: Store, fhir_partners: PartnerDirectory, fhir_settings: Settings) -> FastAPI:
    return create_app(HubContext(fhir_settings, store, fhir_partners))


@pytest.fixture
def api(fhir_app: FastAPI) -> Iterator[TestClient]:
    with TestClient(fhir_app) as c:
        yield c


def assertion(ck: ClientKey, aud: str, *, alg: str | None = None, **claims: Any) -> str:
    now = int(time.time())
    body = {"iss": ck.client_id, "sub": ck.client_id, "aud": aud, "exp": now + 240, "jti": str(uuid.uuid4())}
    body.update(claims)
    body = {k: v for k, v in body.items() if v is not None}
    use = alg or ck.alg
    return jwt.encode({"alg": use, "kid": ck.key.kid, "typ": "JWT"}, body, ck.key, algorithms=[use])


def token_form(ck: ClientKey, aud: str, scope: str = " ".join(ALL_SCOPES), **claims: Any) -> dict[str, str]:
    return {
        "grant_type": "client_credentials",
        "scope": scope,
        "client_assertion_type": "urn:ietf:params:oauth:client-assertion-type:jwt-bearer",
        "client_assertion": assertion(ck, aud, **claims),
    }


def bearer(
    client: Any, ck: ClientKey, scope: str = " ".join(ALL_SCOPES), base: str = "http://testserver"
) -> dict[str, str]:
    response = client.post(f"{base}/auth/token", data=token_form(ck, f"{base}/auth/token", scope))
    assert response.status_code == 200, response.text
    return {"Authorization": f"Bearer {response.json()['access_token']}"}


OPERATOR = {"Authorization": f"Bearer {OPERATOR_TOKEN}"}


class LiveServer:
    """uvicorn on 127.0.0.1, port 0, in a thread (its own event loop); stopped at teardown."""

    def __init__(self, app: FastAPI) -> None:
        self.config = uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning", lifespan="on")
        self.server = uvicorn.Server(self.config)
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        asyncio.run(self.server.serve())

    def __enter__(self) -> str:
        self.thread.start()
        deadline = time.time() + 20
        while not self.server.started:
            if time.time() > deadline or not self.thread.is_alive():
                raise RuntimeError("uvicorn did not start")
            time.sleep(0.02)
        port = self.server.servers[0].sockets[0].getsockname()[1]
        return f"http://127.0.0.1:{port}"

    def __exit__(self, *exc: object) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=20)


@pytest.fixture
def live(fhir_app: FastAPI) -> Iterator[str]:
    with LiveServer(fhir_app) as url:
        yield url
