"""Booking a leg through EasyPost (``kind: easypost``): a Shipment is created from the two sites'
addresses and the leg's parcel, then the rate for the profile's carrier and service is bought.

API (https://docs.easypost.com): HTTP Basic with the API key as user name;
``POST /shipments``, ``POST /shipments/{id}/buy`` with the rate's id, ``GET /shipments/{id}``,
``GET /shipments?start_datetime=…`` (newest first, ``has_more`` + ``before_id``). A leg between two
countries carries ``customs_info`` built from the product's customs goods for the leg.
Errors are ``{"error": {"code", "message"}}``. Lengths are in inches and weights in ounces.

**Why a repeat cannot buy twice.** EasyPost has no idempotency key, so the client makes its own:
the shipment's ``reference`` is the hub's idempotency key for the leg, and every ``book`` first
lists the shipments created in the last ``lookback_hours`` and looks for that reference. One that
was bought is returned; one that was not (an earlier attempt created it, then was cut off, maybe
while its purchase was in flight) is bought, instead of creating another. So every attempt for a
leg ends on the same EasyPost shipment, and buying a shipment that already has postage is
refused by EasyPost, after which the client reads it back. A dispatcher retry after a crash or a
lost answer therefore cannot buy a second label.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import httpx

from adapters.couriers.booking import booking_inputs, declared_goods
from adapters.couriers.http import USER_AGENT, RetryPolicy, call, refused, unreadable
from adapters.registry import CourierBooking
from hub.logistics.ports import BookingRequest, BookingResult, PartnerCallError
from hub.partners.schemas import Address
from hub.products.schemas import CustomsGoods

CM_PER_INCH = 2.54
OUNCES_PER_KG = 35.27396195
MAX_PAGES = 20  # 2,000 purchases in the look-back window; more means the window is too wide


class EasyPostBooking:
    idempotent = True

    def __init__(
        self,
        base_url: str,
        api_key: str,
        channel: CourierBooking,
        *,
        backoff_s: float = 0.5,
        backoff_max_s: float = 8.0,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self.api_key = api_key
        self.channel = channel
        self.policy = RetryPolicy(channel.retries, backoff_s, backoff_max_s)
        self.transport = transport

    async def book(self, request: BookingRequest) -> BookingResult:
        body = self._shipment(request)  # refuses an incomplete profile before any call
        async with httpx.AsyncClient(
            base_url=self.base_url,
            auth=(self.api_key, ""),
            timeout=httpx.Timeout(self.channel.timeout_s),
            headers={"User-Agent": USER_AGENT},
            transport=self.transport,
        ) as client:
            shipment = await self._earlier(client, request.idempotency_key)
            if shipment is not None and not shipment.get("tracking_code") and _lacks_customs(shipment, body):
                shipment = None  # a draft made without the customs information now required: not bought
            if shipment is None:
                shipment = await self._json(
                    client, "POST", "/shipments", "create the EasyPost shipment", json={"shipment": body}
                )
            if shipment.get("tracking_code"):
                return _result(shipment)  # bought before, or in the same call
            rate = self._rate(shipment)
            bought = await self._buy(client, str(shipment.get("id", "")), rate)
            return _result(bought)

    # ------------------------------------------------------------------ steps

    async def _earlier(self, client: httpx.AsyncClient, reference: str) -> dict[str, Any] | None:
        """The leg's shipment from an earlier attempt: a bought one if any, else the newest draft."""
        since = (datetime.now(UTC) - timedelta(hours=self.channel.lookback_hours)).isoformat()
        params: dict[str, str] = {"start_datetime": since, "page_size": "100"}
        draft: dict[str, Any] | None = None
        for _ in range(MAX_PAGES):
            page = await self._json(client, "GET", "/shipments", "look for an earlier attempt", params=params)
            shipments = page.get("shipments")
            if not isinstance(shipments, list):
                raise unreadable("look for an earlier attempt")
            for shipment in shipments:
                if isinstance(shipment, dict) and shipment.get("reference") == reference:
                    if shipment.get("tracking_code"):
                        return shipment
                    draft = draft or shipment  # newest first
            if not page.get("has_more") or not shipments:
                return draft
            params["before_id"] = str(shipments[-1].get("id", ""))
        raise PartnerCallError(
            f"more than {MAX_PAGES * 100} EasyPost shipments in {self.channel.lookback_hours} h: cannot rule out "
            "an earlier purchase for this leg; lower lookback_hours",
            retryable=False,
            code="config",
        )

    def _rate(self, shipment: dict[str, Any]) -> dict[str, Any]:
        rates = [r for r in shipment.get("rates") or [] if isinstance(r, dict)]
        for rate in rates:
            if (
                rate.get("service") == self.channel.service
                and (self.channel.carrier is None or rate.get("carrier") == self.channel.carrier)
                and (self.channel.account is None or rate.get("carrier_account_id") == self.channel.account)
            ):
                return rate
        offered = ", ".join(sorted({f"{r.get('carrier')} {r.get('service')}" for r in rates})) or "none"
        raise PartnerCallError(
            f"EasyPost offers no {self.channel.carrier or 'any carrier'} {self.channel.service} rate for this leg "
            f"(offered: {offered})",
            retryable=False,
            code="no-rate",
        )

    async def _buy(self, client: httpx.AsyncClient, shipment_id: str, rate: dict[str, Any]) -> dict[str, Any]:
        what = "buy the EasyPost rate"
        response = await call(
            client,
            "POST",
            f"/shipments/{shipment_id}/buy",
            policy=self.policy,
            repeatable=True,
            what=what,
            json={"rate": {"id": rate.get("id")}},
        )
        if response.status_code in (200, 201):
            return _body(response, what)
        # A repeat of a buy whose answer was lost is refused (postage exists): read the shipment.
        shipment = await self._json(client, "GET", f"/shipments/{shipment_id}", "read the EasyPost shipment")
        if shipment.get("tracking_code"):
            return shipment
        raise refused(what, response, _error(response))

    async def _json(self, client: httpx.AsyncClient, method: str, url: str, what: str, **kwargs: Any) -> dict[str, Any]:
        response = await call(client, method, url, policy=self.policy, repeatable=True, what=what, **kwargs)
        if response.status_code not in (200, 201):
            raise refused(what, response, _error(response))
        return _body(response, what)

    # ------------------------------------------------------------------ the request

    def _shipment(self, request: BookingRequest) -> dict[str, Any]:
        origin, destination, parcel = booking_inputs("EasyPost", request, self.channel, "service")
        options: dict[str, Any] = {"print_custom_1": request.reference, "label_date": request.pickup_after.isoformat()}
        body: dict[str, Any] = {
            "reference": request.idempotency_key,
            "from_address": _address(request.origin_name, origin),
            "to_address": _address(request.destination_name, destination),
            "parcel": {
                "length": round(parcel.length_cm / CM_PER_INCH, 1),
                "width": round(parcel.width_cm / CM_PER_INCH, 1),
                "height": round(parcel.height_cm / CM_PER_INCH, 1),
                "weight": round(parcel.weight_kg * OUNCES_PER_KG, 1),
            },
            "options": options,
        }
        goods = declared_goods("EasyPost", request, origin, destination)
        if goods is not None:  # EasyPost needs customs information between any two countries
            body["customs_info"] = _customs_info(goods, origin, body["parcel"]["weight"])
        if self.channel.account:
            body["carrier_accounts"] = [self.channel.account]
        return body


