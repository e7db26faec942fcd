"""Local stand-ins for EasyPost's and UPS's booking APIs, for the tests: real HTTP services on an
ephemeral port (run them with :class:`adapters.local_server.LocalServer`) that answer the calls
the booking clients make, the way the real APIs document them, and keep what was booked so a test
can count purchases.

Like the real services, they offer or accept only services that exist between the two
countries: a domestic service on a cross-border leg has no EasyPost rate and is refused by UPS.

Fault knobs: ``fail_next`` answers that many calls with 503 before doing anything;
``lose_next_answer`` does the work of the next purchase or ship call, then answers 500 as if the
answer had been lost on the way back.
"""

from __future__ import annotations

import base64
import itertools
import secrets
import threading
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse


def _basic(request: Request) -> tuple[str, str] | None:
    header = request.headers.get("authorization", "")
    if not header.startswith("Basic "):
        return None
    try:
        user, _, password = base64.b64decode(header[6:]).decode().partition(":")
    except ValueError:
        return None
    return user, password


@dataclass
class EasyPostSandbox:
    api_key: str
    domestic_rates: tuple[tuple[str, str, str], ...] = (
        ("FedEx", "FIRST_OVERNIGHT", "ca_fedex"),
        ("FedEx", "PRIORITY_OVERNIGHT", "ca_fedex"),
        ("UPS", "NextDayAirEarlyAM", "ca_ups"),
    )
    international_rates: tuple[tuple[str, str, str], ...] = (
        ("FedEx", "INTERNATIONAL_FIRST", "ca_fedex"),
        ("FedEx", "INTERNATIONAL_PRIORITY", "ca_fedex"),
        ("UPS", "ExpressPlus", "ca_ups"),
    )
    transit: timedelta = timedelta(hours=18)
    fail_next: int = 0
    lose_next_answer: bool = False
    shipments: dict[str, dict[str, Any]] = field(default_factory=dict)
    purchases: int = 0
    _ids: itertools.count[int] = field(default_factory=lambda: itertools.count(1))
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def app(self) -> FastAPI:
        app = FastAPI(title="EasyPost sandbox")

        def guard(request: Request) -> JSONResponse | None:
            if _basic(request) != (self.api_key, ""):
                return _ep_error(401, "APIKEY.INACTIVE", "the API key is not valid")
            if self.fail_next > 0:
                self.fail_next -= 1
                return _ep_error(503, "SERVICE.UNAVAILABLE", "try again")
            return None

        @app.post("/v2/shipments")
        async def create(request: Request) -> JSONResponse:
            body = (await request.json()).get("shipment") or {}
            with self._lock:
                if (refusal := guard(request)) is not None:
                    return refusal
                if not body.get("to_address") or not body.get("from_address") or not body.get("parcel"):
                    return _ep_error(422, "SHIPMENT.INVALID_PARAMS", "addresses and parcel are required")
                if body["from_address"].get("country") != body["to_address"].get("country") and not _customs_ok(
                    body.get("customs_info")
                ):
                    return _ep_error(422, "SHIPMENT.CUSTOMS_INFO.INVALID", "international shipments need customs_info")
                shipment_id = f"shp_{next(self._ids):08d}"
                try:
                    label_date = datetime.fromisoformat((body.get("options") or {}).get("label_date") or "")
                except ValueError:
                    label_date = datetime.now(UTC)
                shipment = {
                    "id": shipment_id,
                    "object": "Shipment",
                    "reference": body.get("reference"),
                    "created_at": datetime.now(UTC).isoformat(),
                    "from_address": body["from_address"],
                    "to_address": body["to_address"],
                    "parcel": body["parcel"],
                    "customs_info": body.get("customs_info"),
                    "options": body.get("options") or {},
                    "tracking_code": None,
                    "selected_rate": None,
                    "rates": [
                        {
                            "id": f"rate_{shipment_id[4:]}_{i}",
                            "carrier": carrier,
                            "service": service,
                            "carrier_account_id": account,
                            "delivery_date": (label_date + self.transit).astimezone(UTC).isoformat(),
                        }
                        for i, (carrier, service, account) in enumerate(
                            self.domestic_rates
                            if body["from_address"].get("country") == body["to_address"].get("country")
                            else self.international_rates
                        )
                        if not body.get("carrier_accounts") or account in body["carrier_accounts"]
                    ],
                }
                self.shipments[shipment_id] = shipment
                return JSONResponse(shipment, status_code=201)

        @app.post("/v2/shipments/{shipment_id}/buy")
        async def buy(shipment_id: str, request: Request) -> JSONResponse:
            rate_id = ((await request.json()).get("rate") or {}).get("id")
            with self._lock:
                if (refusal := guard(request)) is not None:
                    return refusal
                shipment = self.shipments.get(shipment_id)
                if shipment is None:
                    return _ep_error(404, "NOT_FOUND", "no such shipment")
                if shipment["tracking_code"]:
                    return _ep_error(422, "SHIPMENT.POSTAGE.EXISTS", "postage already exists for this shipment")
                rate = next((r for r in shipment["rates"] if r["id"] == rate_id), None)
                if rate is None:
                    return _ep_error(422, "SHIPMENT.RATE.INVALID", "no such rate on this shipment")
                self.purchases += 1
                shipment["selected_rate"] = rate
                shipment["tracking_code"] = f"EZ{secrets.randbelow(10**16):016d}"
                shipment["tracker"] = {"est_delivery_date": rate["delivery_date"]}
                if self.lose_next_answer:
                    self.lose_next_answer = False
                    return _ep_error(500, "INTERNAL_SERVER_ERROR", "something went wrong")
                return JSONResponse(shipment, status_code=200)

        @app.get("/v2/shipments/{shipment_id}")
        async def read(shipment_id: str, request: Request) -> JSONResponse:
            with self._lock:
                if (refusal := guard(request)) is not None:
                    return refusal
                shipment = self.shipments.get(shipment_id)
                return JSONResponse(shipment) if shipment else _ep_error(404, "NOT_FOUND", "no such shipment")

        @app.get("/v2/shipments")
        async def listing(request: Request) -> JSONResponse:
            q = request.query_params
            with self._lock:
                if (refusal := guard(request)) is not None:
                    return refusal
                rows = sorted(self.shipments.values(), key=lambda s: s["id"], reverse=True)  # newest first
                if q.get("purchased") == "true":
                    rows = [s for s in rows if s["tracking_code"]]
                if q.get("start_datetime"):
                    since = datetime.fromisoformat(q["start_datetime"])
                    rows = [s for s in rows if datetime.fromisoformat(s["created_at"]) >= since]
                if q.get("before_id"):
                    rows = [s for s in rows if s["id"] < q["before_id"]]
                size = min(100, int(q.get("page_size", "20")))
                return JSONResponse({"shipments": rows[:size], "has_more": len(rows) > size})

        return app


