"""Courier booking clients (httpx), one per courier kind, listed in :data:`KINDS`.

``polar-rest``: ``POST {base_url}/bookings`` with a bearer token and an ``Idempotency-Key``
header (the shipment's key, the same on every retry: the courier answers a repeat with the booking
it already made). Connection errors, timeouts, 429 and 5xx are retried here with capped
exponential backoff (``Retry-After`` honoured up to the cap), then reported as retryable so the
dispatcher tries again later; any other 4xx is final.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from datetime import datetime

import httpx

from adapters.registry import CourierBooking
from hub.logistics.ports import BookingClient, BookingRequest, BookingResult, PartnerCallError
from hub.partners.loader import PartnerDirectory, resolve_secret

USER_AGENT = "cgt-hub booking client"


class PolarRestBooking:
    def __init__(
        self,
        base_url: str,
        token: str,
        *,
        timeout_s: float = 10.0,
        retries: int = 3,
        backoff_s: float = 0.5,
        backoff_max_s: float = 8.0,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self.token = token
        self.timeout = httpx.Timeout(timeout_s)
        self.retries = retries
        self.backoff_s = backoff_s
        self.backoff_max_s = backoff_max_s
        self.transport = transport

    async def book(self, request: BookingRequest) -> BookingResult:
        body = {
            "reference": request.reference,
            "shipment": request.shipment_id,
            "origin": request.origin,
            "destination": request.destination,
            "pickup_after": request.pickup_after.isoformat(),
            "material": request.material,
            "temperature": {"min_c": request.temperature_min_c, "max_c": request.temperature_max_c},
        }
        headers = {
            "Authorization": f"Bearer {self.token}",
            "Idempotency-Key": request.idempotency_key,
            "User-Agent": USER_AGENT,
        }
        last: PartnerCallError | None = None
        async with httpx.AsyncClient(timeout=self.timeout, transport=self.transport) as client:
            for attempt in range(self.retries + 1):
                wait = self.backoff_s * (2**attempt)
                try:
                    response = await client.post(f"{self.base_url}/bookings", json=body, headers=headers)
                except (httpx.TimeoutException, httpx.TransportError) as exc:
                    last = PartnerCallError(
                        f"courier unreachable: {type(exc).__name__}", retryable=True, code="transport"
                    )
                else:
                    if response.status_code in (200, 201):
                        return self._result(response)
                    if response.status_code == 429 or response.status_code >= 500:
                        last = PartnerCallError(
                            f"courier answered HTTP {response.status_code}",
                            retryable=True,
                            code=f"http-{response.status_code}",
                        )
                        retry_after = response.headers.get("retry-after", "")
                        if retry_after.isdigit():
                            wait = float(retry_after)
                    else:
                        raise PartnerCallError(
                            f"courier refused the booking: HTTP {response.status_code} {response.text[:200]}",
                            retryable=False,
                            code=f"http-{response.status_code}",
                        )
                if attempt < self.retries:
                    await asyncio.sleep(min(self.backoff_max_s, wait))
        assert last is not None
        raise last

    @staticmethod
    def _result(response: httpx.Response) -> BookingResult:
        try:
            data = response.json()
            eta = data.get("eta")
            return BookingResult(
                booking_reference=str(data["booking_id"])[:64],
                tracking_number=str(data["tracking_number"])[:64],
                eta=datetime.fromisoformat(eta.replace("Z", "+00:00")) if isinstance(eta, str) else None,
            )
        except (ValueError, KeyError, TypeError, AttributeError):
            raise PartnerCallError("courier's booking answer is unreadable", retryable=True, code="malformed") from None


KINDS: dict[str, Callable[..., BookingClient]] = {"polar-rest": PolarRestBooking}


def booking_client(
    partners: PartnerDirectory, partner_id: str, *, base_url: str | None = None, **options: object
) -> BookingClient | None:
    """The booking client a courier's profile describes, or None when it has no usable channel
    (no such partner, no booking channel, an unknown kind or no credential configured)."""
    profile = partners.get(partner_id)
    if profile is None:
        return None
    for channel in profile.channels_of("courier-booking"):
        if not isinstance(channel, CourierBooking) or channel.kind not in KINDS:
            continue
        token = resolve_secret(profile.secrets.get(channel.credential, ""))
        if not token:
            return None
        return KINDS[channel.kind](
            base_url or channel.base_url, token, timeout_s=channel.timeout_s, retries=channel.retries, **options
        )
    return None
