"""What a partner profile says about its FHIR client (the ``smart:`` block of a ``fhir-rest``
channel). Public material only: a JWKS holds public keys; the webhook secret is a reference.

```yaml
  - adapter: fhir-rest
    direction: both
    smart:
      client_id: st-marys-ehr          # default: the partner id
      jwks_url: https://ehr.example/.well-known/jwks.json   # or `jwks: {keys: [...]}` inline
      scopes: [system/ServiceRequest.cruds, system/Patient.cruds, system/Task.rs]
      webhook_secret: fhir_webhook     # an entry of the profile's `secrets` (Standard Webhooks)
      order_defaults: {manufacturing: leiden-cell-factory, lab: northlab-analytics}
```
"""

from __future__ import annotations

import re
from typing import Any
from urllib.parse import urlsplit

from joserfc.errors import JoseError
from joserfc.jwk import KeySet
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from hub.settings import is_loopback

EC_CURVES = ("P-256", "P-384", "P-521")
SCOPE_RE = re.compile(r"^system/(\*|[A-Z][A-Za-z]+)\.(\*|read|write|[cruds]{1,5})$")


class OrderDefaults(BaseModel):
    """Sites an order from this partner uses when the ServiceRequest does not name them.
    ``collection`` and ``treatment`` default to the ordering partner itself when it can play them."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    collection: str | None = None
    manufacturing: str | None = None
    treatment: str | None = None
    lab: str | None = None
    courier: str | None = None


class SmartClientSettings(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    client_id: str | None = Field(default=None, pattern=r"^[A-Za-z0-9._:-]{1,128}$")
    jwks: dict[str, Any] | None = None
    jwks_url: str | None = Field(default=None, pattern=r"^https?://\S+$")
    scopes: tuple[str, ...] = ()
    webhook_secret: str | None = None
    # Subscription endpoints must start with one of these (no notifications to arbitrary hosts).
    notify_urls: tuple[str, ...] = ()
    order_defaults: OrderDefaults = Field(default_factory=OrderDefaults)

    @field_validator("scopes")
    @classmethod
    def _scopes(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        bad = [s for s in value if not SCOPE_RE.match(s)]
        if bad:
            raise ValueError(f"not SMART system scopes: {bad} (e.g. system/ServiceRequest.cruds, system/*.rs)")
        return value

    @field_validator("jwks_url")
    @classmethod
    def _jwks_url(cls, value: str | None) -> str | None:
        # The keys fetched there decide who gets this partner's tokens: over plain HTTP anyone on
        # the path could answer with their own key and sign assertions as the partner.
        return None if value is None else _over_tls(value, "jwks_url")

    @field_validator("notify_urls")
    @classmethod
    def _notify_urls(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        # Notifications carry the order's current version (the patient's record) to these URLs.
        return tuple(_over_tls(url, "notify_urls") for url in value)

    @field_validator("jwks")
    @classmethod
    def _jwks(cls, value: dict[str, Any] | None) -> dict[str, Any] | None:
        if value is None:
            return None
        keys = value.get("keys")
        if not isinstance(keys, list) or not keys:
            raise ValueError("jwks needs a non-empty 'keys' list")
        for key in keys:
            if not isinstance(key, dict) or key.get("kty") not in ("RSA", "EC"):
                raise ValueError("each JWKS key must be an RSA or EC public key")
            if any(k in key for k in ("d", "p", "q", "dp", "dq", "qi")):
                raise ValueError("the JWKS holds a PRIVATE key; register only the public part")
            if key["kty"] == "EC" and key.get("crv") not in EC_CURVES:
                raise ValueError(f"an EC key's crv must be one of {', '.join(EC_CURVES)} (ES384 uses P-384)")
        try:  # what the token endpoint will do with it: refuse here, at load time, not per request
            KeySet.import_key_set(value)  # type: ignore[arg-type]
        except (ValueError, TypeError, KeyError, JoseError) as exc:
            raise ValueError(f"the JWKS is not a valid key set ({type(exc).__name__}: {exc})") from exc
        return value

    @model_validator(mode="after")
    def _one_key_source(self) -> SmartClientSettings:
        if self.jwks is not None and self.jwks_url is not None:
            raise ValueError("give either jwks (inline) or jwks_url, not both")
        return self


def _over_tls(url: str, what: str) -> str:
    """``url`` if it is https://, or http:// to this machine (development)."""
    parts = urlsplit(url)
    if parts.scheme == "https" or (parts.scheme == "http" and is_loopback(parts.hostname or "")):
        return url
    raise ValueError(f"{what}: {url} must be https:// (plain http:// only to a loopback address, for development)")
