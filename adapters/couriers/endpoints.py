"""Courier webhooks: ``POST /webhooks/couriers/{partner}`` and ``…/{partner}/telemetry``.

The signature is verified in a dependency, before the handler runs, with the scheme and secrets
the partner's profile names; a partner without a configured secret has its endpoint *disabled*
(503, so the courier retries once it is configured), never open. A verified delivery is stored in
the inbox and announced on the bus in one unit of work; the 202 goes out only after that COMMIT.
Mapping the courier's codes and acting on them continues from the bus
(``adapters/couriers/consumer.py``). A repeated event id gets the first answer and changes nothing.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from contextlib import aclosing
from dataclasses import dataclass

from fastapi import APIRouter, Request, Response

from adapters.couriers.dialects import PARSERS, Delivery, Telemetry, parse_telemetry
from adapters.couriers.mapping import load_mapping
from adapters.couriers.signatures import StaleWebhook, Verified, verify
from adapters.registry import CourierWebhook
from hub import canonical
from hub.api.deps import app_context
from hub.api.direct import direct
from hub.api.metrics import WEBHOOK_REFUSED
from hub.api.outcomes import problem_for
from hub.context import HubContext
from hub.db.models import InboxMessage
from hub.db.uow import Work
from hub.errors import AuthenticationFailed, Conflict, HubError, NotFound, ValidationFailed
from hub.events import EventType, InboundReceived
from hub.logistics.service import raise_alert
from hub.messaging.inbox import InboxOutcome, InboxStatus, Interpretation, receive
from hub.partners.loader import resolve_secret

log = logging.getLogger(__name__)
router = APIRouter(prefix="/webhooks/couriers", tags=["couriers"])
_REFUSAL_LOG_EVERY_S = 60.0
_refusal_log: dict[tuple[str, str], tuple[float, int]] = {}
CHANNEL = "courier-webhook"
TELEMETRY = "courier-telemetry"
MAX_BODY = 1_000_000
_SECRET_TTL_S = 30.0
_secret_cache: dict[str, tuple[float, str | None]] = {}


class EndpointDisabled(HubError):
    def __init__(self, partner: str) -> None:
        super().__init__(
            f"the webhook endpoint of {partner} is disabled: no secret is configured",
            status=503,
            fhir_code="transient",
            retryable=True,
        )


class TooLarge(HubError):
    def __init__(self) -> None:
        super().__init__(f"webhook body larger than {MAX_BODY} bytes", status=413, fhir_code="too-costly")


def _secret(reference: str | None) -> str | None:
    """Resolve a secret reference, cached briefly (a file secret is not re-read per request; a
    rotated secret is picked up within the TTL)."""
    if reference is None:
        return None
    now = time.monotonic()
    hit = _secret_cache.get(reference)
    if hit is not None and now - hit[0] < _SECRET_TTL_S:
        return hit[1]
    value = resolve_secret(reference)
    _secret_cache[reference] = (now, value)
    return value


def clear_secret_cache() -> None:
    _secret_cache.clear()


def _refused(partner: str, reason: str, detail: str) -> None:
    """Count a refused delivery and tell the operator which partner and why: a secret rotated at
    the courier but not here refuses every delivery, and the request log names only the route.
    One log line per partner and reason a minute (with the count since), so a flood of forged
    calls cannot flood the log."""
    WEBHOOK_REFUSED.labels(partner, reason).inc()
    now = time.monotonic()
    last, count = _refusal_log.get((partner, reason), (-_REFUSAL_LOG_EVERY_S, 0))
    count += 1
    if now - last < _REFUSAL_LOG_EVERY_S:
        _refusal_log[(partner, reason)] = (last, count)
        return
    _refusal_log[(partner, reason)] = (now, 0)
    log.warning(
        "courier webhook from %s refused (%s): %s; %d refusal(s) of this kind in the last minute%s",
        partner,
        reason,
        detail,
        count,
        " - is the partner's secret in its profile the one it signs with?" if reason != "stale" else "",
    )


@dataclass(frozen=True)
class VerifiedDelivery:
    partner: str
    channel: CourierWebhook
    raw: bytes
    verified: Verified
    idempotency_key: str | None


def channel_of(ctx: HubContext, partner: str) -> CourierWebhook:
    profile = ctx.partners.get(partner)
    channels = [c for c in (profile.channels_of("courier-webhook") if profile else []) if isinstance(c, CourierWebhook)]
    if profile is None or not channels:
        raise NotFound(f"no courier webhook endpoint for {partner!r}")
    return channels[0]


async def verified_delivery(partner: str, request: Request, ctx: HubContext) -> VerifiedDelivery:
    """The raw body of a delivery whose signature (or token) holds.

    Called by the routes themselves rather than declared as a FastAPI dependency: on the
    highest-rate endpoint, FastAPI's dependency resolution (sub-dependencies, cache keys, scopes)
    was a fifth of the server's time per webhook (py-spy, bench/courier_webhooks.py); the routes
    take only ``partner`` and ``request``, like the bare baseline route."""
    channel = channel_of(ctx, partner)
    profile = ctx.partners.get(partner)
    assert profile is not None
    names = (channel.secret, *channel.rotation_secrets)
    secrets = [s for s in (_secret(profile.secrets.get(n)) for n in names) if s]
    if not secrets:
        _refused(partner, "disabled", "no secret is configured")
        raise EndpointDisabled(partner)
    declared = request.headers.get("content-length")
    if declared is not None and (not declared.isdigit() or int(declared) > MAX_BODY):
        raise TooLarge()
    chunks: list[bytes] = []
    size = 0
    async with aclosing(request.stream()) as stream:
        async for chunk in stream:  # a chunked body is refused as soon as it passes the cap
            size += len(chunk)
            if size > MAX_BODY:
                raise TooLarge()
            chunks.append(chunk)
    raw = b"".join(chunks)
    try:
        for name, value in channel.require_headers.items():
            if request.headers.get(name) != value:
                raise AuthenticationFailed(f"header {name} is missing or wrong")
        verified = verify(
            channel.scheme,
            request.headers,
            raw,
            secrets,
            now=int(time.time()),
            tolerance_s=channel.tolerance_s,
            header=channel.header,
        )
    except AuthenticationFailed as exc:
        _refused(partner, "stale" if isinstance(exc, StaleWebhook) else "signature", exc.message)
        raise
    key = request.headers.get("idempotency-key")
    return VerifiedDelivery(partner, channel, raw, verified, key[:200] if key else None)


def _answer(outcome: InboxOutcome) -> Response:
    status = outcome.error.status if outcome.error is not None else 202
    if outcome.status is InboxStatus.rejected and outcome.error is None:
        status = _stored_status(outcome.response)  # a repeat of a refused delivery: refused the same way
    if outcome.status is InboxStatus.failed:
        status = 503
    media = "application/problem+json" if status >= 400 else "application/json"
    return Response(outcome.response or b"{}", status_code=status, media_type=media)


def _stored_status(response: bytes | None) -> int:
    """The status of a stored refusal (its problem JSON carries it)."""
    try:
        status = json.loads(response or b"{}").get("status")
    except (ValueError, AttributeError):
        return 422
    return status if isinstance(status, int) and 400 <= status < 500 else 422


def _render_error(error: HubError | None, exc: Exception) -> bytes:
    if error is None:
        return canonical.dumpb({"status": 503, "title": "internal error; retry later"})
    return canonical.dumpb(problem_for(error))


def _render_conflict(existing: InboxMessage) -> bytes:
    return canonical.dumpb(
        {"status": "conflict", "detail": "this event id was already used for other content; kept for review"}
    )


async def _store(
    ctx: HubContext,
    d: VerifiedDelivery,
    channel: str,
    external_id: str,
    interpret: Callable[[Work, str], Interpretation],
    message_type: str,
) -> Response:
    def job(work: Work) -> InboxOutcome:
        outcome = receive(
            work,
            partner=d.partner,
            channel=channel,
            external_id=external_id,
            raw=d.raw,
            interpret=interpret,
            render_error=_render_error,
            render_conflict=_render_conflict,
            message_type=message_type,
            interpret_writes=False,  # both interpretations only emit an event: no savepoint needed
        )
        if outcome.status is InboxStatus.conflict and not outcome.duplicate:
            raise_alert(
                work,
                None,
                "warning",
                "courier.event-id-conflict",
                f"{d.partner} reused event id {external_id[:64]} for different content (inbox {outcome.message_id})",
            )
        return outcome

    try:
        outcome = await ctx.store.run_async(job, actor=f"courier:{d.partner}")
    except Conflict:
        # Another process stored the same event id between our check and insert: ask again,
        # now the stored answer is found (a repeat is answered like the first delivery).
        outcome = await ctx.store.run_async(job, actor=f"courier:{d.partner}")
    return _answer(outcome)


class MappingMissing(HubError):
    def __init__(self, name: str) -> None:
        super().__init__(f"courier mapping {name} is not configured", status=503, fhir_code="transient", retryable=True)


@router.post("/{partner}", status_code=202, summary="Courier tracking webhook (signature verified first)")
@direct
async def courier_webhook(partner: str, request: Request) -> Response:
    ctx = app_context(request)
    delivery = await verified_delivery(partner, request, ctx)
    try:
        mapping = load_mapping(ctx.settings.mappings_dir, delivery.channel.mapping)
    except (OSError, ValueError):
        raise MappingMissing(delivery.channel.mapping) from None
    parsed: Delivery | None = None
    problem: ValidationFailed | None = None
    try:
        parsed = PARSERS[mapping.format](delivery.raw, delivery.verified.webhook_id)
    except ValidationFailed as exc:
        problem = exc
    external_id = parsed.external_id if parsed else (delivery.verified.webhook_id or canonical.sha256_hex(delivery.raw))

    def interpret(work: Work, message_id: str) -> Interpretation:
        if problem is not None or parsed is None:
            raise problem or ValidationFailed("unreadable webhook")
        if not parsed.relevant or not parsed.events:
            body = {"status": "ignored", "detail": f"{parsed.kind or 'event'} is not a shipment status event"}
            return Interpretation(InboxStatus.ignored, canonical.dumpb(body), message_type=parsed.kind[:64])
        aggregate = f"{delivery.partner}:{parsed.tracking_number}"[:64]
        work.emit(
            EventType.COURIER_WEBHOOK_RECEIVED,
            aggregate,
            InboundReceived(partner=delivery.partner, channel=CHANNEL, inbox_message_id=message_id),
        )
        body = {"status": "accepted", "message_id": message_id}
        return Interpretation(InboxStatus.received, canonical.dumpb(body), message_type=parsed.kind[:64])

    return await _store(ctx, delivery, CHANNEL, external_id, interpret, parsed.kind[:64] if parsed else "unreadable")


@router.post("/{partner}/telemetry", status_code=202, summary="Batches of logger readings for a shipment")
@direct
async def courier_telemetry(partner: str, request: Request) -> Response:
    ctx = app_context(request)
    delivery = await verified_delivery(partner, request, ctx)
    parsed: Telemetry | None = None
    problem: ValidationFailed | None = None
    try:
        parsed = parse_telemetry(delivery.raw, delivery.idempotency_key or delivery.verified.webhook_id)
    except ValidationFailed as exc:
        problem = exc
    external_id = parsed.external_id if parsed else canonical.sha256_hex(delivery.raw)

    def interpret(work: Work, message_id: str) -> Interpretation:
        if problem is not None or parsed is None:
            raise problem or ValidationFailed("unreadable telemetry")
        work.emit(
            EventType.TELEMETRY_RECEIVED,
            f"{delivery.partner}:{parsed.tracking_number}"[:64],
            InboundReceived(partner=delivery.partner, channel=TELEMETRY, inbox_message_id=message_id),
        )
        body = {"status": "accepted", "message_id": message_id, "readings": len(parsed.readings)}
        return Interpretation(InboxStatus.received, canonical.dumpb(body), message_type="telemetry")

    return await _store(ctx, delivery, TELEMETRY, external_id, interpret, "telemetry")
