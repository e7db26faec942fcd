"""What the logistics core needs from outside partners, as small typed protocols.

Adapters (``adapters/couriers``, ``adapters/customs``) implement them; the composition root
(``hub/runtime.py``) hands them to the :class:`hub.logistics.worker.OutboundDispatcher`. The core
never sees a partner's dialect, only these requests and results.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Protocol

from hub.partners.schemas import Address
from hub.products.schemas import CustomsGoods


class PartnerCallError(Exception):
    """A partner call that did not succeed. ``retryable`` errors are tried again later (timeouts,
    5xx, connection refused); the others are final (a SOAP fault, a refused booking) and alert."""

    def __init__(self, message: str, *, retryable: bool, code: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.retryable = retryable
        self.code = code


@dataclass(frozen=True)
class BookingRequest:
    idempotency_key: str
    shipment_id: str
    reference: str  # the leg's CoI-based reference (no PHI)
    origin: str
    destination: str
    pickup_after: datetime
    temperature_min_c: float | None
    temperature_max_c: float | None
    material: str
    # The sites' names and shipping addresses from their profiles (None when a profile has none;
    # a courier that books by address refuses the booking then, naming what is missing).
    origin_name: str = ""
    destination_name: str = ""
    origin_address: Address | None = None
    destination_address: Address | None = None
    # The leg's goods as the product declares them, for a carrier's customs paperwork.
    goods: CustomsGoods | None = None


@dataclass(frozen=True)
class BookingResult:
    booking_reference: str
    tracking_number: str
    eta: datetime | None


class BookingClient(Protocol):
    """``idempotent``: a repeat of an interrupted ``book`` cannot book twice (the courier dedupes
    by key, or the client finds the earlier booking first). When False, a call cut off while the
    courier may have acted is not retried: it fails the leg with an alert, so that a person checks
    the courier before anything is booked again."""

    idempotent: bool

    async def book(self, request: BookingRequest) -> BookingResult: ...


@dataclass(frozen=True)
class CustomsSubmission:
    functional_reference: str
    declarant_eori: str
    customs_office: str
    presented_at: datetime
    mrn: str | None


@dataclass(frozen=True)
class CustomsStatus:
    """The authority's state of a declaration, already mapped to the hub's words."""

    status: str  # accepted | under-control | released | rejected | submitted
    mrn: str | None
    detail: str


class CustomsClient(Protocol):
    def submit(self, submission: CustomsSubmission) -> None: ...

    def status(self, functional_reference: str, mrn: str | None) -> CustomsStatus: ...
