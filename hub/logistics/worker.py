"""Background work of the logistics domain, run by the runtime next to the relay and consumers:

* :class:`OutboundDispatcher` performs the partner calls the core owes (``outbound_work``): book a
  courier, submit a customs declaration, poll its status. A call never happens inside a database
  transaction: the work item is claimed in one unit of work, the call is made, and its outcome is
  recorded (with one ``outbound_attempt`` row per attempt) in another. A claim lasts longer than the
  longest call the dispatcher lets run (plus a margin) and carries a token: an attempt that outlives
  its claim anyway (a stalled process) records what the partner answered, but leaves the work item
  to the attempt holding it now. Bookings carry the shipment's idempotency key, so a retry after a
  lost answer never books twice. Transient failures back off
  exponentially (capped), then fail terminally with a critical alert.
* :func:`sweep` raises due viability escalations, escalates open excursions of silent loggers and
  escalates unacknowledged alerts.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta
from functools import partial

from hub.alerts.service import AlertService
from hub.db.models_logistics import OutboundAttempt, OutboundWork
from hub.db.types import utcnow
from hub.db.uow import Store, Work
from hub.ids import uuid7
from hub.logistics.customs import CustomsService
from hub.logistics.policy import Policy
from hub.logistics.ports import (
    BookingClient,
    BookingRequest,
    BookingResult,
    CustomsClient,
    CustomsStatus,
    CustomsSubmission,
    PartnerCallError,
)
from hub.logistics.repository import LogisticsRepository
from hub.logistics.service import ShipmentService, leg_of, raise_alert
from hub.logistics.temperature import TemperatureService
from hub.logistics.viability import ViabilityService
from hub.orders.repository import OrderRepository
from hub.partners.loader import PartnerDirectory
from hub.products.registry import get_product

log = logging.getLogger(__name__)
# Around the call itself a claim also covers reading the request, marking a call that cannot be
# repeated as sent, and recording the outcome.
CLAIM_MARGIN = timedelta(seconds=60)


@dataclass
class Ports:
    booking: Callable[[str], BookingClient | None]
    customs: Callable[[str], CustomsClient | None]


def sweep(store: Store, policy: Policy, partners: PartnerDirectory) -> tuple[int, int, int]:
    """One pass of the viability clocks, the open excursions of silent loggers and the alert
    escalation (each in its own unit of work)."""
    raised = store.run(lambda w: ViabilityService(w, policy).sweep(), actor="sweep:viability")
    held = store.run(lambda w: TemperatureService(w, partners).escalate_overdue(), actor="sweep:cold-chain")
    escalated = store.run(lambda w: AlertService(w).escalate_due(policy), actor="sweep:alerts")
    return raised, held, escalated


@dataclass
class OutboundDispatcher:
    store: Store
    partners: PartnerDirectory
    ports: Ports
    policy: Policy
    call_timeout_s: float = 30.0
    # The shortest claim on a work item; a client that may take longer (``max_call_s``) gets its
    # bound plus CLAIM_MARGIN, so no other worker takes the item while the call can still answer.
    claim_s: float = 120.0

    async def run(
        self, stop: asyncio.Event, poll_s: float = 0.5, sweep_s: float = 30.0, max_backoff_s: float = 30.0
    ) -> None:
        """Passes every ``poll_s``. After a failed pass (the database down, say) the next waits
        twice as long as the last, up to ``max_backoff_s``, and the outage is logged once when it
        begins and once when it ends: it was an ERROR line every 0.5 s for as long as it lasted."""
        last_sweep = 0.0
        failures = 0
        while not stop.is_set():
            try:
                await self.run_once()
                if time.monotonic() - last_sweep >= sweep_s:
                    last_sweep = time.monotonic()
                    await asyncio.to_thread(sweep, self.store, self.policy, self.partners)
            except Exception as exc:  # the loop must survive a bad pass; the work stays pending
                failures += 1
                if failures == 1:
                    log.error(
                        "logistics dispatcher pass failed: %s; retrying with backoff up to %g s, "
                        "logged again when a pass succeeds",
                        type(exc).__name__,
                        max_backoff_s,
                    )
                else:
                    log.debug("logistics dispatcher pass %d in a row failed: %s", failures, type(exc).__name__)
            else:
                if failures:
                    log.warning("logistics dispatcher recovered after %d failed passes", failures)
                failures = 0
            wait = min(max_backoff_s, poll_s * 2 ** min(failures, 32)) if failures else poll_s
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), timeout=wait)

    async def run_once(self) -> int:
        """Perform every due work item once. Returns how many were attempted."""
        now = utcnow()
        due = await self.store.read_async(lambda s: LogisticsRepository.from_session(s).due_work(now))
        done = 0
        for item in due:
            hold = max(timedelta(seconds=self.claim_s), timedelta(seconds=self._limit(item)) + CLAIM_MARGIN)
            token = await self.store.run_async(_claim(item.id, hold), actor="dispatcher")
            if token is None:
                continue
            done += 1
            await self._perform(item, token)
        return done

    def _limit(self, item: OutboundWork) -> float:
        """How long one call of this item may run: the dispatcher's timeout, or the client's own bound
        when it declares one (``max_call_s``: its retries and backoff included) so that the
        dispatcher does not cut off a call the client would still have ended itself."""
        try:
            client: object = (
                self.ports.booking(item.partner) if item.kind == "booking" else self.ports.customs(item.partner)
            )
        except Exception:  # the attempt itself meets the same error and records it
            client = None
        return max(self.call_timeout_s, float(getattr(client, "max_call_s", 0.0)))

    async def _perform(self, item: OutboundWork, token: str) -> None:
        started = time.perf_counter()
        call = _Call(token)
        try:
            if item.kind == "booking":
                result = await self._book(item, call)
                call.answer = f"booked {result.booking_reference} (tracking {result.tracking_number})"
                await self._record(
                    item,
                    call,
                    started,
                    "ok",
                    f"booked {result.booking_reference} (tracking {result.tracking_number})",
                    lambda w: self._booked(w, item, result),
                )
            elif item.kind == "customs-submit":
                client, submission = await self._customs_submission(item, lodging=True)
                await asyncio.wait_for(asyncio.to_thread(client.submit, submission), self._limit(item))
                call.answer = f"declaration {submission.functional_reference} lodged"
                await self._record(
                    item,
                    call,
                    started,
                    "ok",
                    "declaration lodged",
                    lambda w: CustomsService(w, self.partners, self.policy).submitted(item.subject_id),
                )
            elif item.kind == "customs-poll":
                client, submission = await self._customs_submission(item)
                status = await asyncio.wait_for(
                    asyncio.to_thread(client.status, submission.functional_reference, submission.mrn),
                    self._limit(item),
                )
                effect = partial(self._polled, item=item, status=status)
                await self._record(item, call, started, "ok", f"status {status.status}", effect, keep=True)
            else:
                raise PartnerCallError(f"unknown outbound work kind {item.kind}", retryable=False)
        except PartnerCallError as exc:
            await self._failure(item, call, started, exc)
        except TimeoutError:
            late = PartnerCallError("the partner did not answer in time", retryable=True, code="timeout")
            await self._failure(item, call, started, late)
        except Exception as exc:  # a bug or an unexpected answer: keep the work, retry, never crash
            log.error("outbound %s %s failed: %s", item.kind, item.id, type(exc).__name__)
            await self._failure(item, call, started, _internal(item, call, exc))

    # ------------------------------------------------------------------ calls
    async def _book(self, item: OutboundWork, call: _Call) -> BookingResult:
        client = self.ports.booking(item.partner)
        if client is None:
            raise PartnerCallError(
                f"no booking channel configured for courier {item.partner}", retryable=False, code="config"
            )
        if not client.idempotent:
            # A call that cannot be repeated is marked as sent, durably, before it is made. A marker
            # still there at the next attempt means the hub stopped (crash, shutdown, lost
            # database) while the courier may have acted: never call again blindly.
            unanswered = await self.store.read_async(
                lambda s: [
                    a.attempt for a in LogisticsRepository.from_session(s).attempts(item.id) if a.outcome == "sent"
                ]
            )
            if unanswered:
                raise PartnerCallError(
                    f"attempt {unanswered[-1]} to book with {item.partner} was sent and never answered (the hub "
                    "stopped during it); the courier may have booked: check it, then register the shipment or book "
                    "again",
                    retryable=False,
                    code="ambiguous",
                )

        def request(session: object) -> BookingRequest:
            from sqlalchemy.orm import Session

            assert isinstance(session, Session)
            s = LogisticsRepository.from_session(session).shipment(item.subject_id)
            order = OrderRepository.from_session(session).get(s.order_id)
            leg = leg_of(get_product(order.product_code), s.leg_code)
            origin, destination = self.partners.get(s.origin), self.partners.get(s.destination)
            now = utcnow()
            return BookingRequest(
                idempotency_key=s.idempotency_key,
                shipment_id=s.id,
                reference=f"{order.coi}-{leg.code}",
                origin=s.origin,
                destination=s.destination,
                # The operator's requested time, unless it has passed (a courier refuses a pickup in the past).
                pickup_after=max(s.pickup_after or now, now),
                temperature_min_c=leg.temperature.min_c,
                temperature_max_c=leg.temperature.max_c,
                material=s.material,
                origin_name=origin.name if origin else s.origin,
                destination_name=destination.name if destination else s.destination,
                origin_address=origin.address if origin else None,
                destination_address=destination.address if destination else None,
                goods=leg.customs,
            )

        req = await self.store.read_async(request)
        if not client.idempotent:
            call.marker = await self.store.run_async(_mark_sent(item.id), actor=f"outbound:{item.partner}")
        try:
            return await asyncio.wait_for(client.book(req), self._limit(item))
        except TimeoutError:
            if client.idempotent:
                raise
            raise PartnerCallError(
                f"courier {item.partner} did not answer in time and its bookings are not idempotent: it may "
                f"have booked; check it for reference {req.reference}, then register the shipment or book again",
                retryable=False,
                code="ambiguous",
            ) from None

    async def _customs_submission(
        self, item: OutboundWork, *, lodging: bool = False
    ) -> tuple[CustomsClient, CustomsSubmission]:
        """The declaration as the client sends it. Lodging needs the declarant's EORI and the office of
        presentation from the profiles: without them it is refused before any call (a placeholder
        would be lodged with the authority as if it were a declarant)."""
        client = self.ports.customs(item.partner)
        if client is None:
            raise PartnerCallError(f"no customs channel configured for {item.partner}", retryable=False, code="config")

        def build(session: object) -> CustomsSubmission:
            from sqlalchemy.orm import Session

            assert isinstance(session, Session)
            repo = LogisticsRepository.from_session(session)
            decl = repo.declaration(item.subject_id)
            s = repo.shipment(decl.shipment_id)
            courier = self.partners.get(s.courier)
            authority = self.partners.get(decl.partner)
            eori = (courier.identifiers.get("eori") if courier else None) or ""
            office = (authority.identifiers.get("office") if authority else None) or ""
            missing = (
                [f"courier {s.courier}'s EORI (identifiers.eori: the person presenting the goods)"] if not eori else []
            )
            missing += [f"{decl.partner}'s customs office (identifiers.office)"] if not office else []
            if lodging and missing:
                raise PartnerCallError(
                    f"declaration {decl.functional_reference} (shipment {s.id}) cannot be lodged without "
                    f"{' and '.join(missing)}: add it to the partner profile and restart the hub, then lodge "
                    f"the declaration with {decl.partner} (the hub does not lodge it again by itself)",
                    retryable=False,
                    code="config",
                )
            return CustomsSubmission(
                functional_reference=decl.functional_reference,
                declarant_eori=eori,
                customs_office=office,
                presented_at=s.eta or utcnow(),
                mrn=decl.mrn,
            )

        return client, await self.store.read_async(build)

    # ------------------------------------------------------------------ outcomes
    def _booked(self, work: Work, item: OutboundWork, result: BookingResult) -> None:
        ShipmentService(work, self.partners, self.policy).booking_confirmed(item.subject_id, result)

    def _polled(self, work: Work, item: OutboundWork, status: CustomsStatus) -> bool:
        return CustomsService(work, self.partners, self.policy).update(item.subject_id, status)

    async def _record(
        self,
        item: OutboundWork,
        call: _Call,
        started: float,
        outcome: str,
        detail: str,
        effect: Callable[[Work], object],
        *,
        keep: bool = False,
    ) -> None:
        duration = (time.perf_counter() - started) * 1000
        marker = call.marker

        def job(work: Work) -> None:
            row = LogisticsRepository.from_session(work.session).work(item.id)
            # What the partner did is a fact whoever holds the claim: the effect is recorded either
            # way (each effect takes a repeat or a settled subject in its stride, and says so).
            result = effect(work)
            if row.claim_token != call.token:
                _attempt(work, row.id, marker, duration, "late", f"{detail}; {_LOST}")
                work.session.flush()
                return
            finished = not keep or result is True
            _attempt(work, row.id, marker, duration, outcome, detail)
            row.attempts = 0
            row.claimed_until = None
            row.claim_token = None
            row.last_error = None
            row.updated_at = work.now
            if finished:
                row.status = "done"
            else:
                row.next_attempt_at = work.now + self.policy.customs_poll
            work.session.flush()

        await self.store.run_async(job, actor=f"outbound:{item.partner}")

    async def _failure(self, item: OutboundWork, call: _Call, started: float, exc: PartnerCallError) -> None:
        duration = (time.perf_counter() - started) * 1000
        marker = call.marker
        log.warning(
            "outbound %s %s to %s failed (%s, retryable=%s)", item.kind, item.id, item.partner, exc.code, exc.retryable
        )

        def job(work: Work) -> None:
            row = LogisticsRepository.from_session(work.session).work(item.id)
            if row.claim_token != call.token:
                _attempt(work, row.id, marker, duration, "late", f"{exc.code or 'error'}: {exc.message}; {_LOST}")
                if exc.code == "unrecorded":  # the partner acted: the holder of the claim cannot know it
                    raise_alert(work, _order_of(work, item), "critical", f"{item.kind}.unrecorded", exc.message)
                work.session.flush()
                return
            if item.kind == "customs-poll" and exc.retryable:
                self._poll_failed(work, row, marker, duration, exc)
                return
            row.attempts += 1
            final = not exc.retryable or row.attempts >= self.policy.outbound_max_attempts
            outcome = "failed" if final else "retry"
            _attempt(work, row.id, marker, duration, outcome, f"{exc.code or 'error'}: {exc.message}")
            row.last_error = f"{exc.code or 'error'}: {exc.message}"[:2000]
            row.claimed_until = None
            row.claim_token = None
            row.updated_at = work.now
            if final:
                row.status = "failed"
                reason = f"{exc.code or 'error'}: {exc.message}"
                if item.kind == "booking":
                    ShipmentService(work, self.partners, self.policy).booking_failed(item.subject_id, reason)
                else:
                    CustomsService(work, self.partners, self.policy).failed(item.subject_id, exc.code, exc.message)
            else:
                row.next_attempt_at = work.now + self.policy.backoff(row.attempts)
            work.session.flush()

        await self.store.run_async(job, actor=f"outbound:{item.partner}")

    def _poll_failed(
        self, work: Work, row: OutboundWork, marker: str | None, duration: float, exc: PartnerCallError
    ) -> None:
        """A transient failure to follow a lodged declaration: the declaration's status is the
        authority's and stays; polling goes on with capped backoff, a warning opens the outage, and
        only a silence longer than ``customs_poll_give_up`` stops it (critical alert)."""
        customs = CustomsService(work, self.partners, self.policy)
        since = customs.last_heard(row.subject_id)
        reason = f"{exc.code or 'error'}: {exc.message}"
        giving_up = work.now - since >= self.policy.customs_poll_give_up
        row.attempts += 1
        _attempt(work, row.id, marker, duration, "failed" if giving_up else "retry", reason)
        row.last_error = reason[:2000]
        row.claimed_until = None
        row.claim_token = None
        row.updated_at = work.now
        if giving_up:
            row.status = "failed"
            customs.unreachable(row.subject_id, reason, since, giving_up=True)
        else:
            if row.attempts == 1:  # once per outage: a successful poll sets attempts back to 0
                customs.unreachable(row.subject_id, reason, since, giving_up=False)
            row.next_attempt_at = work.now + self.policy.backoff(row.attempts)
        work.session.flush()


def _order_of(work: Work, item: OutboundWork) -> str:
    repo = LogisticsRepository.from_session(work.session)
    if item.kind == "booking":
        return repo.shipment(item.subject_id).order_id
    return repo.declaration(item.subject_id).order_id


def _internal(item: OutboundWork, call: _Call, exc: Exception) -> PartnerCallError:
    """What an unexpected error during an attempt means for the work item. Before the partner
    answered it is retried. After it answered (a booking made, a declaration lodged) only recording
    the answer failed: calling again would book or lodge a second time, or fail the same way again
    (an answer the store refuses), so the item fails here, naming the answer for the operator."""
    name = type(exc).__name__
    if call.answer is not None:
        todo = (
            "register the shipment with that tracking number; do not book again"
            if item.kind == "booking"
            else "the authority has it: follow it there; do not lodge it again"
        )
        return PartnerCallError(
            f"internal error ({name}) while recording what {item.partner} answered: {call.answer}; {todo}",
            retryable=False,
            code="unrecorded",
        )
    if call.marker is not None:
        # A call that cannot be repeated safely was sent: trying again could book twice.
        return PartnerCallError(
            f"internal error ({name}) after a call that cannot be repeated safely was sent: check the courier, "
            "then register the shipment or book again",
            retryable=False,
            code="ambiguous",
        )
    return PartnerCallError(f"internal error: {name}", retryable=True, code="internal")


_LOST = "this attempt had lost its claim: the work item is left to the attempt holding it"


def _claim(work_id: str, hold: timedelta) -> Callable[[Work], str | None]:
    """Claim the item for ``hold``; the claim's token, or None when another worker holds it."""

    def job(work: Work) -> str | None:
        token = uuid7()
        claimed = LogisticsRepository.from_session(work.session).claim(work_id, work.now, work.now + hold, token)
        return token if claimed else None

    return job


