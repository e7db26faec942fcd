"""Booking a leg with UPS (``kind: ups``) through its Shipping API, after an OAuth client-credentials
token (the profile's ``client_id`` and ``credential`` secrets; ``account`` is the shipper number).

API (UPS's OpenAPI files, github.com/UPS-API/api-documentation): ``POST
{base}/security/v1/oauth/token`` with HTTP Basic (client id, secret) and
``grant_type=client_credentials`` → ``access_token`` and ``expires_in`` (seconds, as a string);
``POST {base}/api/shipments/{version}/ship`` with ``Authorization: Bearer``, a ``transId`` unique
per request and ``transactionSrc`` → ``ShipmentResponse.ShipmentResults`` with the shipment
identification number and each package's tracking number. Errors are
``{"response": {"errors": [{"code", "message"}]}}``.

**Not idempotent.** The ship call has no idempotency key and no way to ask "did you already ship
reference X?", so this client is marked ``idempotent = False``: it repeats a ship call only when the
failure proves UPS never acted on it (the connection could not be opened, 429, or 401 for an
expired token, after which it fetches a new one). A ship call cut off after it was sent, or
answered with a 5xx or an unreadable 200, fails the leg with an alert instead of booking again: a
person checks UPS (the package reference is the leg's CoI reference) and registers the shipment or
books again. The ship answer carries no delivery estimate; the ETA arrives with the first Track
Alert event.
"""

from __future__ import annotations

import textwrap
import time
import uuid
from typing import Any

import httpx

from adapters.couriers.booking import booking_inputs, declared_goods
from adapters.couriers.http import USER_AGENT, RetryPolicy, call, refused, unreadable
from adapters.registry import CourierBooking
from hub.logistics.ports import BookingRequest, BookingResult, PartnerCallError
from hub.partners.schemas import Address
from hub.products.schemas import INVOICE_LINE, CustomsGoods

API_VERSION = "v2409"
TOKEN_MARGIN_S = 60.0  # fetch a new token this long before the old one expires
KG_PER_LB = 0.45359237
CM_PER_INCH = 2.54
IMPERIAL = {"US", "PR"}  # UPS wants inches and pounds for shipments from these countries


