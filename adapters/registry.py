"""The one explicit registry of adapters, keyed by the name partner profiles use.

Each entry names the settings model a profile's channel must satisfy. Adapters that exist as code
are listed with their module; planned ones are still listed (so a profile can name them and be
validated) but ``module`` is None and `cgt-hub partners check` says so.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from hub.api.smart_schemas import SmartClientSettings


class ChannelSettings(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    adapter: str
    direction: Literal["inbound", "outbound", "both"]

    def secret_names(self) -> list[tuple[tuple[str | int, ...], str]]:
        """The names of ``secrets`` entries this channel uses, each with where it is written."""
        return []


class Hl7v2Mllp(ChannelSettings):
    allow_from: tuple[str, ...] = ()  # CIDR blocks for inbound
    # Inbound over mutual TLS: names (subject CN or DNS subjectAltName) of the client certificates
    # this partner's interface engine presents. When set, a connection reaches this partner only
    # with such a certificate, whatever MSH-4 says (adapters/hl7v2/routing.py).
    tls_client_names: tuple[str, ...] = ()
    ack_mode: Literal["original", "enhanced"] = "original"
    # Inbound: the processing ids (MSH-11) this partner's system sends on this channel (a test
    # interface engine: [T]). Empty: P, T and D outside production. A production hub takes P only,
    # whatever the profile says (adapters/hl7v2/interpret.py).
    processing_ids: tuple[Literal["P", "T", "D"], ...] = ()
    mappings: tuple[str, ...] = ()
    endpoint: str | None = Field(default=None, pattern=r"^mllp(\+tls)?://[^\s/]+:\d+$")
    message: str | None = Field(default=None, pattern=r"^[A-Z0-9]{3}\^[A-Z0-9]{3}$")
    sending_facility: str | None = None
    encoding: str | None = None

    @field_validator("message")
    @classmethod
    def _outbound_type(cls, value: str | None) -> str | None:
        supported = ("ORU^R01", "ORM^O01", "OML^O21")  # adapters/hl7v2/build.py SUPPORTED
        if value is not None and value not in supported:
            raise ValueError(f"outbound HL7 v2 message {value} is not supported; use one of {', '.join(supported)}")
        return value

    @field_validator("allow_from")
    @classmethod
    def _networks(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        import ipaddress

        for cidr in value:
            try:
                ipaddress.ip_network(cidr, strict=False)
            except ValueError as exc:
                raise ValueError(f"allow_from: {cidr!r} is not an address or CIDR block") from exc
        return value


class FhirRest(ChannelSettings):
    smart: SmartClientSettings = Field(default_factory=SmartClientSettings)
    base_url: str | None = None

    def secret_names(self) -> list[tuple[tuple[str | int, ...], str]]:
        return [(("smart", "webhook_secret"), self.smart.webhook_secret)] if self.smart.webhook_secret else []


class CourierWebhook(ChannelSettings):
    scheme: Literal["standard-webhooks", "easypost", "fedex-hmac", "static-token"]
    secret: str  # name of an entry in the profile's `secrets`
    mapping: str
    tolerance_s: int = 300
    # More secrets accepted during a key rotation (names of entries in `secrets`).
    rotation_secrets: tuple[str, ...] = ()
    # The header that carries the signature or token (fedex-hmac, static-token).
    header: str | None = None
    # Headers that must be present with this value (UPS Track Alert: User-Agent).
    require_headers: dict[str, str] = Field(default_factory=dict)

    def secret_names(self) -> list[tuple[tuple[str | int, ...], str]]:
        return [
            (("secret",), self.secret),
            *((("rotation_secrets", i), n) for i, n in enumerate(self.rotation_secrets)),
        ]


class Parcel(BaseModel):
    """The shipper the leg travels in (a dry shipper, a 2–8 °C box), in metric units."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    length_cm: float = Field(gt=0)
    width_cm: float = Field(gt=0)
    height_cm: float = Field(gt=0)
    weight_kg: float = Field(gt=0)


class CourierBooking(ChannelSettings):
    # polar-rest | easypost | ups (adapters/couriers/booking.py KINDS)
    kind: str
    base_url: str
    credential: str  # name of an entry in `secrets`: the token, API key or OAuth client secret
    timeout_s: float = Field(default=10.0, gt=0)
    retries: int = Field(default=3, ge=0, le=10)
    # ups: the OAuth client id (name of an entry in `secrets`).
    client_id: str | None = None
    # ups: the shipper number billed; easypost: the carrier account (ca_…) to buy from.
    account: str | None = None
    # The service to book: a UPS service code ("01" Next Day Air) or an EasyPost service name.
    service: str | None = None
    carrier: str | None = None  # easypost: the carrier whose rate to buy ("FedEx", "UPS")
    parcel: Parcel | None = None
    # easypost: how far back a repeated booking looks for the one it may already have bought.
    lookback_hours: int = Field(default=72, ge=1, le=24 * 30)

    def secret_names(self) -> list[tuple[tuple[str | int, ...], str]]:
        names: list[tuple[tuple[str | int, ...], str]] = [(("credential",), self.credential)]
        return names + ([(("client_id",), self.client_id)] if self.client_id else [])


class SoapCustoms(ChannelSettings):
    wsdl: str  # relative to CGTHUB_WSDL_DIR: the service that lodges declarations
    status_wsdl: str | None = None  # the service that answers status queries
    service: str | None = None
    port: str | None = None
    endpoint: str | None = None
    status_endpoint: str | None = None
    credential: str | None = None
    mapping: str = "customs/ics2"
    timeout_s: float = Field(default=15.0, gt=0)
    retries: int = Field(default=2, ge=0, le=10)

    def secret_names(self) -> list[tuple[tuple[str | int, ...], str]]:
        return [(("credential",), self.credential)] if self.credential else []


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
        AdapterInfo(
            "hl7v2-mllp", Hl7v2Mllp, "adapters.hl7v2", "HL7 v2 over MLLP (orders, ADT, SIU, lab ORU in; ORU out)"
        ),
        AdapterInfo("fhir-rest", FhirRest, "hub.api.fhir", "FHIR R4 REST with SMART Backend Services"),
        AdapterInfo(
            "courier-webhook", CourierWebhook, "adapters.couriers.endpoints", "signed courier tracking webhooks"
        ),
        AdapterInfo("courier-booking", CourierBooking, "adapters.couriers.booking", "courier booking API client"),
        AdapterInfo("soap-customs", SoapCustoms, "adapters.customs.client", "customs declarations over SOAP"),
        AdapterInfo("email", Email, None, "inbound email (tier 3)"),
        AdapterInfo("lab-pdf", LabPdf, None, "PDF lab reports (tier 3, transcribed and verified)"),
        AdapterInfo("portal", Portal, None, "the tier 2/3 web portal"),
    )
}


def channel_schemas() -> dict[str, type[BaseModel]]:
    return {name: info.settings for name, info in ADAPTERS.items()}