def _attempt_no(work: Work, work_id: str) -> int:
    return len(LogisticsRepository.from_session(work.session).attempts(work_id)) + 1


@dataclass
class _Call:
    """One attempt's state: the token of its claim, the in-flight marker of a call that cannot be
    repeated, and what the partner answered (for the operator, if recording the answer fails)."""

    token: str
    marker: str | None = None
    answer: str | None = None


def _mark_sent(work_id: str) -> Callable[[Work], str]:
    def job(work: Work) -> str:
        marker = uuid7()
        work.session.add(
            OutboundAttempt(
                id=marker,
                work_id=work_id,
                attempt=_attempt_no(work, work_id),
                at=work.now,
                duration_ms=0.0,
                outcome="sent",
                detail="sent; no answer recorded yet",
            )
        )
        work.session.flush()
        return marker

    return job


def _attempt(work: Work, work_id: str, marker: str | None, duration: float, outcome: str, detail: str) -> None:
    """Record how an attempt ended: in its in-flight marker's row when it has one, else a new row."""
    row = work.session.get(OutboundAttempt, marker) if marker else None
    if row is None:
        work.session.add(
            OutboundAttempt(
                id=uuid7(),
                work_id=work_id,
                attempt=_attempt_no(work, work_id),
                at=work.now,
                duration_ms=duration,
                outcome=outcome,
                detail=detail[:1000],
            )
        )
        return
    row.duration_ms = duration
    row.outcome = outcome
    row.detail = detail[:1000]
