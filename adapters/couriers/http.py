"""One HTTP call to a courier with the retries its API allows.

Two kinds of call:

* **repeatable** (the courier dedupes by key, or the call only reads): connection errors,
  timeouts, 429 and 5xx are retried with capped exponential backoff (``Retry-After`` honoured up to
  the cap), then reported as retryable so the dispatcher tries again later;
* **not repeatable** (UPS's ship call has no idempotency key): only failures that prove the
  courier never acted are retried — the connection could not be opened, or 429 (refused before
  any work). A call cut off after it was sent (read timeout, dropped connection) or answered with a
  5xx may have booked: that is reported as final (``code="ambiguous"``) so a person checks the
  courier before anything is booked again. A double booking of a patient's cells is never the
  cheaper mistake.

Any other 4xx is the caller's to interpret (returned as is).
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Any

import httpx

from hub.logistics.ports import PartnerCallError

USER_AGENT = "cgt-hub booking client"

# Raised before a byte of the request reached the courier: always safe to repeat.
_NOT_SENT: tuple[type[Exception], ...] = (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout)


@dataclass(frozen=True)
class RetryPolicy:
    retries: int = 3
    backoff_s: float = 0.5
    backoff_max_s: float = 8.0


async def call(
    client: httpx.AsyncClient,
    method: str,
    url: str,
    *,
    policy: RetryPolicy,
    repeatable: bool,
    what: str,
    **kwargs: Any,
) -> httpx.Response:
    """The courier's answer (2xx or a 4xx other than 429), or :class:`PartnerCallError`."""
    last: PartnerCallError | None = None
    for attempt in range(policy.retries + 1):
        wait = policy.backoff_s * (2**attempt)
        try:
            response = await client.request(method, url, **kwargs)
        except httpx.RequestError as exc:
            # Not sent at all is always safe to repeat; cut off after sending, or an answer that
            # could not be read, only when the call is repeatable.
            if not repeatable and not isinstance(exc, _NOT_SENT):
                raise _ambiguous(what, type(exc).__name__) from None
            last = PartnerCallError(
                f"{what}: courier unreachable ({type(exc).__name__})", retryable=True, code="transport"
            )
        else:
            status = response.status_code
            if status == 429 or status >= 500:
                if status >= 500 and not repeatable:
                    raise _ambiguous(what, f"HTTP {status}")
                last = PartnerCallError(
                    f"{what}: courier answered HTTP {status}", retryable=True, code=f"http-{status}"
                )
                retry_after = response.headers.get("retry-after", "")
                if retry_after.isdigit():
                    wait = float(retry_after)
            else:
                return response
        if attempt < policy.retries:
            await asyncio.sleep(min(policy.backoff_max_s, wait))
    assert last is not None
    raise last


def _ambiguous(what: str, cause: str) -> PartnerCallError:
    return PartnerCallError(
        f"{what}: {cause} after the request was sent; the courier may have acted on it and its API cannot "
        "be asked to repeat safely, so it is not retried: check the courier, then register the shipment "
        "or book again",
        retryable=False,
        code="ambiguous",
    )


def refused(what: str, response: httpx.Response, detail: str = "") -> PartnerCallError:
    """A final refusal (a 4xx the caller could not resolve)."""
    text = detail or response.text[:200]
    return PartnerCallError(
        f"{what}: courier refused: HTTP {response.status_code} {text}".rstrip(),
        retryable=False,
        code=f"http-{response.status_code}",
    )


def unreadable(what: str) -> PartnerCallError:
    return PartnerCallError(f"{what}: the courier's answer is unreadable", retryable=True, code="malformed")
