"""Onboarding a partner's FHIR client: register its public keys and scopes in its profile.

``cgt-hub fhir register-client`` calls :func:`register_client`. The profile stays the one source of
truth (and secret-free): only the public JWKS (inline) or its URL is written. For testing, a key
pair can be generated; the private key goes to a file outside the profiles directory (mode 0600)
and never into a profile. The result is validated with the same loader the hub uses before the
file is replaced.
"""

from __future__ import annotations

import os
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from joserfc import jwt
from joserfc.jwk import ECKey, JWKRegistry, RSAKey

from hub.partners.loader import ChannelSchemas, load_profile

DEFAULT_SCOPES = (
    "system/ServiceRequest.cruds",
    "system/Patient.cruds",
    "system/Practitioner.cruds",
    "system/Task.rs",
    "system/Subscription.cruds",
)


@dataclass(frozen=True)
class Registered:
    profile: Path
    client_id: str
    private_key: Path | None


@dataclass(frozen=True)
class ClientChange:
    """What a registration changes, for the audit trail: the client before (None: a new client) and
    after, as ids, key thumbprints and scopes (no key material)."""

    partner_id: str
    old: dict[str, Any] | None
    new: dict[str, Any]


def thumbprints(jwks: Any) -> list[str]:
    """RFC 7638 thumbprints of a JWKS's keys (a key that cannot be read is named by its kid)."""
    keys = jwks.get("keys") if isinstance(jwks, dict) else None
    prints = []
    for raw in keys if isinstance(keys, list) else []:
        try:
            prints.append(JWKRegistry.import_key(raw).thumbprint())
        except Exception:  # joserfc raises several types; the profile check has judged the keys already
            prints.append(f"unreadable key (kid {raw.get('kid') if isinstance(raw, dict) else None!r})")
    return prints


def _client_summary(smart: dict[str, Any]) -> dict[str, Any]:
    return {
        "client_id": smart.get("client_id"),
        "jwks_thumbprints": thumbprints(smart["jwks"]) if smart.get("jwks") is not None else None,
        "jwks_url": smart.get("jwks_url"),
        "scopes": list(smart.get("scopes") or []),
        "notify_urls": list(smart.get("notify_urls") or []),
    }


def generate_key(alg: str) -> Any:
    if alg == "ES384":
        return ECKey.generate_key("P-384")
    if alg == "RS384":
        return RSAKey.generate_key(2048)
    raise ValueError("alg must be ES384 or RS384")


def load_key(path: Path, alg: str) -> Any:
    """An existing private key (PEM) for ``alg``; refused, naming the file, if it is not one."""
    kind: Any = {"ES384": ECKey, "RS384": RSAKey}.get(alg)
    if kind is None:
        raise ValueError("alg must be ES384 or RS384")
    try:
        key = kind.import_key(path.read_bytes())
    except (ValueError, TypeError) as exc:
        raise ValueError(f"{path} exists but is not an {alg} private key ({exc}); pass --replace-key") from None
    if not key.is_private:
        raise ValueError(f"{path} holds a public key only; pass --replace-key to generate a pair")
    return key


def public_jwks(key: Any, alg: str) -> dict[str, Any]:
    """The public half; ``kid`` is the RFC 7638 thumbprint, so it can be recomputed from the PEM."""
    return {"keys": [{**key.as_dict(private=False), "kid": key.thumbprint(), "alg": alg, "use": "sig"}]}


def _header(text: str) -> str:
    lines = []
    for line in text.splitlines():
        if not line.startswith("#"):
            break
        lines.append(line)
    return "\n".join(lines) + ("\n" if lines else "")