def _ep_error(status: int, code: str, message: str) -> JSONResponse:
    return JSONResponse({"error": {"code": code, "message": message, "errors": []}}, status_code=status)


# UPS service codes for shipments within one country (Next Day Air, 2nd Day Air, Ground, 3 Day
# Select, Next Day Air Saver, Next Day Air Early, 2nd Day Air A.M.).
UPS_DOMESTIC_SERVICES = frozenset({"01", "02", "03", "12", "13", "14", "59"})


@dataclass
class UpsSandbox:
    client_id: str
    client_secret: str
    shipper_number: str
    token_lifetime_s: int = 14399
    fail_next: int = 0
    lose_next_answer: bool = False
    shipments: list[dict[str, Any]] = field(default_factory=list)
    ship_calls: int = 0
    tokens_issued: int = 0
    _tokens: set[str] = field(default_factory=set)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def expire_tokens(self) -> None:
        with self._lock:
            self._tokens.clear()

    def app(self) -> FastAPI:
        app = FastAPI(title="UPS sandbox")

        @app.post("/security/v1/oauth/token")
        async def token(request: Request) -> JSONResponse:
            form = (await request.body()).decode()
            with self._lock:
                if _basic(request) != (self.client_id, self.client_secret):
                    return _ups_error(401, "10401", "ClientId is Invalid")
                if form != "grant_type=client_credentials":
                    return _ups_error(400, "10400", "Invalid/Missing grant_type")
                value = secrets.token_urlsafe(24)
                self._tokens.add(value)
                self.tokens_issued += 1
                return JSONResponse(
                    {
                        "token_type": "Bearer",
                        "access_token": value,
                        "client_id": self.client_id,
                        "expires_in": str(self.token_lifetime_s),
                        "status": "approved",
                    }
                )

        @app.post("/api/shipments/{version}/ship")
        async def ship(version: str, request: Request) -> JSONResponse:
            body = await request.json()
            with self._lock:
                self.ship_calls += 1
                if request.headers.get("authorization", "").removeprefix("Bearer ") not in self._tokens:
                    return _ups_error(401, "250002", "Invalid Authentication Information.")
                if len(request.headers.get("transid", "")) > 32:
                    return _ups_error(400, "120100", "transId is too long")
                if self.fail_next > 0:
                    self.fail_next -= 1
                    return _ups_error(503, "190001", "The service is temporarily unavailable")
                shipment = body.get("ShipmentRequest", {}).get("Shipment", {})
                account = shipment.get("PaymentInformation", {}).get("ShipmentCharge", {}).get("BillShipper", {})
                if account.get("AccountNumber") != self.shipper_number:
                    return _ups_error(400, "120120", "Invalid or missing shipper number")
                to = shipment.get("ShipTo", {}).get("Address", {}).get("CountryCode")
                if not to:
                    return _ups_error(400, "120201", "Missing or invalid ship to country code")
                origin = shipment.get("ShipFrom", {}).get("Address", {}).get("CountryCode")
                if origin != to and shipment.get("Service", {}).get("Code") in UPS_DOMESTIC_SERVICES:
                    unavailable = "The requested service is unavailable between the selected locations."
                    return _ups_error(400, "111210", unavailable)
                if origin != to and not _invoice_ok(shipment):
                    return _ups_error(400, "120416", "International forms are required for this shipment.")
                number = f"1Z{self.shipper_number}{len(self.shipments) + 1:010d}"
                self.shipments.append({"number": number, "version": version, "shipment": shipment})
                if self.lose_next_answer:
                    self.lose_next_answer = False
                    return _ups_error(500, "190100", "Internal error")
                return JSONResponse(
                    {
                        "ShipmentResponse": {
                            "Response": {"ResponseStatus": {"Code": "1", "Description": "Success"}},
                            "ShipmentResults": {
                                "ShipmentIdentificationNumber": number,
                                "PackageResults": [{"TrackingNumber": number}],
                            },
                        }
                    }
                )

        return app


