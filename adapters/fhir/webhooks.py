"""Standard Webhooks signatures and one HTTP delivery (no retries here: the worker decides).

Signature (standardwebhooks.com): ``webhook-signature: v1,<base64 HMAC-SHA256(secret,
"{webhook-id}.{webhook-timestamp}.{body}")>``; the secret is ``whsec_`` + base64 bytes (a secret
without the prefix is used as raw UTF-8 bytes).

What a Subscription's channel may say (its header lines, the secret's form) is the hub's rule,
in ``hub.api.subscription_channel``; checked when the Subscription is created and again here.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import time
from dataclasses import dataclass

import httpx

from hub.api.subscription_channel import secret_bytes

__all__ = ["Attempt", "post", "secret_bytes", "sign", "signed_headers"]

EXCERPT = 500


def sign(secret: str, msg_id: str, timestamp: int, body: bytes) -> str:
    content = f"{msg_id}.{timestamp}.".encode() + body
    digest = hmac.new(secret_bytes(secret), content, hashlib.sha256).digest()
    return "v1," + base64.b64encode(digest).decode()


def signed_headers(secret: str, msg_id: str, body: bytes, now: int | None = None) -> dict[str, str]:
    ts = int(time.time()) if now is None else now
    return {"webhook-id": msg_id, "webhook-timestamp": str(ts), "webhook-signature": sign(secret, msg_id, ts, body)}


@dataclass(frozen=True)
class Attempt:
    status_code: int | None
    duration_ms: int
    error: str | None
    excerpt: str | None

    @property
    def ok(self) -> bool:
        return self.status_code is not None and 200 <= self.status_code < 300


async def post(
    client: httpx.AsyncClient, url: str, body: bytes, headers: dict[str, str], timeout_s: float = 10.0
) -> Attempt:
    started = time.perf_counter()
    try:
        response = await client.post(url, content=body, headers=headers, timeout=timeout_s)
    except httpx.HTTPError as exc:
        return Attempt(None, int((time.perf_counter() - started) * 1000), type(exc).__name__, None)
    elapsed = int((time.perf_counter() - started) * 1000)
    return Attempt(response.status_code, elapsed, None, response.text[:EXCERPT])
