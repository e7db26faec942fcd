"""The partner profile schema (one YAML file per partner in ``partner-profiles/``).

Channel settings differ per adapter; each adapter declares its own settings model in
``adapters/registry.py`` and the loader validates a channel against the model its ``adapter``
names. Secrets never appear in a profile: only references (``env:NAME`` or ``file:/path``).
"""

from __future__ import annotations

import re
from enum import IntEnum, StrEnum
from typing import Annotated, Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, field_validator

SECRET_REF = r"^(env:[A-Z_][A-Z0-9_]*|file:/[^\s]+)$"  # noqa: S105 - a pattern, not a secret


def _secret_ref(value: str) -> str:
    if not re.match(SECRET_REF, value):
        raise ValueError("must be a reference (env:NAME or file:/path), never the secret itself")
    return value


SecretRef = Annotated[str, AfterValidator(_secret_ref)]


class PartnerKind(StrEnum):
    hospital = "hospital"
    courier = "courier"
    customs = "customs"
    lab = "lab"
    manufacturing_site = "manufacturing-site"
    treatment_site = "treatment-site"
    collection_site = "collection-site"


class Tier(IntEnum):
    automated = 1  # HL7 v2, FHIR REST, webhooks, SOAP, lab files
    portal = 2  # people at the site use the web portal
    manual = 3  # PDFs and emails, transcribed and second-person verified at the hub


class ChannelBase(BaseModel):
    """Fields every channel has. Adapter-specific fields are validated by the adapter's model."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    adapter: str
    direction: str = Field(pattern=r"^(inbound|outbound|both)$")


class Address(BaseModel):
    """A site's shipping address, as couriers that book by address need it (EasyPost, UPS). Sites
    are organisations: nothing here is about a patient."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    lines: tuple[str, ...] = Field(min_length=1, max_length=3)
    city: str = Field(min_length=1)
    state: str | None = None  # state or province code where the country has them
    postal_code: str = Field(min_length=1)
    country: str = Field(pattern=r"^[A-Z]{2}$")  # ISO 3166-1 alpha-2
    phone: str | None = None
    attention: str | None = None  # the desk that receives the shipment


class Profile(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    id: str = Field(pattern=r"^[a-z0-9][a-z0-9-]{1,62}$")
    name: str
    kind: PartnerKind
    tier: Tier
    # Roles this partner can play in an order (a hospital often collects and treats too).
    roles: tuple[str, ...] = ()
    timezone: str = "UTC"
    identifiers: dict[str, str] = Field(default_factory=dict)
    channels: tuple[Any, ...] = ()  # validated per adapter by the loader
    secrets: dict[str, SecretRef] = Field(default_factory=dict)
    contacts: tuple[dict[str, str], ...] = ()
    address: Address | None = None  # where couriers pick up and deliver

    @field_validator("timezone")
    @classmethod
    def _zone(cls, value: str) -> str:
        try:
            ZoneInfo(value)
        except (ZoneInfoNotFoundError, ValueError) as exc:
            raise ValueError(f"unknown IANA time zone {value!r}") from exc
        return value

    @field_validator("roles")
    @classmethod
    def _roles(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        allowed = {"ordering", "collection", "manufacturing", "treatment", "lab", "courier", "customs"}
        bad = [r for r in value if r not in allowed]
        if bad:
            raise ValueError(f"unknown role(s) {bad}; allowed: {sorted(allowed)}")
        return value

    def can_play(self, role: str) -> bool:
        if role in self.roles:
            return True
        default = {
            PartnerKind.hospital: {"ordering", "collection", "treatment"},
            PartnerKind.treatment_site: {"treatment", "collection"},
            PartnerKind.collection_site: {"collection"},
            PartnerKind.manufacturing_site: {"manufacturing"},
            PartnerKind.lab: {"lab"},
            PartnerKind.courier: {"courier"},
            PartnerKind.customs: {"customs"},
        }
        return role in default[self.kind] and not self.roles

    def channels_of(self, adapter: str) -> list[Any]:
        return [c for c in self.channels if getattr(c, "adapter", None) == adapter]
