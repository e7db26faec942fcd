"""Webhook signature and authentication schemes, one per courier family.

* ``standard-webhooks`` (standardwebhooks.com): headers ``webhook-id``, ``webhook-timestamp``,
  ``webhook-signature``; HMAC-SHA256 over ``{id}.{timestamp}.{body}`` with the base64 secret after
  ``whsec_``; the header holds space-separated ``v1,<base64>`` signatures (several during key
  rotation); the timestamp must be within ±tolerance of our clock.
* ``easypost``: ``X-Hmac-Signature: hmac-sha256-hex=<hex>`` over the raw body, key = the secret
  Unicode-NFKD-normalised, UTF-8 (EasyPost's client libraries; test vector in the corpus).
* ``fedex-hmac``: ``fdx-signature`` (or the configured header) = Base64(HMAC-SHA256(token, body)).
* ``static-token``: a shared token in a header the partner chose at subscription (DHL push,
  UPS Track Alert ``x-api-key``); no body signature.

Schemes without a signed timestamp (all but Standard Webhooks) cannot refuse stale deliveries by
time: their replays are absorbed by the inbox's event-id deduplication instead.

Every comparison is constant-time. Several secrets may be configured (rotation): any one verifies.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import unicodedata
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from hub.errors import AuthenticationFailed


class StaleWebhook(AuthenticationFailed):
    def __init__(self, message: str = "webhook timestamp outside the tolerated window") -> None:
        super().__init__(message)


@dataclass(frozen=True)
class Verified:
    scheme: str
    webhook_id: str | None = None  # the sender's event id, when the scheme carries one in a header
    timestamp: int | None = None


def _hmac(key: bytes, message: bytes) -> bytes:
    return hmac.new(key, message, hashlib.sha256).digest()


def _standard_key(secret: str) -> bytes:
    raw = secret.removeprefix("whsec_")
    try:
        return base64.b64decode(raw, validate=True)
    except (binascii.Error, ValueError):
        return secret.encode()


def standard_signature(secret: str, webhook_id: str, timestamp: int, body: bytes) -> str:
    """The ``v1,<base64>`` signature a Standard Webhooks sender puts in ``webhook-signature``."""
    signed = f"{webhook_id}.{timestamp}.".encode() + body
    return "v1," + base64.b64encode(_hmac(_standard_key(secret), signed)).decode()


def easypost_signature(secret: str, body: bytes) -> str:
    key = unicodedata.normalize("NFKD", secret).encode("utf-8")
    return "hmac-sha256-hex=" + hmac.new(key, body, hashlib.sha256).hexdigest()


def fedex_signature(secret: str, body: bytes) -> str:
    return base64.b64encode(_hmac(secret.encode("utf-8"), body)).decode()


def verify_standard(
    headers: Mapping[str, str], body: bytes, secrets: Sequence[str], *, now: int, tolerance_s: int
) -> Verified:
    webhook_id = headers.get("webhook-id", "")
    stamp = headers.get("webhook-timestamp", "")
    header = headers.get("webhook-signature", "")
    if not webhook_id or not stamp or not header or len(webhook_id) > 255 or len(header) > 4096:
        raise AuthenticationFailed("missing or oversized webhook-id, webhook-timestamp or webhook-signature")
    try:
        timestamp = int(stamp)
    except ValueError:
        raise AuthenticationFailed("webhook-timestamp is not a number") from None
    if abs(now - timestamp) > tolerance_s:
        raise StaleWebhook()
    offered = [part.split(",", 1)[1].encode() for part in header.split() if part.startswith("v1,") and "," in part]
    for secret in secrets:
        expected = standard_signature(secret, webhook_id, timestamp, body).split(",", 1)[1].encode()
        if any(hmac.compare_digest(expected, sig) for sig in offered):
            return Verified("standard-webhooks", webhook_id, timestamp)
    raise AuthenticationFailed("no valid webhook signature")


def verify_easypost(headers: Mapping[str, str], body: bytes, secrets: Sequence[str]) -> Verified:
    offered = headers.get("x-hmac-signature", "").encode()
    for secret in secrets:
        if offered and hmac.compare_digest(easypost_signature(secret, body).encode(), offered):
            return Verified("easypost")
    raise AuthenticationFailed("no valid X-Hmac-Signature")


def verify_fedex(headers: Mapping[str, str], body: bytes, secrets: Sequence[str], header: str) -> Verified:
    offered = headers.get(header.lower(), "").encode()
    for secret in secrets:
        if offered and hmac.compare_digest(fedex_signature(secret, body).encode(), offered):
            return Verified("fedex-hmac")
    raise AuthenticationFailed(f"no valid {header} signature")


def verify_token(headers: Mapping[str, str], secrets: Sequence[str], header: str) -> Verified:
    offered = headers.get(header.lower(), "").encode()
    for secret in secrets:
        if offered and hmac.compare_digest(secret.encode(), offered):
            return Verified("static-token")
    raise AuthenticationFailed(f"missing or wrong {header}")


def verify(
    scheme: str,
    headers: Mapping[str, str],
    body: bytes,
    secrets: Sequence[str],
    *,
    now: int,
    tolerance_s: int,
    header: str | None = None,
) -> Verified:
    """Verify one delivery; raises AuthenticationFailed (401) when it does not hold."""
    if not secrets:
        raise AuthenticationFailed("no secret configured")
    if scheme == "standard-webhooks":
        return verify_standard(headers, body, secrets, now=now, tolerance_s=tolerance_s)
    if scheme == "easypost":
        return verify_easypost(headers, body, secrets)
    if scheme == "fedex-hmac":
        return verify_fedex(headers, body, secrets, header or "fdx-signature")
    if scheme == "static-token":
        return verify_token(headers, secrets, header or "x-api-key")
    raise AuthenticationFailed(f"unknown signature scheme {scheme}")


def signed_headers_for_test(secret: str, body: bytes, webhook_id: str, timestamp: int) -> dict[str, str]:
    """Standard Webhooks headers as a sender would set them (tests, sandbox, benches)."""
    return {
        "webhook-id": webhook_id,
        "webhook-timestamp": str(timestamp),
        "webhook-signature": standard_signature(secret, webhook_id, timestamp, body),
    }