def register_client(
    profiles_dir: Path,
    partner_id: str,
    schemas: ChannelSchemas,
    *,
    jwks: dict[str, Any] | None = None,
    jwks_url: str | None = None,
    generate: Path | None = None,
    alg: str = "ES384",
    scopes: tuple[str, ...] = DEFAULT_SCOPES,
    client_id: str | None = None,
    name: str | None = None,
    kind: str = "hospital",
    timezone: str = "UTC",
    notify_urls: tuple[str, ...] = (),
    order_defaults: dict[str, str] | None = None,
    replace_key: bool = False,
    record: Callable[[ClientChange], None] | None = None,
) -> Registered:
    """Write the partner's FHIR client into its profile. ``record`` is called with the change once
    the new profile has passed the loader and before it replaces the old one: the change is in the
    audit trail before it takes effect, and if it cannot be recorded, nothing changes."""
    if sum(x is not None for x in (jwks, jwks_url, generate)) != 1:
        raise ValueError("give exactly one of: a JWKS file, a JWKS URL, or --generate-key PATH")
    path = profiles_dir / f"{partner_id}.yaml"
    if path.exists():
        text = path.read_text(encoding="utf-8")
        data = yaml.safe_load(text) or {}
        header = _header(text)
    else:
        if not name:
            raise ValueError(f"{path} does not exist: give --name (and --kind) to create the partner")
        data = {"id": partner_id, "name": name, "kind": kind, "tier": 1, "timezone": timezone, "channels": []}
        header = f"# {name}: onboarded for FHIR REST with SMART Backend Services.\n"
    key_path: Path | None = None
    if generate is not None:
        resolved = generate.resolve()
        if profiles_dir.resolve() in resolved.parents:
            raise ValueError("refusing to write a private key into the profiles directory")
        if resolved.exists() and not replace_key:
            # A running client may be signing with it: a silent new pair would lock it out. The
            # existing key is kept and its public half registered (running the command again).
            key = load_key(resolved, alg)
        else:
            key = generate_key(alg)
            resolved.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(resolved, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(fd, "wb") as fh:
                fh.write(key.as_pem(private=True))
        jwks = public_jwks(key, alg)
        key_path = resolved
    channels = [c for c in data.get("channels") or [] if not (isinstance(c, dict) and c.get("adapter") == "fhir-rest")]
    old = next((c for c in data.get("channels") or [] if isinstance(c, dict) and c.get("adapter") == "fhir-rest"), {})
    smart: dict[str, Any] = dict(old.get("smart") or {})
    smart.pop("jwks", None)
    smart.pop("jwks_url", None)
    smart["client_id"] = client_id or smart.get("client_id") or partner_id
    if jwks is not None:
        smart["jwks"] = jwks
    else:
        smart["jwks_url"] = jwks_url
    smart["scopes"] = list(scopes)
    if notify_urls:
        smart["notify_urls"] = list(notify_urls)
    if order_defaults:
        smart["order_defaults"] = {**(smart.get("order_defaults") or {}), **order_defaults}
    channels.append({**old, "adapter": "fhir-rest", "direction": old.get("direction", "both"), "smart": smart})
    data["channels"] = channels
    out = header + yaml.safe_dump(data, sort_keys=False, allow_unicode=True, width=120)
    staging = profiles_dir / f".{partner_id}.yaml.new"
    staging.write_text(out, encoding="utf-8")
    try:
        check = staging.with_name(f"{partner_id}.yaml")
        tmp_dir = profiles_dir / f".check-{uuid.uuid4().hex[:6]}"
        tmp_dir.mkdir()
        try:
            (tmp_dir / check.name).write_text(out, encoding="utf-8")
            load_profile(tmp_dir / check.name, schemas)
        finally:
            for p in tmp_dir.iterdir():
                p.unlink()
            tmp_dir.rmdir()
        if record is not None:
            before = old.get("smart")
            prior = _client_summary(before) if isinstance(before, dict) else None
            record(ClientChange(partner_id, prior, _client_summary(smart)))
    except BaseException:
        staging.unlink()
        raise
    staging.replace(path)
    return Registered(path, str(smart["client_id"]), key_path)


def client_assertion(key_pem: bytes, client_id: str, token_url: str, alg: str = "ES384", lifetime_s: int = 240) -> str:
    """A signed client assertion, as the partner's own software makes one (for trying the API)."""
    key: Any = ECKey.import_key(key_pem) if alg == "ES384" else RSAKey.import_key(key_pem)
    now = int(time.time())
    claims = {"iss": client_id, "sub": client_id, "aud": token_url, "exp": now + lifetime_s, "jti": str(uuid.uuid4())}
    header: dict[str, Any] = {"alg": alg, "typ": "JWT", "kid": key.thumbprint()}
    return jwt.encode(header, claims, key, algorithms=[alg])