class UpsBooking:
    idempotent = False

    def __init__(
        self,
        base_url: str,
        client_id: str,
        client_secret: str,
        channel: CourierBooking,
        *,
        backoff_s: float = 0.5,
        backoff_max_s: float = 8.0,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self.client_id = client_id
        self.client_secret = client_secret
        self.channel = channel
        self.policy = RetryPolicy(channel.retries, backoff_s, backoff_max_s)
        self.transport = transport
        self._token: str | None = None
        self._token_until = 0.0

    @property
    def max_call_s(self) -> float:
        """The longest a ``book`` can take (a token call and up to two ship calls, each retried
        with capped backoff), so the dispatcher does not cut off a call this client would still
        have ended itself, which it would have to treat as a possible booking."""
        per_call = (self.policy.retries + 1) * (self.channel.timeout_s + self.policy.backoff_max_s)
        return 3 * per_call + 5.0

    async def book(self, request: BookingRequest) -> BookingResult:
        body = self._ship_request(request)  # refuses an incomplete profile before any call
        async with httpx.AsyncClient(
            timeout=httpx.Timeout(self.channel.timeout_s),
            headers={"User-Agent": USER_AGENT},
            transport=self.transport,
        ) as client:
            for fresh_token in (False, True):
                token = await self._access_token(client, renew=fresh_token)
                response = await call(
                    client,
                    "POST",
                    f"{self.base_url}/api/shipments/{API_VERSION}/ship",
                    policy=self.policy,
                    repeatable=False,
                    what="UPS ship",
                    json=body,
                    headers={
                        "Authorization": f"Bearer {token}",
                        "transId": uuid.uuid4().hex,  # 32 characters, unique per request
                        "transactionSrc": "cgt-hub",
                    },
                )
                if response.status_code == 401 and not fresh_token:
                    continue  # the token expired early: UPS did nothing; one more try with a new one
                break
        if response.status_code != 200:
            raise refused("UPS ship", response, _errors(response))
        return _result(response, request.reference)

    async def _access_token(self, client: httpx.AsyncClient, *, renew: bool) -> str:
        if self._token and not renew and time.monotonic() < self._token_until:
            return self._token
        headers = {"x-merchant-id": self.channel.account} if self.channel.account else {}
        response = await call(
            client,
            "POST",
            f"{self.base_url}/security/v1/oauth/token",
            policy=self.policy,
            repeatable=True,
            what="UPS OAuth token",
            auth=(self.client_id, self.client_secret),
            data={"grant_type": "client_credentials"},
            headers=headers,
        )
        if response.status_code != 200:
            raise refused("UPS OAuth token", response, _errors(response))
        try:
            data = response.json()
            token = str(data["access_token"])
            lifetime = float(data.get("expires_in") or 0)
        except (ValueError, KeyError, TypeError, AttributeError):
            raise unreadable("UPS OAuth token") from None
        self._token = token
        self._token_until = time.monotonic() + max(0.0, lifetime - TOKEN_MARGIN_S)
        return token

    def _ship_request(self, request: BookingRequest) -> dict[str, Any]:
        ch = self.channel
        origin, destination, parcel = booking_inputs("UPS", request, ch, "service", "account")
        if origin.country in IMPERIAL:
            length_unit, weight_unit = "IN", "LBS"
            dims = [parcel.length_cm / CM_PER_INCH, parcel.width_cm / CM_PER_INCH, parcel.height_cm / CM_PER_INCH]
            weight = parcel.weight_kg / KG_PER_LB
        else:
            length_unit, weight_unit = "CM", "KGS"
            dims = [parcel.length_cm, parcel.width_cm, parcel.height_cm]
            weight = parcel.weight_kg
        shipper = _party(request.origin_name, origin)
        shipper["ShipperNumber"] = ch.account
        goods = declared_goods("UPS", request, origin, destination)
        body: dict[str, Any] = {
            "ShipmentRequest": {
                "Request": {
                    "RequestOption": "nonvalidate",
                    "TransactionReference": {"CustomerContext": request.idempotency_key},
                },
                "Shipment": {
                    "Description": request.material[:50],
                    "Shipper": shipper,
                    "ShipFrom": _party(request.origin_name, origin),
                    "ShipTo": _party(request.destination_name, destination),
                    "PaymentInformation": {
                        "ShipmentCharge": {"Type": "01", "BillShipper": {"AccountNumber": ch.account}}
                    },
                    "Service": {"Code": ch.service},
                    "Package": {
                        "Packaging": {"Code": "02"},  # customer-supplied (the validated shipper)
                        "Dimensions": {
                            "UnitOfMeasurement": {"Code": length_unit},
                            "Length": f"{dims[0]:.1f}",
                            "Width": f"{dims[1]:.1f}",
                            "Height": f"{dims[2]:.1f}",
                        },
                        "PackageWeight": {"UnitOfMeasurement": {"Code": weight_unit}, "Weight": f"{weight:.1f}"},
                        "ReferenceNumber": {"Value": request.reference[:35]},
                    },
                },
            }
        }
        if goods is not None:
            shipment = body["ShipmentRequest"]["Shipment"]
            # UPS requires a description of the goods across borders (50 characters, cut at a word).
            shipment["Description"] = textwrap.shorten(goods.description, 50, placeholder="")
            sold_to = _party(request.destination_name, destination)
            sold_to.setdefault("AttentionName", request.destination_name[:35])  # required on an invoice
            shipment["ShipmentServiceOptions"] = {"InternationalForms": _invoice(goods, request, origin, sold_to)}
        return body


def _invoice(goods: CustomsGoods, request: BookingRequest, origin: Address, sold_to: dict[str, Any]) -> dict[str, Any]:
    """A commercial invoice (form type 01) for the leg's goods: one product, one unit, the value
    declared for customs purposes; the receiving site is the invoice's "sold to" party."""
    product: dict[str, Any] = {
        "Description": textwrap.wrap(goods.description, INVOICE_LINE),  # fits: checked by the schema
        "CommodityCode": goods.hs_code.replace(".", ""),
        "OriginCountryCode": origin.country,
        "Unit": {"Number": "1", "Value": f"{goods.value:.2f}", "UnitOfMeasurement": {"Code": "EA"}},
    }
    if goods.part_number:
        product["PartNumber"] = goods.part_number
    return {
        "FormType": "01",
        "InvoiceNumber": request.reference[:35],
        "InvoiceDate": request.pickup_after.strftime("%Y%m%d"),
        "ReasonForExport": goods.export_reason.upper(),
        "CurrencyCode": goods.currency,
        "Contacts": {"SoldTo": sold_to},
        "Product": [product],
    }


def _party(name: str, address: Address) -> dict[str, Any]:
    party: dict[str, Any] = {
        "Name": name[:35],
        "Address": {
            "AddressLine": list(address.lines),
            "City": address.city,
            "PostalCode": address.postal_code,
            "CountryCode": address.country,
        },
    }
    if address.state:
        party["Address"]["StateProvinceCode"] = address.state
    if address.attention:
        party["AttentionName"] = address.attention[:35]
    if address.phone:
        party["Phone"] = {"Number": address.phone}
    return party


def _errors(response: httpx.Response) -> str:
    try:
        errors = response.json()["response"]["errors"]
        return "; ".join(f"{e.get('code', '')} {e.get('message', '')}".strip() for e in errors)[:200]
    except (ValueError, KeyError, TypeError, AttributeError):
        return response.text[:200]


def _result(response: httpx.Response, reference: str) -> BookingResult:
    try:
        results = response.json()["ShipmentResponse"]["ShipmentResults"]
        number = str(results["ShipmentIdentificationNumber"])
        packages = results.get("PackageResults") or {}
        first = packages[0] if isinstance(packages, list) else packages
        tracking = str(first.get("TrackingNumber") or number)
    except (ValueError, KeyError, TypeError, AttributeError, IndexError):
        # UPS answered 200, so it probably shipped: booking again could ship twice.
        raise PartnerCallError(
            f"UPS ship: answered 200 but the answer is unreadable; it may have shipped reference {reference}: "
            "check UPS, then register the shipment or book again",
            retryable=False,
            code="ambiguous",
        ) from None
    return BookingResult(booking_reference=number[:64], tracking_number=tracking[:64], eta=None)
