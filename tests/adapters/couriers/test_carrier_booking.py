"""EasyPost and UPS bookings: the requests each API expects (respx), what is and is not repeated,
and end to end through the outbound dispatcher against real local HTTP services that speak each
API (adapters/couriers/carrier_sandboxes.py)."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
from collections.abc import Iterator
from dataclasses import replace
from datetime import UTC, datetime
from typing import Any

import httpx
import pytest
import respx

from adapters.couriers.booking import booking_client
from adapters.couriers.carrier_sandboxes import EasyPostSandbox, UpsSandbox
from adapters.couriers.easypost_booking import EasyPostBooking
from adapters.couriers.ups_booking import UpsBooking
from adapters.local_server import LocalServer
from adapters.registry import CourierBooking, Parcel
from hub.context import HubContext
from hub.logistics.policy import Policy
from hub.logistics.ports import BookingRequest, BookingResult, PartnerCallError
from hub.logistics.repository import LogisticsRepository
from hub.logistics.schemas import BookShipment
from hub.logistics.service import ShipmentService
from hub.logistics.worker import OutboundDispatcher
from hub.partners.schemas import Address
from hub.products.registry import get_product
from hub.runtime import logistics_ports
from tests.logistics_support import alert_kinds, context, order_at

ORIGIN = Address(
    lines=("1200 Elm Street", "Apheresis Unit"), city="Rochester", state="NY", postal_code="14620", country="US"
)
DEST = Address(lines=("Bioscience Park 12",), city="Leiden", postal_code="2333 CA", country="NL", phone="+31715550100")
REQ = BookingRequest(
    idempotency_key="leg-key-1",
    shipment_id="s-1",
    reference="CHA999826000001-apheresis-chilled",
    origin="st-marys",
    destination="leiden-cell-factory",
    pickup_after=datetime(2026, 11, 25, 12, tzinfo=UTC),
    temperature_min_c=2,
    temperature_max_c=8,
    material="apheresis",
    origin_name="St Mary's Hospital",
    destination_name="Leiden Cell Factory",
    origin_address=ORIGIN,
    destination_address=DEST,
    goods=get_product("car-t-fresh").legs[0].customs,
)
PARCEL = Parcel(length_cm=60, width_cm=45, height_cm=45, weight_kg=14)
EP = CourierBooking(
    adapter="courier-booking",
    direction="outbound",
    kind="easypost",
    base_url="https://ep.test/v2",
    credential="api_key",
    carrier="FedEx",
    service="INTERNATIONAL_PRIORITY",
    parcel=PARCEL,
)
UPS = CourierBooking(
    adapter="courier-booking",
    direction="outbound",
    kind="ups",
    base_url="https://ups.test",
    credential="secret",
    client_id="id",
    account="A1B2C3",
    service="07",
    parcel=PARCEL,
)
TOKEN = {"access_token": "tok-1", "expires_in": "14399", "token_type": "Bearer"}
SHIPPED = {
    "ShipmentResponse": {
        "ShipmentResults": {
            "ShipmentIdentificationNumber": "1ZA1B2C30000000001",
            "PackageResults": [{"TrackingNumber": "1ZA1B2C30000000001"}],
        }
    }
}


def _easypost() -> EasyPostBooking:
    return EasyPostBooking("https://ep.test/v2", "ep-key", EP, backoff_s=0.001)


def _ups() -> UpsBooking:
    return UpsBooking("https://ups.test", "id", "secret", UPS, backoff_s=0.001)


def _shipment(sid: str, **extra: object) -> dict[str, object]:
    rates = [
        {"id": "rate_ups", "carrier": "UPS", "service": "NextDayAirEarlyAM", "carrier_account_id": "ca_ups"},
        {
            "id": "rate_fx",
            "carrier": "FedEx",
            "service": "INTERNATIONAL_PRIORITY",
            "carrier_account_id": "ca_fx",
            "delivery_date": "2026-11-26T08:00:00Z",
        },
    ]
    return {"id": sid, "reference": "leg-key-1", "tracking_code": None, "rates": rates, **extra}


# ---------------------------------------------------------------------------------------- EasyPost


@respx.mock
def test_easypost_creates_then_buys_the_configured_rate() -> None:
    listing = respx.get("https://ep.test/v2/shipments").mock(
        return_value=httpx.Response(200, json={"shipments": [], "has_more": False})
    )
    create = respx.post("https://ep.test/v2/shipments").mock(return_value=httpx.Response(201, json=_shipment("shp_1")))
    bought = _shipment("shp_1", tracking_code="794600000001", selected_rate=_shipment("x")["rates"][1])  # type: ignore[index]
    buy = respx.post("https://ep.test/v2/shipments/shp_1/buy").mock(return_value=httpx.Response(200, json=bought))
    result = asyncio.run(_easypost().book(REQ))
    assert (result.booking_reference, result.tracking_number) == ("shp_1", "794600000001")
    assert result.eta == datetime(2026, 11, 26, 8, tzinfo=UTC)
    assert "start_datetime" in listing.calls[0].request.url.params  # every shipment of the window
    sent = json.loads(create.calls[0].request.content)["shipment"]
    assert sent["reference"] == "leg-key-1"  # how a repeat finds this purchase
    assert sent["options"]["print_custom_1"] == REQ.reference
    assert (sent["from_address"]["street1"], sent["from_address"]["street2"]) == ("1200 Elm Street", "Apheresis Unit")
    assert sent["to_address"]["country"] == "NL"
    assert sent["parcel"] == {"length": 23.6, "width": 17.7, "height": 17.7, "weight": 493.8}  # inches, ounces
    assert json.loads(buy.calls[0].request.content) == {"rate": {"id": "rate_fx"}}
    auth = create.calls[0].request.headers["authorization"]
    assert base64.b64decode(auth.removeprefix("Basic ")) == b"ep-key:"
    customs = sent["customs_info"]  # US -> NL: the leg's goods from the product definition
    assert (customs["contents_type"], customs["non_delivery_option"]) == ("other", "return")
    assert customs["eel_pfc"] == "NOEEI 30.37(a)"
    (item,) = customs["customs_items"]
    assert (item["hs_tariff_number"], item["origin_country"], item["quantity"]) == ("3002.90", "US", 1)
    assert (item["value"], item["currency"], item["weight"]) == (100, "USD", 493.8)
    assert "leukapheresis" in item["description"]


@respx.mock
def test_easypost_customs_only_across_a_border_and_never_without_the_goods() -> None:
    respx.get("https://ep.test/v2/shipments").mock(
        return_value=httpx.Response(200, json={"shipments": [], "has_more": False})
    )
    create = respx.post("https://ep.test/v2/shipments").mock(return_value=httpx.Response(201, json=_shipment("shp_1")))
    bought = _shipment("shp_1", tracking_code="794600000001", selected_rate=_shipment("x")["rates"][1])  # type: ignore[index]
    respx.post("https://ep.test/v2/shipments/shp_1/buy").mock(return_value=httpx.Response(200, json=bought))
    domestic = replace(REQ, destination_address=DEST.model_copy(update={"country": "US", "state": "NY"}), goods=None)
    asyncio.run(_easypost().book(domestic))
    assert "customs_info" not in json.loads(create.calls[0].request.content)["shipment"]
    with pytest.raises(PartnerCallError) as no_goods:
        asyncio.run(_easypost().book(replace(REQ, goods=None)))
    assert (no_goods.value.code, no_goods.value.retryable) == ("config", False)
    assert "from US to NL" in no_goods.value.message
    assert create.call_count == 1  # refused before any call


@respx.mock
def test_easypost_returns_an_earlier_purchase_instead_of_buying_again() -> None:
    earlier = _shipment("shp_7", tracking_code="794600000007")
    other = _shipment("shp_8", tracking_code="794600000008", reference="another-leg")
    respx.get("https://ep.test/v2/shipments").mock(
        side_effect=[
            httpx.Response(200, json={"shipments": [other], "has_more": True}),
            httpx.Response(200, json={"shipments": [earlier], "has_more": False}),
        ]
    )
    create = respx.post("https://ep.test/v2/shipments")
    result = asyncio.run(_easypost().book(REQ))
    assert result.tracking_number == "794600000007"
    assert not create.called
    assert respx.calls[1].request.url.params["before_id"] == "shp_8"


@respx.mock
def test_easypost_buys_the_draft_an_earlier_attempt_left_instead_of_creating_another() -> None:
    customs = {"customs_items": [{"hs_tariff_number": "3002.90"}]}
    respx.get("https://ep.test/v2/shipments").mock(
        return_value=httpx.Response(
            200, json={"shipments": [_shipment("shp_3", customs_info=customs)], "has_more": False}
        )
    )
    create = respx.post("https://ep.test/v2/shipments")
    buy = respx.post("https://ep.test/v2/shipments/shp_3/buy").mock(
        return_value=httpx.Response(200, json=_shipment("shp_3", tracking_code="794600000003"))
    )
    assert asyncio.run(_easypost().book(REQ)).tracking_number == "794600000003"
    assert not create.called
    assert buy.call_count == 1


@respx.mock
def test_easypost_does_not_buy_a_cross_border_draft_made_without_customs_information() -> None:
    respx.get("https://ep.test/v2/shipments").mock(
        return_value=httpx.Response(200, json={"shipments": [_shipment("shp_3")], "has_more": False})
    )
    create = respx.post("https://ep.test/v2/shipments").mock(return_value=httpx.Response(201, json=_shipment("shp_4")))
    old_buy = respx.post("https://ep.test/v2/shipments/shp_3/buy")
    respx.post("https://ep.test/v2/shipments/shp_4/buy").mock(
        return_value=httpx.Response(200, json=_shipment("shp_4", tracking_code="794600000004"))
    )
    assert asyncio.run(_easypost().book(REQ)).tracking_number == "794600000004"
    assert "customs_info" in json.loads(create.calls[0].request.content)["shipment"]
    assert not old_buy.called


@respx.mock
def test_easypost_buy_whose_answer_was_lost_reads_the_shipment_back() -> None:
    respx.get("https://ep.test/v2/shipments").mock(
        return_value=httpx.Response(200, json={"shipments": [], "has_more": False})
    )
    respx.post("https://ep.test/v2/shipments").mock(return_value=httpx.Response(201, json=_shipment("shp_1")))
    buy = respx.post("https://ep.test/v2/shipments/shp_1/buy").mock(
        side_effect=[
            httpx.ReadTimeout("lost"),
            httpx.Response(422, json={"error": {"code": "SHIPMENT.POSTAGE.EXISTS", "message": "postage exists"}}),
        ]
    )
    respx.get("https://ep.test/v2/shipments/shp_1").mock(
        return_value=httpx.Response(200, json=_shipment("shp_1", tracking_code="794600000001"))
    )
    assert asyncio.run(_easypost().book(REQ)).tracking_number == "794600000001"
    assert buy.call_count == 2


@respx.mock
def test_easypost_without_the_configured_rate_or_an_address_is_final() -> None:
    respx.get("https://ep.test/v2/shipments").mock(
        return_value=httpx.Response(200, json={"shipments": [], "has_more": False})
    )
    only_ups = _shipment("shp_1")
    only_ups["rates"] = only_ups["rates"][:1]  # type: ignore[index]
    respx.post("https://ep.test/v2/shipments").mock(return_value=httpx.Response(201, json=only_ups))
    with pytest.raises(PartnerCallError) as no_rate:
        asyncio.run(_easypost().book(REQ))
    assert (no_rate.value.code, no_rate.value.retryable) == ("no-rate", False)
    assert "UPS NextDayAirEarlyAM" in no_rate.value.message
    with pytest.raises(PartnerCallError) as no_address:
        asyncio.run(_easypost().book(replace(REQ, destination_address=None)))
    assert (no_address.value.code, no_address.value.retryable) == ("config", False)
    assert "leiden-cell-factory's address" in no_address.value.message


# ---------------------------------------------------------------------------------------- UPS


@respx.mock
def test_ups_gets_a_token_once_and_ships_with_the_leg_reference() -> None:
    token = respx.post("https://ups.test/security/v1/oauth/token").mock(return_value=httpx.Response(200, json=TOKEN))
    ship = respx.post("https://ups.test/api/shipments/v2409/ship").mock(return_value=httpx.Response(200, json=SHIPPED))
    client = _ups()
    result = asyncio.run(client.book(REQ))
    asyncio.run(client.book(REQ))
    assert (result.tracking_number, result.eta) == ("1ZA1B2C30000000001", None)
    assert token.call_count == 1
    assert token.calls[0].request.content == b"grant_type=client_credentials"
    assert token.calls[0].request.headers["x-merchant-id"] == "A1B2C3"
    request = ship.calls[0].request
    assert request.headers["authorization"] == "Bearer tok-1"
    assert len(request.headers["transid"]) == 32
    assert ship.calls[0].request.headers["transid"] != ship.calls[1].request.headers["transid"]
    shipment = json.loads(request.content)["ShipmentRequest"]["Shipment"]
    assert shipment["Package"]["ReferenceNumber"]["Value"] == REQ.reference
    assert shipment["Package"]["PackageWeight"] == {
        "UnitOfMeasurement": {"Code": "LBS"},
        "Weight": "30.9",
    }  # from the US
    assert shipment["ShipTo"]["Address"]["CountryCode"] == "NL"
    assert shipment["PaymentInformation"]["ShipmentCharge"]["BillShipper"]["AccountNumber"] == "A1B2C3"
    assert "leukapheresis" in shipment["Description"]
    invoice = shipment["ShipmentServiceOptions"]["InternationalForms"]
    assert (invoice["FormType"], invoice["CurrencyCode"], invoice["InvoiceDate"]) == ("01", "USD", "20261125")
    assert invoice["ReasonForExport"] == "NOT FOR SALE"
    assert invoice["Contacts"]["SoldTo"]["Address"]["City"] == "Leiden"
    (product,) = invoice["Product"]
    assert (product["CommodityCode"], product["OriginCountryCode"]) == ("300290", "US")
    assert product["Unit"] == {"Number": "1", "Value": "100.00", "UnitOfMeasurement": {"Code": "EA"}}
    assert all(len(line) <= 35 for line in product["Description"])
    with pytest.raises(PartnerCallError) as no_goods:
        asyncio.run(client.book(replace(REQ, goods=None)))
    assert no_goods.value.code == "config"
    assert ship.call_count == 2  # refused before any call


@respx.mock
def test_ups_repeats_only_what_proves_nothing_was_shipped() -> None:
    respx.post("https://ups.test/security/v1/oauth/token").mock(return_value=httpx.Response(200, json=TOKEN))
    ship = respx.post("https://ups.test/api/shipments/v2409/ship").mock(
        side_effect=[
            httpx.ConnectError("refused"),
            httpx.Response(429),
            httpx.Response(401),
            httpx.Response(200, json=SHIPPED),
        ]
    )
    assert asyncio.run(_ups().book(REQ)).booking_reference == "1ZA1B2C30000000001"
    assert ship.call_count == 4  # not sent, throttled, expired token (then a new token): all safe

    for cut_off in (httpx.ReadTimeout("after sending"), httpx.Response(503), httpx.Response(200, json={"odd": 1})):
        ship = respx.post("https://ups.test/api/shipments/v2409/ship").mock(side_effect=[cut_off])
        before = ship.call_count
        with pytest.raises(PartnerCallError) as ambiguous:
            asyncio.run(_ups().book(REQ))
        assert (ambiguous.value.code, ambiguous.value.retryable) == ("ambiguous", False)
        assert ship.call_count == before + 1


@respx.mock
def test_ups_refusals_name_ups_errors() -> None:
    respx.post("https://ups.test/security/v1/oauth/token").mock(return_value=httpx.Response(200, json=TOKEN))
    respx.post("https://ups.test/api/shipments/v2409/ship").mock(
        return_value=httpx.Response(
            400, json={"response": {"errors": [{"code": "120120", "message": "Invalid shipper number"}]}}
        )
    )
    with pytest.raises(PartnerCallError) as refused:
        asyncio.run(_ups().book(REQ))
    assert (refused.value.code, refused.value.retryable) == ("http-400", False)
    assert "120120 Invalid shipper number" in refused.value.message


# ---------------------------------------------------------------------------------------- end to end


@pytest.fixture
def ctx(db_url: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[HubContext]:
    monkeypatch.setenv("EASYPOST_API_KEY", "ep-sandbox-key")
    monkeypatch.setenv("UPS_OAUTH_CLIENT_ID", "ups-id")
    monkeypatch.setenv("UPS_OAUTH_CLIENT_SECRET", "ups-secret")
    c = context(db_url)
    try:
        yield c
    finally:
        c.store.dispose()


def _book(ctx: HubContext, courier: str, url: str, policy: Policy | None = None, **dispatcher: float) -> str:
    driver = order_at(ctx.store, ctx.partners, "collected")
    ports = logistics_ports(ctx, {courier: url})
    run = OutboundDispatcher(ctx.store, ctx.partners, ports, policy or Policy(), **dispatcher)
    cmd = BookShipment(order_id=driver.order.id, courier=courier, customs_partner="eu-customs-ics2")
    view = ctx.store.run(lambda w: ShipmentService(w, ctx.partners).book(cmd))
    asyncio.run(run.run_once())
    return view.id


def test_the_profiles_name_easypost_and_ups_booking_clients(ctx: HubContext) -> None:
    assert isinstance(booking_client(ctx.partners, "easypost-tracking"), EasyPostBooking)
    assert isinstance(booking_client(ctx.partners, "ups-track-alert"), UpsBooking)


@pytest.mark.slow
def test_easypost_booking_through_the_dispatcher_buys_once(ctx: HubContext) -> None:
    easypost = EasyPostSandbox(api_key="ep-sandbox-key", fail_next=1, lose_next_answer=True)
    with LocalServer(easypost.app()) as server:
        shipment_id = _book(ctx, "easypost-tracking", server.url + "/v2")
        client = booking_client(ctx.partners, "easypost-tracking", base_url=server.url + "/v2")
        assert client is not None
        s = ctx.store.read(lambda s: LogisticsRepository.from_session(s).shipment(shipment_id))
        again = asyncio.run(client.book(replace(REQ, idempotency_key=s.idempotency_key)))  # a repeat after a crash
    assert s.status == "booked"
    assert easypost.purchases == 1
    (bought,) = [x for x in easypost.shipments.values() if x["tracking_code"]]
    assert s.tracking_number == bought["tracking_code"] == again.tracking_number
    assert s.eta is not None
    assert (bought["from_address"]["city"], bought["to_address"]["city"]) == ("Rochester", "Leiden")
    assert bought["selected_rate"]["service"] == "INTERNATIONAL_PRIORITY"
    assert bought["customs_info"]["customs_items"][0]["hs_tariff_number"] == "3002.90"  # the fresh product's leg


@pytest.mark.slow
def test_ups_booking_through_the_dispatcher(ctx: HubContext) -> None:
    ups = UpsSandbox(client_id="ups-id", client_secret="ups-secret", shipper_number="A1B2C3")
    with LocalServer(ups.app()) as server:
        shipment_id = _book(ctx, "ups-track-alert", server.url)
    s = ctx.store.read(lambda s: LogisticsRepository.from_session(s).shipment(shipment_id))
    assert s.status == "booked"
    assert [x["number"] for x in ups.shipments] == [s.tracking_number]
    assert ups.shipments[0]["shipment"]["ShipFrom"]["Address"]["City"] == "Rochester"
    forms = ups.shipments[0]["shipment"]["ShipmentServiceOptions"]["InternationalForms"]
    assert forms["Product"][0]["CommodityCode"] == "300290"


@pytest.mark.slow
def test_a_ups_ship_whose_answer_is_lost_is_not_repeated_and_alerts(ctx: HubContext) -> None:
    ups = UpsSandbox(client_id="ups-id", client_secret="ups-secret", shipper_number="A1B2C3", lose_next_answer=True)
    with LocalServer(ups.app()) as server:
        shipment_id = _book(ctx, "ups-track-alert", server.url)
    s = ctx.store.read(lambda s: LogisticsRepository.from_session(s).shipment(shipment_id))
    assert s.status == "failed"
    assert (ups.ship_calls, len(ups.shipments)) == (1, 1)  # UPS shipped once; the hub did not ship again
    assert "shipment.booking-failed" in alert_kinds(ctx.store, s.order_id)
    (work,) = ctx.store.read(lambda x: LogisticsRepository.from_session(x).work_for("booking", shipment_id))
    assert work.status == "failed"
    assert (work.last_error or "").startswith("ambiguous:")


class _Courier:
    """A courier whose bookings cannot be repeated safely; ``delay`` before it answers."""

    idempotent = False

    def __init__(self, delay: float = 0.0, max_call_s: float = 0.0) -> None:
        self.delay = delay
        self.max_call_s = max_call_s
        self.calls = 0

    async def book(self, request: BookingRequest) -> BookingResult:
        self.calls += 1
        await asyncio.sleep(self.delay)
        return BookingResult(booking_reference="BK-1", tracking_number="1Z0000000001", eta=None)


def _leg(ctx: HubContext, courier: _Courier, **dispatcher: Any) -> tuple[OutboundDispatcher, str]:
    driver = order_at(ctx.store, ctx.partners, "collected")
    ports = logistics_ports(ctx)
    ports.booking = lambda partner: courier
    cmd = BookShipment(order_id=driver.order.id, courier="ups-track-alert", customs_partner="eu-customs-ics2")
    view = ctx.store.run(lambda w: ShipmentService(w, ctx.partners).book(cmd))
    return OutboundDispatcher(ctx.store, ctx.partners, ports, Policy(), **dispatcher), view.id


def _work(ctx: HubContext, shipment_id: str) -> tuple[Any, list[str]]:
    def read(s: Any) -> tuple[Any, list[str]]:
        repo = LogisticsRepository.from_session(s)
        (work,) = repo.work_for("booking", shipment_id)
        return work, [a.outcome for a in repo.attempts(work.id)]

    return ctx.store.read(read)


def test_a_timeout_of_a_non_idempotent_courier_is_final(ctx: HubContext) -> None:
    dispatcher, shipment_id = _leg(ctx, _Courier(delay=5), call_timeout_s=0.05)
    asyncio.run(dispatcher.run_once())
    work, outcomes = _work(ctx, shipment_id)
    assert work.status == "failed"
    assert (work.last_error or "").startswith("ambiguous:")
    assert outcomes == ["failed"]  # the in-flight marker, resolved in place


def test_a_client_that_bounds_its_own_calls_is_not_cut_off_early(ctx: HubContext) -> None:
    dispatcher, shipment_id = _leg(ctx, _Courier(delay=0.3, max_call_s=5), call_timeout_s=0.05)
    asyncio.run(dispatcher.run_once())
    work, outcomes = _work(ctx, shipment_id)
    assert (work.status, outcomes) == ("done", ["ok"])


def test_a_non_idempotent_call_cut_off_by_a_stop_is_never_repeated(ctx: HubContext) -> None:
    courier = _Courier(delay=60)
    dispatcher, shipment_id = _leg(ctx, courier)

    async def stopped_mid_call() -> None:  # what Runtime.stop does to a dispatcher it waited for
        task = asyncio.create_task(dispatcher.run_once())
        while courier.calls == 0:
            await asyncio.sleep(0.01)
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task

    asyncio.run(stopped_mid_call())
    work, outcomes = _work(ctx, shipment_id)
    assert (work.status, outcomes) == ("pending", ["sent"])
    ctx.store.run(lambda w: setattr(LogisticsRepository.from_session(w.session).work(work.id), "claimed_until", None))
    courier.delay = 0  # the courier would answer now, but it may have booked already
    asyncio.run(dispatcher.run_once())
    work, outcomes = _work(ctx, shipment_id)
    assert courier.calls == 1
    assert work.status == "failed"
    assert (work.last_error or "").startswith("ambiguous: attempt 1 ")
    assert outcomes == ["sent", "failed"]
    assert "shipment.booking-failed" in alert_kinds(ctx.store)


def test_a_failure_after_a_non_idempotent_booking_is_final_and_names_it(
    ctx: HubContext, monkeypatch: pytest.MonkeyPatch
) -> None:
    courier = _Courier()
    dispatcher, shipment_id = _leg(ctx, courier)

    def broken(*args: object) -> None:
        raise RuntimeError("the booking could not be recorded")

    monkeypatch.setattr(dispatcher, "_booked", broken)
    asyncio.run(dispatcher.run_once())
    asyncio.run(dispatcher.run_once())
    work, outcomes = _work(ctx, shipment_id)
    assert courier.calls == 1
    assert work.status == "failed"
    assert (work.last_error or "").startswith("unrecorded:")
    assert "booked BK-1 (tracking 1Z0000000001)" in (work.last_error or "")
    assert outcomes == ["failed"]


def test_customs_goods_fit_an_invoice_and_us_exports_name_their_filing() -> None:
    from pydantic import ValidationError

    from adapters.couriers.easypost_booking import _customs_info
    from hub.products.schemas import CustomsGoods

    assert REQ.goods is not None
    with pytest.raises(ValidationError, match="3 invoice lines"):  # 105 characters, 4 lines once wrapped
        CustomsGoods(
            description="Cryopreserved autologous leukapheresis material " * 2 + "nitrogen", hs_code="3002.90", value=1
        )
    assert _customs_info(REQ.goods, ORIGIN, 10)["eel_pfc"] == "NOEEI 30.37(a)"  # 100 USD
    assert "eel_pfc" not in _customs_info(REQ.goods, DEST, 10)  # not a US export
    costly = REQ.goods.model_copy(update={"value": 5000})
    with pytest.raises(PartnerCallError, match="EEI filing") as refused:
        _customs_info(costly, ORIGIN, 10)
    assert refused.value.code == "config"
    filed = costly.model_copy(update={"us_export_filing": "AES X20261125123456"})
    assert _customs_info(filed, ORIGIN, 10)["eel_pfc"] == "AES X20261125123456"


@respx.mock
def test_ups_sends_no_invoice_within_one_country() -> None:
    respx.post("https://ups.test/security/v1/oauth/token").mock(return_value=httpx.Response(200, json=TOKEN))
    ship = respx.post("https://ups.test/api/shipments/v2409/ship").mock(return_value=httpx.Response(200, json=SHIPPED))
    domestic = replace(REQ, destination_address=DEST.model_copy(update={"country": "US", "state": "NY"}), goods=None)
    asyncio.run(_ups().book(domestic))
    shipment = json.loads(ship.calls[0].request.content)["ShipmentRequest"]["Shipment"]
    assert "ShipmentServiceOptions" not in shipment
    assert shipment["Description"] == "apheresis"


def test_a_second_worker_never_takes_a_booking_still_in_flight(ctx: HubContext) -> None:
    # Production's geometry scaled to seconds: UPS may take longer (max_call_s) than the shortest claim.
    courier = _Courier(delay=1.5, max_call_s=5)
    a, shipment_id = _leg(ctx, courier, claim_s=0.5)
    b = OutboundDispatcher(ctx.store, ctx.partners, a.ports, Policy(), claim_s=0.5)

    async def two_workers() -> None:
        first = asyncio.create_task(a.run_once())
        while courier.calls == 0:  # A has claimed the leg and sent the ship call
            await asyncio.sleep(0.01)
        await asyncio.sleep(0.6)  # past the shortest claim, A still waiting for the courier
        assert await b.run_once() == 0
        await first

    asyncio.run(two_workers())
    work, outcomes = _work(ctx, shipment_id)
    s = ctx.store.read(lambda x: LogisticsRepository.from_session(x).shipment(shipment_id))
    assert (s.status, s.tracking_number) == ("booked", "1Z0000000001")
    assert (work.status, outcomes, courier.calls) == ("done", ["ok"], 1)


def test_an_answer_after_the_claim_was_lost_is_kept_and_alerted(ctx: HubContext) -> None:
    courier = _Courier(delay=0.5)
    a, shipment_id = _leg(ctx, courier)
    b = OutboundDispatcher(ctx.store, ctx.partners, a.ports, Policy())

    async def stalled_worker() -> None:
        first = asyncio.create_task(a.run_once())
        while courier.calls == 0:
            await asyncio.sleep(0.01)
        # A stalls past its claim (what an expired claim looks like), B takes the leg and, finding
        # the call in flight, fails it for a person to check.
        ctx.store.run(
            lambda w: setattr(
                LogisticsRepository.from_session(w.session).work(_work(ctx, shipment_id)[0].id), "claimed_until", None
            )
        )
        assert await b.run_once() == 1
        await first  # then UPS answers A: it did book

    asyncio.run(stalled_worker())
    work, outcomes = _work(ctx, shipment_id)
    assert courier.calls == 1
    assert work.status == "failed"  # B's outcome stands; A did not mark the item done over it
    assert (work.last_error or "").startswith("ambiguous:")
    assert outcomes == ["late", "failed"]  # A's answer is kept on its own attempt
    (late,) = ctx.store.read(
        lambda x: [a.detail for a in LogisticsRepository.from_session(x).attempts(work.id) if a.outcome == "late"]
    )
    assert "booked BK-1 (tracking 1Z0000000001)" in late
    kinds = alert_kinds(ctx.store)
    assert "shipment.booking-failed" in kinds
    assert "shipment.booking-unrecorded" in kinds  # "register 1Z0000000001, do not book again"
