"""The README walkthrough, as a new hospital would do it: register its client with the CLI (a
generated key pair), then token and first order over FHIR with a plain HTTP client."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import httpx
import pytest
import yaml
from joserfc.jwk import ECKey
from sqlalchemy import select

from adapters.registry import channel_schemas
from hub.api.app import create_app
from hub.api.onboarding import public_jwks
from hub.audit.service import verify_chain
from hub.context import HubContext
from hub.db.models import AuditEntry
from hub.db.uow import Store
from hub.partners.loader import load_directory
from hub.settings import Settings
from tests.conftest import REPO
from tests.hub.api.conftest import LiveServer
from tests.hub.api.fhir_data import order

CLI = Path(sys.executable).parent / "cgt-hub"


def cli(args: list[str], cwd: Path, db_url: str | None = None) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CGTHUB_")}
    env["USER"] = "ops.onboarder"
    if db_url is not None:
        env["CGTHUB_DATABASE_URL"] = db_url
    return subprocess.run([str(CLI), *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=120)


@pytest.mark.slow
def test_new_hospital_from_nothing_to_first_order(tmp_path: Path, store: Store, db_url: str) -> None:
    shutil.copytree(REPO / "partner-profiles", tmp_path / "partner-profiles")
    r = cli(
        [
            "fhir",
            "register-client",
            "harbor-view",
            "--name",
            "Harbor View Medical Center",
            "--timezone",
            "America/Los_Angeles",
            "--generate-key",
            "var/keys/harbor-view.pem",
            "--manufacturing",
            "leiden-cell-factory",
        ],
        tmp_path,
        db_url,
    )
    assert r.returncode == 0, r.stdout + r.stderr
    key = tmp_path / "var" / "keys" / "harbor-view.pem"
    assert key.stat().st_mode & 0o777 == 0o600
    profile = yaml.safe_load((tmp_path / "partner-profiles" / "harbor-view.yaml").read_text())
    assert "d" not in profile["channels"][0]["smart"]["jwks"]["keys"][0]  # the public half only
    assert cli(["partners", "check"], tmp_path).returncode == 0
    # a key inside the profiles directory is refused
    bad = cli(["fhir", "register-client", "harbor-view", "--generate-key", "partner-profiles/k.pem"], tmp_path, db_url)
    assert bad.returncode == 1
    # running step 1 again keeps the key a client may be signing with, and registers it again
    pem, profile_text = key.read_bytes(), (tmp_path / "partner-profiles" / "harbor-view.yaml").read_text()
    again = cli(
        ["fhir", "register-client", "harbor-view", "--generate-key", "var/keys/harbor-view.pem"], tmp_path, db_url
    )
    assert again.returncode == 0, again.stderr
    assert key.read_bytes() == pem
    assert yaml.safe_load((tmp_path / "partner-profiles" / "harbor-view.yaml").read_text()) == yaml.safe_load(
        profile_text
    )
    # a file there that is not a private key is refused, and left alone
    (tmp_path / "var" / "keys" / "other.pem").write_text("not a key")
    odd = cli(["fhir", "register-client", "harbor-view", "--generate-key", "var/keys/other.pem"], tmp_path, db_url)
    assert odd.returncode == 1
    assert "--replace-key" in odd.stderr
    assert (tmp_path / "var" / "keys" / "other.pem").read_text() == "not a key"

    partners, errors = load_directory(tmp_path / "partner-profiles", channel_schemas())
    assert not errors
    settings = Settings(database_url=db_url, profiles_dir=tmp_path / "partner-profiles")
    with LiveServer(create_app(HubContext(settings, store, partners))) as base:
        token_url = httpx.get(f"{base}/fhir/.well-known/smart-configuration").json()["token_endpoint"]
        assertion = cli(
            ["fhir", "client-assertion", "--key", str(key), "--client-id", "harbor-view", "--token-url", token_url],
            tmp_path,
        ).stdout.strip()
        token = httpx.post(
            token_url,
            data={
                "grant_type": "client_credentials",
                "scope": "system/ServiceRequest.cruds system/Task.rs",
                "client_assertion_type": "urn:ietf:params:oauth:client-assertion-type:jwt-bearer",
                "client_assertion": assertion,
            },
        )
        assert token.status_code == 200, token.text
        auth = {"Authorization": f"Bearer {token.json()['access_token']}", "Content-Type": "application/fhir+json"}
        body = order(sites=[])  # sites from the profile: harbor-view collects and treats, leiden manufactures
        created = httpx.post(f"{base}/fhir/ServiceRequest", json=body, headers=auth)
        assert created.status_code == 201, created.text
        assert created.headers["x-coi"]
        tasks = httpx.get(
            f"{base}/fhir/Task", params={"based-on": f"ServiceRequest/{created.json()['id']}"}, headers=auth
        )
        assert tasks.status_code == 200
        assert len(tasks.json()["entry"]) >= 10


def _entries(store: Store, partner: str) -> list[AuditEntry]:
    return store.read(
        lambda s: list(
            s.scalars(
                select(AuditEntry)
                .where(AuditEntry.entity_type == "PartnerClient", AuditEntry.entity_id == partner)
                .order_by(AuditEntry.seq)
            )
        )
    )


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
def test_registering_a_client_is_audited(tmp_path: Path, store: Store, db_url: str) -> None:
    """A new partner client with PHI scopes is an access change: who, which client and keys, which
    scopes and why are in the audit trail, written before the profile changes."""
    shutil.copytree(REPO / "partner-profiles", tmp_path / "partner-profiles")
    key = ECKey.generate_key("P-384")
    (tmp_path / "jwks.json").write_text(json.dumps(public_jwks(key, "ES384")))
    register = ["fhir", "register-client", "new-clinic", "--jwks", "jwks.json", "--scope", "system/Patient.rs"]
    r = cli([*register, "--name", "New Clinic", "--reason", "contract 2026-17 signed"], tmp_path, db_url)
    assert r.returncode == 0, r.stdout + r.stderr
    created = _entries(store, "new-clinic")
    assert [(e.action, e.actor, e.reason) for e in created] == [("create", "ops.onboarder", "contract 2026-17 signed")]
    new = json.loads(created[0].new_value)
    assert (new["client_id"], new["jwks_thumbprints"], new["scopes"]) == (
        "new-clinic",
        [key.thumbprint()],
        ["system/Patient.rs"],
    )
    assert '"d"' not in created[0].new_value  # no private key material, ever

    again = cli([*register[:-1], "system/Task.rs"], tmp_path, db_url)
    assert again.returncode == 0, again.stderr
    updated = _entries(store, "new-clinic")[-1]
    assert (updated.action, json.loads(updated.old_value)["scopes"]) == ("update", ["system/Patient.rs"])
    assert json.loads(updated.new_value)["scopes"] == ["system/Task.rs"]
    assert verify_chain(store).ok


def test_a_registration_that_cannot_be_audited_changes_nothing(tmp_path: Path, sqlite_url: str) -> None:
    shutil.copytree(REPO / "partner-profiles", tmp_path / "partner-profiles")
    (tmp_path / "jwks.json").write_text(json.dumps(public_jwks(ECKey.generate_key("P-384"), "ES384")))
    register = ["fhir", "register-client", "new-clinic", "--name", "New Clinic"]
    no_db = cli([*register, "--jwks", "jwks.json"], tmp_path, f"sqlite:///{tmp_path / 'empty.db'}")
    assert no_db.returncode == 1
    assert "audit trail could not record it" in no_db.stderr
    assert "Traceback" not in no_db.stderr
    missing = cli([*register, "--jwks", "missing.json"], tmp_path, sqlite_url)
    assert missing.returncode == 1
    assert "cannot read the JWKS missing.json" in missing.stderr
    assert "Traceback" not in missing.stderr
    assert not (tmp_path / "partner-profiles" / "new-clinic.yaml").exists()
    assert not list((tmp_path / "partner-profiles").glob(".*"))  # no staging file left behind