def _customs_info(goods: CustomsGoods, origin: Address, weight_oz: float) -> dict[str, Any]:
    """One customs item: the leg's goods, its declared value, the parcel's weight. The contents
    are "other" (not merchandise: nothing is sold), explained by the goods' description."""
    info: dict[str, Any] = {
        "contents_type": "other",
        "contents_explanation": goods.description[:255],
        "non_delivery_option": "return",
        "restriction_type": "none",
        "customs_certify": False,
        "customs_items": [
            {
                "description": goods.description,
                "quantity": 1,
                "value": goods.value,
                "currency": goods.currency,
                "weight": weight_oz,
                "hs_tariff_number": goods.hs_code,
                "origin_country": origin.country,
            }
        ],
    }
    if origin.country == "US":
        info["eel_pfc"] = _us_export_filing(goods)
    return info


EEI_THRESHOLD_USD = 2500.0


def _us_export_filing(goods: CustomsGoods) -> str:
    """A US export names its EEI filing: the product's own (an AES ITN or another exemption), or
    the low-value exemption when the value is plainly under the threshold; never a guess."""
    if goods.us_export_filing:
        return goods.us_export_filing
    if goods.currency == "USD" and goods.value <= EEI_THRESHOLD_USD:
        return "NOEEI 30.37(a)"
    raise PartnerCallError(
        f"a US export declared at {goods.value:g} {goods.currency} needs its EEI filing (us_export_filing: an "
        f"AES ITN or exemption) in the product's customs goods: only up to {EEI_THRESHOLD_USD:g} USD is it exempt",
        retryable=False,
        code="config",
    )


def _lacks_customs(shipment: dict[str, Any], body: dict[str, Any]) -> bool:
    return "customs_info" in body and not shipment.get("customs_info")


def _address(name: str, address: Address) -> dict[str, Any]:
    out: dict[str, Any] = {
        "company": name,
        "street1": address.lines[0],
        "city": address.city,
        "zip": address.postal_code,
        "country": address.country,
    }
    if len(address.lines) > 1:
        out["street2"] = ", ".join(address.lines[1:])
    for key, value in (("state", address.state), ("phone", address.phone), ("name", address.attention)):
        if value:
            out[key] = value
    return out


def _body(response: httpx.Response, what: str) -> dict[str, Any]:
    try:
        data = response.json()
    except ValueError:
        raise unreadable(what) from None
    if not isinstance(data, dict):
        raise unreadable(what)
    return data


def _error(response: httpx.Response) -> str:
    try:
        error = response.json().get("error") or {}
        return f"{error.get('code', '')}: {error.get('message', '')}"[:200]
    except (ValueError, AttributeError):
        return response.text[:200]


def _result(shipment: dict[str, Any]) -> BookingResult:
    tracking, shipment_id = shipment.get("tracking_code"), shipment.get("id")
    if not tracking or not shipment_id:
        raise unreadable("EasyPost booking")
    rate = shipment.get("selected_rate") if isinstance(shipment.get("selected_rate"), dict) else {}
    tracker = shipment.get("tracker") if isinstance(shipment.get("tracker"), dict) else {}
    eta_text = (rate or {}).get("delivery_date") or (tracker or {}).get("est_delivery_date")
    eta: datetime | None = None
    if isinstance(eta_text, str):
        try:
            eta = datetime.fromisoformat(eta_text.replace("Z", "+00:00"))
        except ValueError:
            eta = None
        if eta is not None and eta.tzinfo is None:
            eta = eta.replace(tzinfo=UTC)
    return BookingResult(booking_reference=str(shipment_id)[:64], tracking_number=str(tracking)[:64], eta=eta)
