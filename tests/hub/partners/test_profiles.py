from __future__ import annotations

from pathlib import Path

from adapters.registry import channel_schemas
from hub.partners.loader import load_directory

GOOD = """\
id: {id}
name: Test
kind: hospital
tier: 1
timezone: Europe/Paris
channels:
  - adapter: hl7v2-mllp
    direction: inbound
"""


def test_errors_name_file_and_line(tmp_path: Path) -> None:
    (tmp_path / "ok.yaml").write_text(GOOD.format(id="ok"))
    (tmp_path / "bad.yaml").write_text(
        "id: bad\n"
        "name: Bad\n"
        "kind: hospital\n"
        "tier: 7\n"
        "timezone: Mars/Olympus\n"
        "channels:\n"
        "  - adapter: hl7v2-mllp\n"
        "    direction: inbound\n"
        "    ack_mode: sometimes\n"
        "  - adapter: carrier-pigeon\n"
        "    direction: inbound\n"
        "secrets:\n"
        "  api_key: hunter2\n"
    )
    (tmp_path / "misnamed.yaml").write_text(GOOD.format(id="other-name"))
    (tmp_path / "broken.yaml").write_text("id: [unclosed\n")
    directory, errors = load_directory(tmp_path, channel_schemas())
    assert list(directory.profiles) == ["ok"]
    found = {(e.path.name, e.line): e.message for e in errors}
    assert any("tier" in m for (f, line), m in found.items() if (f, line) == ("bad.yaml", 4))
    assert any("time zone" in m for (f, line), m in found.items() if (f, line) == ("bad.yaml", 5))
    assert any("ack_mode" in m for (f, line), m in found.items() if (f, line) == ("bad.yaml", 9))
    assert any("carrier-pigeon" in m for (f, line), m in found.items() if (f, line) == ("bad.yaml", 10))
    assert any("reference" in m for (f, line), m in found.items() if (f, line) == ("bad.yaml", 13))
    assert any("file name" in m for (f, _), m in found.items() if f == "misnamed.yaml")
    assert any("YAML" in m for (f, _), m in found.items() if f == "broken.yaml")


def test_shipped_profiles_are_valid_and_cover_every_kind() -> None:
    directory, errors = load_directory(Path(__file__).resolve().parents[3] / "partner-profiles", channel_schemas())
    assert errors == []
    kinds = {(p.kind.value, int(p.tier)) for p in directory.profiles.values()}
    assert {
        ("hospital", 1),
        ("courier", 1),
        ("customs", 1),
        ("manufacturing-site", 1),
        ("treatment-site", 2),
        ("lab", 3),
    } <= kinds
    for p in directory.profiles.values():
        assert all(ref.startswith(("env:", "file:/")) for ref in p.secrets.values())


def test_a_secret_pasted_where_its_name_belongs_is_refused_without_repeating_it(tmp_path: Path) -> None:
    """A channel names its secrets (``secret: webhook_secret``, an entry of ``secrets``). The secret
    itself written there loaded "ok": committed in the profile, and the channel quietly disabled."""
    (tmp_path / "courier.yaml").write_text(
        "id: courier\n"
        "name: Courier\n"
        "kind: courier\n"
        "tier: 1\n"
        "timezone: Europe/Paris\n"
        "channels:\n"
        "  - adapter: courier-webhook\n"
        "    direction: inbound\n"
        "    scheme: standard-webhooks\n"
        "    secret: whsec_c2VjcmV0LXBhc3RlZC1oZXJl\n"
        "    rotation_secrets: [webhook_secret]\n"
        "    mapping: couriers/polar-courier\n"
        "  - adapter: courier-booking\n"
        "    direction: outbound\n"
        "    kind: polar-rest\n"
        "    base_url: https://api.courier.example/v2\n"
        "    credential: pk_live_0123456789abcdef\n"
        "  - adapter: fhir-rest\n"
        "    direction: both\n"
        "    smart: {jwks_url: 'https://c.example/jwks.json', webhook_secret: fhir_webhook}\n"
        "secrets:\n"
        "  webhook_secret: env:COURIER_WEBHOOK_SECRET\n"
    )
    directory, errors = load_directory(tmp_path, channel_schemas())
    assert directory.profiles == {}
    found = {e.line: e.message for e in errors}
    assert sorted(found) == [10, 17, 20], found
    assert found[10].startswith("channels.0.secret: names no entry of `secrets`")
    assert found[17].startswith("channels.1.credential: names no entry")
    assert found[20].startswith("channels.2.smart.webhook_secret: names no entry")
    assert not any("whsec_" in m or "pk_live" in m for m in found.values())
