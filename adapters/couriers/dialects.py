"""Courier webhook dialects: raw bytes → the courier's own codes, times and readings.

A dialect only reads what the courier sent; what a code *means* is the mapping's business
(``mappings/couriers/*.yaml``). Each event carries its code candidates, most specific first
(EasyPost: carrier code, ``status/status_detail``, ``status``; UPS: ``type/code``, ``type``);
the mapping picks the first it knows. Anything malformed is refused with a ValidationFailed (422),
never a crash.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson

from hub import canonical
from hub.errors import Issue, ValidationFailed
from hub.logistics.schemas import Reading

MAX_EVENTS = 500


@dataclass(frozen=True)
class RawEvent:
    candidates: tuple[str, ...]
    occurred_at: datetime
    eta: datetime | None = None
    location: str | None = None
    signed_by: str | None = None
    logger: str | None = None
    readings: tuple[Reading, ...] = ()


@dataclass(frozen=True)
class Delivery:
    """One webhook delivery: its event id (for the inbox), the shipment and its events."""

    external_id: str
    tracking_number: str | None
    kind: str  # what the courier says this is (tracker.updated, TrackingEvent, …)
    events: tuple[RawEvent, ...] = field(default_factory=tuple)
    relevant: bool = True  # False: understood, not about shipment status (acknowledged as ignored)


def _bad(message: str, where: str = "body") -> ValidationFailed:
    return ValidationFailed(message, [Issue(message, where)])


def _json(raw: bytes) -> dict[str, Any]:
    if len(raw) > 1_000_000:
        raise _bad("webhook body larger than 1 MB")
    try:
        data = orjson.loads(raw)
    except orjson.JSONDecodeError:
        raise _bad("webhook body is not JSON") from None
    if not isinstance(data, dict):
        raise _bad("webhook body is not a JSON object")
    return data


def _str(value: Any, where: str, *, required: bool = True, max_len: int = 128) -> str | None:
    if value is None or value == "":
        if required:
            raise _bad(f"{where} is missing", where)
        return None
    if not isinstance(value, str | int) or isinstance(value, bool):
        raise _bad(f"{where} is not a string", where)
    text = str(value).strip()
    if len(text) > max_len:
        raise _bad(f"{where} is longer than {max_len} characters", where)
    return text


def _instant(value: Any, where: str, *, required: bool = True) -> datetime | None:
    text = _str(value, where, required=required, max_len=40)
    if text is None:
        return None
    try:
        parsed = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise _bad(f"{where} is not an ISO 8601 instant", where) from None
    if parsed.tzinfo is None:
        raise _bad(f"{where} has no time zone", where)
    return _in_range(parsed, where).astimezone(UTC)


def _in_range(at: datetime, where: str) -> datetime:
    """Courier times fall in 2000–2100; outside (year 0001 say), the value would overflow later."""
    if not datetime(2000, 1, 1, tzinfo=UTC) <= at <= datetime(2100, 1, 1, tzinfo=UTC):
        raise _bad(f"{where} is out of range", where)
    return at


def _readings(value: Any, where: str) -> tuple[Reading, ...]:
    if value is None:
        return ()
    if not isinstance(value, list) or len(value) > 10_000:
        raise _bad(f"{where} must be a list of at most 10000 readings", where)
    out = []
    for i, item in enumerate(value):
        if not isinstance(item, dict):
            raise _bad(f"{where}[{i}] is not an object", where)
        at = _instant(item.get("at"), f"{where}[{i}].at")
        assert at is not None
        try:
            out.append(Reading(at=at, temperature_c=item.get("temperature_c"), ln2_percent=item.get("ln2_percent")))
        except ValueError:
            raise _bad(f"{where}[{i}] has an impossible value", where) from None
    return tuple(out)


def _location(parts: list[Any]) -> str | None:
    words = [str(p).strip() for p in parts if isinstance(p, str | int) and str(p).strip()]
    return " ".join(words)[:128] or None


# --------------------------------------------------------------------------- hub / Standard Webhooks JSON
def parse_standard(raw: bytes, webhook_id: str | None) -> Delivery:
    """``{"type": "shipment.updated", "data": {tracking_number, code, occurred_at, eta?, location?,
    signed_by?, logger?, readings?}}`` — what couriers that adopt Standard Webhooks send us."""
    body = _json(raw)
    kind = _str(body.get("type"), "type", max_len=64)
    data = body.get("data")
    if not isinstance(data, dict):
        raise _bad("data is missing", "data")
    external = webhook_id or canonical.sha256_hex(raw)
    if kind not in ("shipment.updated", "shipment.created"):
        return Delivery(external, None, kind or "", relevant=False)
    tracking = _str(data.get("tracking_number"), "data.tracking_number", max_len=64)
    code = _str(data.get("code"), "data.code", max_len=64)
    at = _instant(data.get("occurred_at"), "data.occurred_at")
    assert code is not None
    assert at is not None
    event = RawEvent(
        candidates=(code,),
        occurred_at=at,
        eta=_instant(data.get("eta"), "data.eta", required=False),
        location=_str(data.get("location"), "data.location", required=False),
        signed_by=_str(data.get("signed_by"), "data.signed_by", required=False),
        logger=_str(data.get("logger"), "data.logger", required=False, max_len=64),
        readings=_readings(data.get("readings"), "data.readings"),
    )
    return Delivery(external, tracking, kind or "", (event,))


# --------------------------------------------------------------------------- EasyPost
def parse_easypost(raw: bytes, webhook_id: str | None) -> Delivery:
    body = _json(raw)
    event_id = _str(body.get("id"), "id", max_len=128)
    description = _str(body.get("description"), "description", max_len=64) or ""
    assert event_id is not None
    if body.get("object") != "Event":
        raise _bad("not an EasyPost Event object", "object")
    if not description.startswith("tracker."):
        return Delivery(event_id, None, description, relevant=False)
    tracker = body.get("result")
    if not isinstance(tracker, dict):
        raise _bad("result (Tracker) is missing", "result")
    tracking = _str(tracker.get("tracking_code"), "result.tracking_code", max_len=64)
    carrier = _str(tracker.get("carrier"), "result.carrier", required=False, max_len=64) or ""
    eta = _instant(tracker.get("est_delivery_date"), "result.est_delivery_date", required=False)
    details = tracker.get("tracking_details") or []
    if not isinstance(details, list) or len(details) > MAX_EVENTS:
        raise _bad("result.tracking_details is not a list", "result.tracking_details")
    events: list[RawEvent] = []
    for i, d in enumerate(details):
        if not isinstance(d, dict):
            raise _bad(f"result.tracking_details[{i}] is not an object", "result.tracking_details")
        where = f"result.tracking_details[{i}]"
        status = _str(d.get("status"), f"{where}.status", max_len=64)
        detail = _str(d.get("status_detail"), f"{where}.status_detail", required=False, max_len=64)
        carrier_code = _str(d.get("carrier_code"), f"{where}.carrier_code", required=False, max_len=16)
        at = _instant(d.get("datetime"), f"{where}.datetime")
        assert status is not None
        assert at is not None
        loc_raw = d.get("tracking_location")
        loc: dict[str, Any] = loc_raw if isinstance(loc_raw, dict) else {}
        candidates = [f"{carrier}:{carrier_code}"] if carrier and carrier_code else []
        candidates += [f"{status}/{detail}"] if detail else []
        candidates.append(status)
        events.append(
            RawEvent(
                candidates=tuple(candidates),
                occurred_at=at,
                location=_location([loc.get("city"), loc.get("state"), loc.get("country")]),
            )
        )
    status = _str(tracker.get("status"), "result.status", max_len=64)
    assert status is not None
    updated = _instant(tracker.get("updated_at"), "result.updated_at", required=False)
    if not events and updated is not None:
        detail = _str(tracker.get("status_detail"), "result.status_detail", required=False, max_len=64)
        events.append(RawEvent(candidates=((f"{status}/{detail}",) if detail else ()) + (status,), occurred_at=updated))
    if events:
        last = events[-1]
        signed = _str(tracker.get("signed_by"), "result.signed_by", required=False)
        events[-1] = RawEvent(last.candidates, last.occurred_at, eta, last.location, signed, None, ())
    return Delivery(event_id, tracking, description, tuple(events))


# --------------------------------------------------------------------------- UPS Track Alert
def _ups_instant(date: Any, clock: Any, where: str) -> datetime | None:
    d = _str(date, where, required=False, max_len=8)
    if d is None:
        return None
    t = _str(clock, where, required=False, max_len=6) or "000000"
    try:
        at = datetime.strptime(d + t.ljust(6, "0"), "%Y%m%d%H%M%S").replace(tzinfo=UTC)
    except ValueError:
        raise _bad(f"{where} is not YYYYMMDD/HHMMSS", where) from None
    return _in_range(at, where)


def parse_ups(raw: bytes, webhook_id: str | None) -> Delivery:
    """UPS Track Alert ``TrackingEventRequest`` (UPSTrackAlert.yaml, webhooks.TrackingEvent). It has
    no event id: ours is tracking number + status + GMT activity time, so a repeat of the same
    activity is the same event."""
    body = _json(raw)
    tracking = _str(body.get("trackingNumber"), "trackingNumber", max_len=64)
    status = body.get("activityStatus")
    if not isinstance(status, dict):
        raise _bad("activityStatus is missing", "activityStatus")
    kind = _str(status.get("type"), "activityStatus.type", max_len=4)
    code = _str(status.get("code"), "activityStatus.code", required=False, max_len=8) or ""
    at = _ups_instant(body.get("gmtActivityDate"), body.get("gmtActivityTime"), "gmtActivity")
    if at is None:
        raise _bad("gmtActivityDate is missing", "gmtActivityDate")
    assert tracking is not None
    assert kind is not None
    scheduled = _ups_instant(body.get("scheduledDeliveryDate"), "235959", "scheduledDeliveryDate")
    loc_raw = body.get("activityLocation")
    loc: dict[str, Any] = loc_raw if isinstance(loc_raw, dict) else {}
    candidates = ((f"{kind}/{code}",) if code else ()) + (kind,)
    event = RawEvent(
        candidates=candidates,
        occurred_at=at,
        eta=scheduled if kind != "D" and scheduled is not None and scheduled > at - timedelta(days=1) else None,
        location=_location([loc.get("city"), loc.get("stateProvince"), loc.get("country")]),
        signed_by=_str(body.get("receivedBy"), "receivedBy", required=False),
    )
    external = f"{tracking}:{kind}{code}:{at:%Y%m%d%H%M%S}"
    return Delivery(external, tracking, "TrackingEvent", (event,))


# --------------------------------------------------------------------------- telemetry batches
@dataclass(frozen=True)
class Telemetry:
    external_id: str
    tracking_number: str
    logger: str
    readings: tuple[Reading, ...]


def parse_telemetry(raw: bytes, idempotency_key: str | None) -> Telemetry:
    """``{"tracking_number", "logger", "readings": [{"at", "temperature_c"?, "ln2_percent"?}]}``."""
    body = _json(raw)
    tracking = _str(body.get("tracking_number"), "tracking_number", max_len=64)
    logger = _str(body.get("logger"), "logger", max_len=64)
    readings = _readings(body.get("readings"), "readings")
    if not readings:
        raise _bad("readings is empty", "readings")
    assert tracking is not None
    assert logger is not None
    return Telemetry(idempotency_key or canonical.sha256_hex(raw), tracking, logger, readings)


PARSERS = {"standard": parse_standard, "easypost": parse_easypost, "ups-track-alert": parse_ups}