def _customs_ok(info: Any) -> bool:
    """What EasyPost asks of customs information: items with a description, a positive quantity,
    value and weight, and an origin country; an explanation when the contents are "other"."""
    if not isinstance(info, dict) or not isinstance(info.get("customs_items"), list) or not info["customs_items"]:
        return False
    if info.get("contents_type") == "other" and not info.get("contents_explanation"):
        return False
    return all(
        isinstance(item, dict)
        and item.get("description")
        and item.get("origin_country")
        and all(isinstance(item.get(k), int | float) and item[k] > 0 for k in ("quantity", "value", "weight"))
        for item in info["customs_items"]
    )


def _invoice_ok(shipment: dict[str, Any]) -> bool:
    """A UPS shipment between countries: a description of the goods and a commercial invoice
    (form 01) with a sold-to party, a currency and products with a commodity code and a value."""
    forms = (shipment.get("ShipmentServiceOptions") or {}).get("InternationalForms") or {}
    products = forms.get("Product") or []
    return bool(
        shipment.get("Description")
        and forms.get("FormType") == "01"
        and forms.get("CurrencyCode")
        and (forms.get("Contacts") or {}).get("SoldTo")
        and products
        and all(
            p.get("CommodityCode") and p.get("OriginCountryCode") and (p.get("Unit") or {}).get("Value")
            for p in products
        )
    )


def _ups_error(status: int, code: str, message: str) -> JSONResponse:
    return JSONResponse({"response": {"errors": [{"code": code, "message": message}]}}, status_code=status)
