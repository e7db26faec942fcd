"""The schema of a therapy product definition (``definitions/*.yaml``).

What a stage may require is a fixed vocabulary (the guards the core knows how to check); which
stage requires what, in which order, with which windows and limits, is data.
"""

from __future__ import annotations

import textwrap
from enum import StrEnum
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator


class Checkpoint(StrEnum):
    """The identity verification points (DESIGN.md). Storage is one point, verified in and out."""

    collection = "collection"
    manufacturing_receipt = "manufacturing-receipt"
    processing_step = "processing-step"
    storage_in = "storage-in"
    storage_out = "storage-out"
    qc_sampling = "qc-sampling"
    release = "release"
    courier_handoff = "courier-handoff"
    site_receipt = "site-receipt"
    administration = "administration"


class Guard(StrEnum):
    viability_valid = "viability-valid"
    results_in_spec = "results-in-spec"
    release_signature = "release-signature"
    all_processing_steps = "all-processing-steps"


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Stage(Strict):
    code: str = Field(pattern=r"^[a-z][a-z0-9-]*$")
    name: str
    checkpoints: tuple[Checkpoint, ...] = ()
    guards: tuple[Guard, ...] = ()
    # Which identifiers a verification at this stage must scan (besides the CoI).
    requires_patient_scan: bool = False
    site_role: Literal["collection", "manufacturing", "treatment", "courier", "hub"] = "hub"


class TemperatureRange(Strict):
    min_c: float | None = None
    max_c: float | None = None
    # An excursion shorter than this is recorded but does not escalate.
    tolerated_minutes: int = 0
    ln2_min_percent: float | None = None

    @model_validator(mode="after")
    def _bounds(self) -> TemperatureRange:
        if self.min_c is None and self.max_c is None:
            raise ValueError("a temperature range needs min_c, max_c or both")
        if self.min_c is not None and self.max_c is not None and self.min_c > self.max_c:
            raise ValueError("min_c is above max_c")
        return self


INVOICE_LINE, INVOICE_LINES = 35, 3  # a UPS commercial invoice prints a product in 3 lines of 35


class CustomsGoods(Strict):
    """What a leg carries, as a carrier's customs paperwork declares it when the leg crosses a
    border (EasyPost ``customs_info``, UPS ``InternationalForms``: a commercial invoice). It belongs
    to the product, not the order: no patient data goes on a customs form. ``value`` is the value
    declared for customs purposes; autologous material is not sold, and carriers refuse zero."""

    description: str = Field(min_length=3, max_length=105)  # UPS prints 3 lines of 35
    hs_code: str = Field(pattern=r"^\d{4}\.?\d{2}(\.?\d{2,4})?$")  # Harmonized System, 6–10 digits
    value: float = Field(gt=0)
    currency: str = Field(default="USD", pattern=r"^[A-Z]{3}$")
    export_reason: str = Field(default="NOT FOR SALE", min_length=1, max_length=20)
    part_number: str | None = Field(default=None, min_length=1, max_length=10)  # the invoice line's reference
    # US exports: the EEI exemption or the AES ITN. Without it, a US export is declared
    # "NOEEI 30.37(a)" only when its value is at most 2,500 USD; otherwise the booking is refused.
    us_export_filing: str | None = Field(default=None, min_length=1, max_length=40)

    @model_validator(mode="after")
    def _printable(self) -> CustomsGoods:
        if len(textwrap.wrap(self.description, INVOICE_LINE)) > INVOICE_LINES:
            raise ValueError(f"the description must fit {INVOICE_LINES} invoice lines of {INVOICE_LINE} characters")
        return self


class Leg(Strict):
    code: str
    name: str
    departs: str  # stage code at which the leg starts (material handed to the courier)
    arrives: str  # stage code at which it ends (receipt)
    temperature: TemperatureRange
    customs: CustomsGoods | None = None  # needed to book a leg between two countries by address


class Viability(Strict):
    starts_on: str  # the stage whose event time starts the clock (end of collection)
    must_reach: str  # the stage that must be entered before the window closes
    window_hours: float = Field(gt=0)
    escalate_at: tuple[float, ...] = (0.5, 0.75, 0.9)


class SpecLimit(Strict):
    code: str
    name: str
    unit: str | None = None
    min: float | None = None
    max: float | None = None
    expected: str | None = None  # for qualitative tests (e.g. "negative")
    loinc: str | None = None

    @model_validator(mode="after")
    def _one_kind(self) -> SpecLimit:
        quantitative = self.min is not None or self.max is not None
        if quantitative == (self.expected is not None):
            raise ValueError(f"{self.code}: give min/max (quantitative) or expected (qualitative), not both")
        return self

    def evaluate(self, value: str) -> bool:
        if self.expected is not None:
            return value.strip().lower() == self.expected.lower()
        try:
            number = float(value)
        except ValueError:
            return False
        if self.min is not None and number < self.min:
            return False
        return not (self.max is not None and number > self.max)


class Product(Strict):
    code: str = Field(pattern=r"^[a-z][a-z0-9-]*$")
    version: str
    name: str
    apheresis: Literal["fresh", "cryopreserved"]
    stages: tuple[Stage, ...]
    processing_steps: tuple[str, ...] = ()
    viability: Viability
    legs: tuple[Leg, ...]
    release_panel: tuple[SpecLimit, ...]

    @model_validator(mode="after")
    def _coherent(self) -> Product:
        codes = [s.code for s in self.stages]
        if len(set(codes)) != len(codes):
            raise ValueError("stage codes must be unique")
        if codes[0] != "order-accepted" or codes[-1] != "administered":
            raise ValueError("a journey starts at order-accepted and ends at administered")
        for ref in (self.viability.starts_on, self.viability.must_reach):
            if ref not in codes:
                raise ValueError(f"viability refers to unknown stage {ref!r}")
        if codes.index(self.viability.starts_on) >= codes.index(self.viability.must_reach):
            raise ValueError("viability must_reach comes after starts_on")
        for leg in self.legs:
            for ref in (leg.departs, leg.arrives):
                if ref not in codes:
                    raise ValueError(f"leg {leg.code} refers to unknown stage {ref!r}")
        seen = {c for s in self.stages for c in s.checkpoints}
        missing = set(Checkpoint) - seen
        if missing:
            raise ValueError(f"every verification point must appear in the journey; missing: {sorted(missing)}")
        if any(Guard.all_processing_steps in s.guards for s in self.stages) and not self.processing_steps:
            raise ValueError("all-processing-steps guard needs processing_steps")
        if not self.release_panel:
            raise ValueError("a release panel is required")
        return self

    def stage(self, code: str) -> Stage:
        for s in self.stages:
            if s.code == code:
                return s
        raise KeyError(code)

    def index(self, code: str) -> int:
        return [s.code for s in self.stages].index(code)

    def next_stage(self, code: str) -> Stage | None:
        i = self.index(code)
        return self.stages[i + 1] if i + 1 < len(self.stages) else None

    def spec(self, test_code: str) -> SpecLimit | None:
        for s in self.release_panel:
            if s.code == test_code:
                return s
        return None

    def leg_departing(self, stage_code: str) -> Leg | None:
        for leg in self.legs:
            if leg.departs == stage_code:
                return leg
        return None
