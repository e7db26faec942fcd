"""Courier booking clients (httpx), one per courier kind, listed in :data:`KINDS`; the courier's
profile names its kind in its ``courier-booking`` channel.

* ``polar-rest`` (this module): ``POST {base_url}/bookings`` with a bearer token and an
  ``Idempotency-Key`` header (the shipment's key, the same on every retry: the courier answers a
  repeat with the booking it already made).
* ``easypost`` (:mod:`adapters.couriers.easypost_booking`): a shipment bought through EasyPost.
* ``ups`` (:mod:`adapters.couriers.ups_booking`): UPS's Shipping API with OAuth client credentials.

Retries follow :mod:`adapters.couriers.http`: what a repeat cannot double is retried with capped
backoff, then reported as retryable so the dispatcher tries again later; other 4xx are final.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime

import httpx

from adapters.couriers.http import USER_AGENT, RetryPolicy, call, refused, unreadable
from adapters.registry import CourierBooking, Parcel
from hub.logistics.ports import BookingClient, BookingRequest, BookingResult, PartnerCallError
from hub.partners.loader import PartnerDirectory, resolve_secret
from hub.partners.schemas import Address
from hub.products.schemas import CustomsGoods


class PolarRestBooking:
    idempotent = True

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
        self.policy = RetryPolicy(retries, backoff_s, backoff_max_s)
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
        async with httpx.AsyncClient(timeout=self.timeout, transport=self.transport) as client:
            response = await call(
                client,
                "POST",
                f"{self.base_url}/bookings",
                policy=self.policy,
                repeatable=True,
                what="booking",
                json=body,
                headers=headers,
            )
        if response.status_code not in (200, 201):
            raise refused("booking", response)
        return self._result(response)

    @staticmethod
    def _result(response: httpx.Response) -> BookingResult:
        try:
            data = response.json()
            return BookingResult(
                booking_reference=str(data["booking_id"])[:64],
                tracking_number=str(data["tracking_number"])[:64],
                eta=_eta(data.get("eta")),
            )
        except (ValueError, KeyError, TypeError, AttributeError):
            raise unreadable("booking") from None


def _eta(text: object) -> datetime | None:
    """The courier's ETA. Without a UTC offset it is read as UTC (the courier API's times are UTC,
    as EasyPost's are); one that cannot be read is no ETA, not an unreadable booking: the booking
    exists, and the first tracking event brings the ETA again."""
    if not isinstance(text, str):
        return None
    try:
        eta = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        return None
    return eta.replace(tzinfo=UTC) if eta.tzinfo is None else eta


def booking_inputs(
    courier: str, request: BookingRequest, channel: CourierBooking, *fields: str
) -> tuple[Address, Address, Parcel]:
    """For couriers that book by address (EasyPost, UPS): both sites' addresses and the channel's
    parcel, or a final error naming everything missing, the channel ``fields`` named too."""
    origin, destination, parcel = request.origin_address, request.destination_address, channel.parcel
    missing = [f"{request.origin}'s address"] if origin is None else []
    missing += [f"{request.destination}'s address"] if destination is None else []
    missing += [f"the channel's {name}" for name in ("parcel", *fields) if getattr(channel, name) is None]
    if missing or origin is None or destination is None or parcel is None:
        raise PartnerCallError(
            f"cannot book with {courier} without {', '.join(missing)} (partner profiles)",
            retryable=False,
            code="config",
        )
    return origin, destination, parcel


def declared_goods(courier: str, request: BookingRequest, origin: Address, destination: Address) -> CustomsGoods | None:
    """The goods for the carrier's customs paperwork when the leg crosses a border (None within one
    country). A cross-border leg without them is refused before any call: the carrier would refuse
    it, or worse, carry it without the papers customs will ask for."""
    if origin.country == destination.country:
        return None
    if request.goods is None:
        raise PartnerCallError(
            f"cannot book a leg from {origin.country} to {destination.country} with {courier} without the "
            "leg's customs goods (customs: in the product definition)",
            retryable=False,
            code="config",
        )
    return request.goods


Secret = Callable[[str | None], str | None]


def _polar(channel: CourierBooking, secret: Secret, base_url: str, **options: object) -> BookingClient | None:
    token = secret(channel.credential)
    if not token:
        return None
    return PolarRestBooking(base_url, token, timeout_s=channel.timeout_s, retries=channel.retries, **options)  # type: ignore[arg-type]


def _easypost(channel: CourierBooking, secret: Secret, base_url: str, **options: object) -> BookingClient | None:
    from adapters.couriers.easypost_booking import EasyPostBooking

    api_key = secret(channel.credential)
    if not api_key:
        return None
    return EasyPostBooking(base_url, api_key, channel, **options)  # type: ignore[arg-type]


def _ups(channel: CourierBooking, secret: Secret, base_url: str, **options: object) -> BookingClient | None:
    from adapters.couriers.ups_booking import UpsBooking

    client_id, client_secret = secret(channel.client_id), secret(channel.credential)
    if not client_id or not client_secret:
        return None
    return UpsBooking(base_url, client_id, client_secret, channel, **options)  # type: ignore[arg-type]


KINDS: dict[str, Callable[..., BookingClient | None]] = {"polar-rest": _polar, "easypost": _easypost, "ups": _ups}


def booking_client(
    partners: PartnerDirectory, partner_id: str, *, base_url: str | None = None, **options: object
) -> BookingClient | None:
    """The booking client a courier's profile describes, or None when it has no usable channel
    (no such partner, no booking channel, an unknown kind or no credential configured)."""
    profile = partners.get(partner_id)
    if profile is None:
        return None

    def secret(name: str | None) -> str | None:
        return resolve_secret(profile.secrets.get(name, "")) if name else None

    for channel in profile.channels_of("courier-booking"):
        if not isinstance(channel, CourierBooking) or channel.kind not in KINDS:
            continue
        return KINDS[channel.kind](channel, secret, base_url or channel.base_url, **options)
    return None
