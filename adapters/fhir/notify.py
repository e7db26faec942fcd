"""R4 rest-hook Subscriptions on a partner's orders: a bus consumer records what is owed, a worker
delivers it.

* The consumer ``fhir-subscriptions`` handles every ``order.*`` event. For each partner taking part
  in the order it looks up that partner's active Subscriptions (criteria ``ServiceRequest[?…]`` or
  ``Task[?…]``), matches the criteria against the order's ServiceRequest or the Tasks the event's
  transaction changed, and writes one ``subscription_delivery`` row per match, in the consumer's
  unit of work (so it is idempotent with the consumer's record).
* The worker (one per database, by lease) POSTs due deliveries to the Subscription's endpoint with
  the resource's *current* version as ``application/fhir+json`` (no payload: an empty ping), signed
  with Standard Webhooks (``webhook-id`` = delivery id, so receivers can dedupe), plus the
  Subscription's own ``channel.header`` lines. Each attempt is a row in ``subscription_attempt``.
  Non-2xx or a network error: retried with capped exponential backoff; after ``MAX_ATTEMPTS`` the
  delivery is ``failed``, a ``subscription.delivery_failed`` event and a warning alert are raised.
  A pending delivery for which a newer one (same subscription and resource) exists is ``skipped``:
  the newer one carries the current state anyway.
* ``replay`` puts a failed (or any finished) delivery back in the queue; audited.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any
from urllib.parse import parse_qsl

import httpx
from sqlalchemy import and_, insert, select, update

from adapters.fhir.webhooks import Attempt, post, signed_headers
from hub.api.auth import smart_settings_of
from hub.api.subscription_channel import header_line
from hub.db import leases
from hub.db.models import OrderParticipant, Resource, SearchReference
from hub.db.models_fhirapi import ResourceOwner, SubscriptionAttempt, SubscriptionDelivery
from hub.db.uow import Store, Work
from hub.errors import NotFound
from hub.events import AlertRaised, Envelope, EventType, SubscriptionDeliveryFailed
from hub.fhirstore.repository import ResourceRepository, SearchParam, Stored, search_conditions
from hub.messaging.consumers import Consumer
from hub.partners.loader import PartnerDirectory, resolve_secret

log = logging.getLogger(__name__)
MAX_ATTEMPTS = 8
BACKOFF_BASE_S = 2.0
BACKOFF_MAX_S = 300.0
LEASE = "fhir-subscription-delivery"


def backoff(attempt: int, base: float = BACKOFF_BASE_S, cap: float = BACKOFF_MAX_S) -> float:
    return float(min(cap, base * (2 ** (attempt - 1))))


# --------------------------------------------------------------------------- the consumer
def _criteria(sub: dict[str, Any]) -> tuple[str, list[SearchParam]]:
    rtype, _, query = str(sub.get("criteria") or "").partition("?")
    return rtype, [SearchParam(k, v) for k, v in parse_qsl(query, keep_blank_values=True)]


def _active_subscriptions(work: Work, partners: list[str]) -> list[tuple[str, Stored]]:
    if not partners:
        return []
    rows = work.session.execute(
        select(ResourceOwner.partner_id, Resource.id)
        .join(
            Resource,
            and_(Resource.resource_type == ResourceOwner.resource_type, Resource.id == ResourceOwner.resource_id),
        )
        .where(
            ResourceOwner.resource_type == "Subscription",
            ResourceOwner.partner_id.in_(partners),
            Resource.deleted.is_(False),
        )
    ).all()
    repo = ResourceRepository.from_session(work.session)
    out = []
    for partner, sid in rows:
        stored = repo.read("Subscription", sid)
        if stored.content.get("status") == "active":
            out.append((partner, stored))
    return out


def _matches(work: Work, rtype: str, params: list[SearchParam], rid: str) -> bool:
    stmt = select(Resource.id).where(
        Resource.resource_type == rtype, Resource.id == rid, *search_conditions(rtype, params)
    )
    return work.session.execute(stmt).first() is not None


def _focus(work: Work, rtype: str, order_id: str, at: datetime) -> list[str]:
    if rtype == "ServiceRequest":
        return [order_id]
    # Tasks of this order changed by the transaction that emitted the event (same clock reading).
    rows = work.session.execute(
        select(Resource.id)
        .join(
            SearchReference,
            and_(SearchReference.resource_type == Resource.resource_type, SearchReference.id == Resource.id),
        )
        .where(
            Resource.resource_type == "Task",
            SearchReference.param == "basedOn",
            SearchReference.target == f"ServiceRequest/{order_id}",
            Resource.last_updated == at,
        )
        .order_by(Resource.id)
    ).scalars()
    return list(rows)


def record_notifications(work: Work, envelope: Envelope) -> None:
    order_id = envelope.aggregate_id
    participants = sorted(
        set(
            work.session.execute(
                select(OrderParticipant.partner_id).where(OrderParticipant.order_id == order_id)
            ).scalars()
        )
    )
    rows = []
    for partner, sub in _active_subscriptions(work, participants):
        rtype, params = _criteria(sub.content)
        if rtype not in ("ServiceRequest", "Task"):
            continue
        for rid in _focus(work, rtype, order_id, envelope.occurred_at):
            if params and not _matches(work, rtype, params, rid):
                continue
            rows.append(
                {
                    "id": str(uuid.uuid4()),
                    "subscription_id": sub.id,
                    "partner_id": partner,
                    "event_id": envelope.event_id,
                    "event_type": envelope.type,
                    "order_id": order_id,
                    "focus": f"{rtype}/{rid}",
                    "status": "pending",
                    "attempts": 0,
                    "next_attempt_at": work.now,
                    "created_at": work.now,
                    "finished_at": None,
                    "last_error": None,
                }
            )
    if rows:
        work.session.execute(insert(SubscriptionDelivery), rows)


CONSUMERS = [Consumer("fhir-subscriptions", ("order.*",), record_notifications)]


# --------------------------------------------------------------------------- the worker
@dataclass(frozen=True)
class Due:
    delivery: SubscriptionDelivery
    endpoint: str
    body: bytes
    headers: dict[str, str]
    secret: str | None
    problem: str | None = None  # why it cannot be sent at all (recorded as a failed attempt)


@dataclass
class DeliveryWorker:
    store: Store
    partners: PartnerDirectory
    poll_s: float = 1.0
    batch: int = 50
    max_attempts: int = MAX_ATTEMPTS
    backoff_base_s: float = BACKOFF_BASE_S
    backoff_max_s: float = BACKOFF_MAX_S
    transport: httpx.AsyncBaseTransport | None = None
    holder: str = ""

    def __post_init__(self) -> None:
        self.holder = self.holder or leases.holder_name(self)

    async def run(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            try:
                done = await self.run_once()
            except Exception as exc:  # keep delivering; the store may be briefly unavailable
                log.warning("subscription delivery round failed: %s", type(exc).__name__)
                done = 0
            if done == 0:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), timeout=self.poll_s)
        try:
            await self.release_lease()
        except Exception as exc:
            log.warning("subscription delivery: could not release its lease (it will expire): %s", type(exc).__name__)

    async def release_lease(self) -> None:
        """Give the lease up on shutdown, as the relay and the HL7 sender do: a hub started next (or
        another process) delivers at once instead of waiting for it to expire (30 s or more)."""
        await self.store.run_async(leases.release(self.holder, LEASE), actor="fhir-notify")

    async def run_once(self) -> int:
        """One round: take the lease, deliver what is due. Returns the number of attempts made."""
        if not await self.store.run_async(self._lease_job(), actor="fhir-notify"):
            return 0
        due = await self.store.run_async(self._due_job(), actor="fhir-notify")
        if not due:
            return 0
        async with httpx.AsyncClient(transport=self.transport) as client:
            results = await asyncio.gather(*(self._deliver(client, d) for d in due))
        await self.store.run_async(self._record_job(list(zip(due, results, strict=True))), actor="fhir-notify")
        return len(due)

    async def _deliver(self, client: httpx.AsyncClient, due: Due) -> Attempt:
        if due.problem is not None:
            return Attempt(None, 0, due.problem, None)
        if due.secret is None:
            return Attempt(None, 0, "no webhook signing secret configured; not sent", None)
        try:
            headers = {**due.headers, **signed_headers(due.secret, due.delivery.id, due.body)}
            return await post(client, due.endpoint, due.body, headers)
        except Exception as exc:
            # One delivery must never sink the round: an exception here (an invalid secret, a
            # header or URL the HTTP client cannot send) would skip _record_job, and every other
            # delivery of the batch, already POSTed, would be sent again on the next poll.
            log.warning("subscription delivery %s not sent: %s", due.delivery.id, type(exc).__name__)
            return Attempt(None, 0, f"not sent: {type(exc).__name__}", None)

    def _lease_job(self) -> Callable[[Work], bool]:
        return leases.take(LEASE, self.holder, max(30.0, self.poll_s * 10))

    def _due_job(self) -> Callable[[Work], list[Due]]:
        def job(work: Work) -> list[Due]:
            rows = list(
                work.session.execute(
                    select(SubscriptionDelivery)
                    .where(SubscriptionDelivery.status == "pending", SubscriptionDelivery.next_attempt_at <= work.now)
                    .order_by(SubscriptionDelivery.next_attempt_at, SubscriptionDelivery.created_at)
                    .limit(self.batch)
                ).scalars()
            )
            repo = ResourceRepository.from_session(work.session)
            out: list[Due] = []
            for d in rows:
                newer = work.session.execute(
                    select(SubscriptionDelivery.id).where(
                        SubscriptionDelivery.subscription_id == d.subscription_id,
                        SubscriptionDelivery.focus == d.focus,
                        SubscriptionDelivery.status == "pending",
                        SubscriptionDelivery.created_at > d.created_at,
                    )
                ).first()
                try:
                    sub = repo.read("Subscription", d.subscription_id)
                except NotFound:
                    sub = None
                if newer is not None or sub is None or sub.content.get("status") != "active":
                    d.status, d.finished_at = "skipped", work.now
                    d.last_error = "superseded by a newer notification" if newer else "subscription no longer active"
                    continue
                channel = sub.content.get("channel") or {}
                rtype, _, rid = d.focus.partition("/")
                body = b""
                if channel.get("payload"):
                    try:
                        body = repo.read(rtype, rid).text.encode()
                    except NotFound:
                        d.status, d.finished_at, d.last_error = "skipped", work.now, "resource gone"
                        continue
                headers = {
                    "Content-Type": str(channel.get("payload") or "application/fhir+json"),
                    "X-CGT-Event-Type": d.event_type,
                    "X-CGT-Subscription": f"Subscription/{d.subscription_id}",
                    "X-CGT-Focus": d.focus,
                }
                problem = None
                try:  # checked at creation; a Subscription stored before that check may still hold one
                    headers.update(header_line(line) for line in channel.get("header") or [])
                except ValueError as exc:
                    problem = f"not sent: Subscription.channel.header: {exc}"
                secret = self._secret(d.partner_id)
                out.append(Due(d, str(channel.get("endpoint")), body, headers, secret, problem))
            return out

        return job

    def _secret(self, partner_id: str) -> str | None:
        smart = smart_settings_of(self.partners, partner_id)
        profile = self.partners.get(partner_id)
        if smart is None or profile is None or not smart.webhook_secret:
            return None
        reference = profile.secrets.get(smart.webhook_secret)
        return resolve_secret(reference) if reference else None

    def _record_job(self, results: list[tuple[Due, Attempt]]) -> Callable[[Work], None]:
        def job(work: Work) -> None:
            for due, attempt in results:
                d = work.session.get(SubscriptionDelivery, due.delivery.id)
                if d is None or d.status != "pending":
                    continue
                d.attempts += 1
                work.session.execute(
                    insert(SubscriptionAttempt).values(
                        id=str(uuid.uuid4()),
                        delivery_id=d.id,
                        attempt=d.attempts,
                        at=work.now,
                        status_code=attempt.status_code,
                        duration_ms=attempt.duration_ms,
                        error=attempt.error,
                        response_excerpt=attempt.excerpt,
                    )
                )
                if attempt.ok:
                    d.status, d.finished_at, d.last_error = "delivered", work.now, None
                    continue
                d.last_error = attempt.error or f"HTTP {attempt.status_code}"
                if d.attempts >= self.max_attempts:
                    d.status, d.finished_at = "failed", work.now
                    log.warning("subscription delivery %s failed after %d attempts", d.id, d.attempts)
                    aggregate = d.order_id or d.subscription_id
                    work.emit(
                        EventType.SUBSCRIPTION_DELIVERY_FAILED,
                        aggregate,
                        SubscriptionDeliveryFailed(
                            delivery_id=d.id,
                            subscription_id=d.subscription_id,
                            partner_id=d.partner_id,
                            order_id=d.order_id,
                            attempts=d.attempts,
                        ),
                    )
                    work.emit(
                        EventType.ALERT_RAISED,
                        aggregate,
                        AlertRaised(
                            order_id=d.order_id,
                            severity="warning",
                            kind="subscription.delivery-failed",
                            message=f"notification {d.id} to {d.partner_id} failed after {d.attempts} attempts",
                        ),
                    )
                else:
                    wait = backoff(d.attempts, self.backoff_base_s, self.backoff_max_s)
                    d.next_attempt_at = work.now + timedelta(seconds=wait)

        return job


def replay(store: Store, delivery_id: str, *, actor: str = "operator") -> None:
    """Queue a finished delivery again (e.g. after the partner fixed its endpoint)."""

    def job(work: Work) -> None:
        d = work.session.get(SubscriptionDelivery, delivery_id)
        if d is None:
            raise NotFound(f"delivery {delivery_id} is not known")
        old = {"status": d.status, "attempts": d.attempts}
        work.session.execute(
            update(SubscriptionDelivery)
            .where(SubscriptionDelivery.id == delivery_id)
            .values(status="pending", attempts=0, next_attempt_at=work.now, finished_at=None)
        )
        work.audit(
            "update",
            "SubscriptionDelivery",
            delivery_id,
            old=old,
            new={"status": "pending", "attempts": 0},
            reason="replayed",
        )

    store.run(job, actor=actor)
