"""The one explicit registry of adapters, keyed by the name partner profiles use.

Each entry names the settings model a profile's channel must satisfy. Adapters that exist as code
are listed with their module; planned ones are still listed (so a profile can name them and be
validated) but ``module`` is None and `cgt-hub partners check` says so.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from hub.api.smart_schemas import SmartClientSettings


class ChannelSettings(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    adapter: str
    direction: Literal["inbound", "outbound", "both"]


class Hl7v2Mllp(ChannelSettings):
    allow_from: tuple[str, ...] = ()  # CIDR blocks for inbound
    ack_mode: Literal["original", "enhanced"] = "original"
    mappings: tuple[str, ...] = ()
    endpoint: str | None = Field(default=None, pattern=r"^mllp(\+tls)?://[^\s/]+:\d+$")
    message: str | None = Field(default=None, pattern=r"^[A-Z0-9]{3}\^[A-Z0-9]{3}$")
    sending_facility: str | None = None
    encoding: str | None = None


class FhirRest(ChannelSettings):
    smart: SmartClientSettings = Field(default_factory=SmartClientSettings)
    base_url: str | None = None


class CourierWebhook(ChannelSettings):
    scheme: Literal["standard-webhooks", "easypost", "fedex-hmac", "static-token"]
    secret: str  # name of an entry in the profile's `secrets`
    mapping: str
    tolerance_s: int = 300


class CourierBooking(ChannelSettings):
    kind: str
    base_url: str
    credential: str  # name of an entry in `secrets`


class SoapCustoms(ChannelSettings):
    wsdl: str
    service: str | None = None
    port: str | None = None
    endpoint: str | None = None
    credential: str | None = None


class Email(ChannelSettings):
    address: str
    allowed_senders: tuple[str, ...] = ()


class LabPdf(ChannelSettings):
    template: str
    via: Literal["email", "upload"] = "email"


class Portal(ChannelSettings):
    users: tuple[str, ...] = ()


@dataclass(frozen=True)
class AdapterInfo:
    name: str
    settings: type[ChannelSettings]
    module: str | None  # where the implementation lives, once it exists
    summary: str


ADAPTERS: dict[str, AdapterInfo] = {
    a.name: a
    for a in (
        AdapterInfo("hl7v2-mllp", Hl7v2Mllp, None, "HL7 v2 over MLLP (orders, ADT, SIU in; ORU out)"),
        AdapterInfo("fhir-rest", FhirRest, "hub.api.fhir", "FHIR R4 REST with SMART Backend Services"),
        AdapterInfo("courier-webhook", CourierWebhook, None, "signed courier tracking webhooks"),
        AdapterInfo("courier-booking", CourierBooking, None, "courier booking API client"),
        AdapterInfo("soap-customs", SoapCustoms, None, "customs declarations over SOAP"),
        AdapterInfo("email", Email, None, "inbound email (tier 3)"),
        AdapterInfo("lab-pdf", LabPdf, None, "PDF lab reports (tier 3, transcribed and verified)"),
        AdapterInfo("portal", Portal, None, "the tier 2/3 web portal"),
    )
}


def channel_schemas() -> dict[str, type[BaseModel]]:
    return {name: info.settings for name, info in ADAPTERS.items()}
