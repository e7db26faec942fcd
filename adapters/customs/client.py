"""Customs declarations over SOAP with zeep, against the EU ICS2 service contracts.

* WSDLs and XSDs are read from local files (``CGTHUB_WSDL_DIR`` + the profile's paths); zeep runs
  with ``forbid_dtd``, ``forbid_entities`` and ``forbid_external`` (no network fetch of imports, no
  DTD, no entity expansion: billion laughs and XXE raise instead of expanding) and never
  ``xml_huge_tree``. ``strict=False`` because the ICS2 contracts are not strictly valid for zeep.
* Lodging: ``ENSLifecycleManagementBAS.IE4N10submitPresentationInformation`` (one-way, SOAP 1.2,
  WS-Addressing headers). Status: ``ENSConsultationDS.QueryENS`` → ``IE4R05`` whose ``ENSHistory``
  events are mapped to the hub's words by ``mappings/customs/*.yaml``.
* Every call has a timeout; transport failures and 5xx are retried here with backoff and then
  reported as retryable (``max_call_s`` bounds all of it, for the dispatcher); SOAP faults, 4xx,
  hostile XML and refused requests are final. All of them become
  :class:`hub.logistics.ports.PartnerCallError`, never an exception the hub does not know.
"""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import lru_cache
from pathlib import Path
from typing import Any

import requests
import yaml
from lxml import etree
from zeep import Client, Settings
from zeep.exceptions import DTDForbidden, EntitiesForbidden, Error, Fault, TransportError, XMLParseError
from zeep.transports import Transport
from zeep.wsa import WsAddressingPlugin
from zeep.wsse.username import UsernameToken

from adapters.registry import SoapCustoms
from hub.logistics.ports import CustomsStatus, CustomsSubmission, PartnerCallError
from hub.partners.loader import resolve_secret

SENDER = "CGTHUB"
RECIPIENT = "ICS2"


def zeep_settings() -> Settings:
    return Settings(strict=False, forbid_dtd=True, forbid_entities=True, forbid_external=True, xml_huge_tree=False)


@dataclass(frozen=True)
class CustomsMapping:
    events: dict[str, str]
    query_parameters: tuple[str, ...]


@lru_cache(maxsize=16)
def load_customs_mapping(mappings_dir: Path, name: str) -> CustomsMapping:
    from hub.settings import project_path

    data = yaml.safe_load((project_path(mappings_dir) / f"{name}.yaml").read_text(encoding="utf-8"))
    events = {str(k): str(v) for k, v in (data.get("events") or {}).items()}
    allowed = {"accepted", "under-control", "released", "rejected", "submitted"}
    bad = sorted(set(events.values()) - allowed)
    if bad:
        raise ValueError(f"customs mapping {name}: unknown statuses {bad}")
    params = tuple(str(p) for p in (data.get("query_parameters") or ["ENSH"]))
    return CustomsMapping(events, params)


def _stamp(at: datetime) -> str:
    return at.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _header() -> dict[str, Any]:
    return {
        "messageId": str(uuid.uuid4()),
        "messageTimestamp": _stamp(datetime.now(UTC)),
        "messageSender": SENDER,
        "messageRecipient": RECIPIENT,
    }


def _field(obj: Any, name: str) -> Any:
    if obj is None:
        return None
    if isinstance(obj, dict):
        return obj.get(name)
    try:
        return obj[name]
    except (KeyError, TypeError, IndexError, AttributeError):
        return getattr(obj, name, None)


class Ics2CustomsClient:
    """One customs authority's channel: lodging and status, synchronous (run it in a thread)."""

    def __init__(
        self,
        channel: SoapCustoms,
        *,
        wsdl_dir: Path,
        mappings_dir: Path,
        secrets: dict[str, str] | None = None,
        endpoint: str | None = None,
        status_endpoint: str | None = None,
        retry_backoff_s: float = 0.5,
    ) -> None:
        from hub.settings import project_path

        wsdl_dir = project_path(wsdl_dir)
        self.channel = channel
        self.mapping = load_customs_mapping(mappings_dir, channel.mapping)
        self.retries = channel.retries
        self.backoff_s = retry_backoff_s
        session = requests.Session()
        session.headers["User-Agent"] = "cgt-hub customs client"
        transport = Transport(session=session, timeout=channel.timeout_s, operation_timeout=channel.timeout_s)
        wsse = None
        if channel.credential and secrets and channel.credential in secrets:
            value = resolve_secret(secrets[channel.credential]) or ""
            if ":" in value:
                user, password = value.split(":", 1)
                wsse = UsernameToken(user, password)
        self._lodge = self._service(wsdl_dir / channel.wsdl, endpoint or channel.endpoint, transport, wsse)
        status_wsdl = channel.status_wsdl or channel.wsdl
        self._query = self._service(wsdl_dir / status_wsdl, status_endpoint or channel.status_endpoint, transport, wsse)

    @staticmethod
    def _service(path: Path, endpoint: str | None, transport: Transport, wsse: Any) -> Any:
        if not path.is_file():
            raise FileNotFoundError(f"WSDL {path} is not a local file")
        client = Client(
            str(path), settings=zeep_settings(), transport=transport, plugins=[WsAddressingPlugin()], wsse=wsse
        )
        service = next(iter(client.wsdl.services.values()))
        port = next(iter(service.ports.values()))
        if endpoint:
            return client.create_service(port.binding.name, endpoint)
        return client.bind(service.name, port.name)

    @property
    def max_call_s(self) -> float:
        """The longest one operation can take here: each try may wait ``timeout_s`` to connect and as
        long again for the answer, plus the sleeps between tries. The dispatcher waits this long: it
        cannot cancel a call running in a thread, so giving up earlier would let it try again (lodge a
        second IE4N10) while this call is still sending the first."""
        sleeps = sum(self.backoff_s * 2**n for n in range(self.retries))
        return (self.retries + 1) * 2 * self.channel.timeout_s + sleeps + 5.0

    # ------------------------------------------------------------------ operations
    def submit(self, submission: CustomsSubmission) -> None:
        message = {
            "MessageHeader": _header(),
            "requestENSData": {"IndicatorString": "0"},
            "messageFunction": "9",
            "functionalReference": submission.functional_reference[:35],
            "documentIssueDate": {"DateTime": _stamp(datetime.now(UTC))},
            "dateAndTimeOfPresentation": {"DateTime": _stamp(submission.presented_at)},
            "relatedENS": [{"MRN": submission.mrn}] if submission.mrn else [{}],
            "personPresentingTheGoods": {"identificationNumber": submission.declarant_eori[:17]},
            "customsOfficeOfPresentation": {"referenceNumber": submission.customs_office[:8].ljust(8, "0")},
        }
        self._call(lambda: self._lodge.IE4N10submitPresentationInformation(IE4N10=message))

    def status(self, functional_reference: str, mrn: str | None) -> CustomsStatus:
        query: dict[str, Any] = {
            "MessageHeader": _header(),
            "functionalReference": functional_reference[:35],
            "ENSQueryParameters": [{"parameter": p} for p in self.mapping.query_parameters],
        }
        if mrn:
            query["MRN"] = mrn
        response = self._call(lambda: self._query.QueryENS(IE4Q10=query))
        return self._interpret(response)

    def _interpret(self, response: Any) -> CustomsStatus:
        report = _field(response, "IE4R05") or response
        if report is None:
            raise PartnerCallError("empty QueryENS response", retryable=True, code="malformed")
        related = _field(report, "relatedENS")
        mrn = _field(related, "MRN")
        events = _field(_field(report, "ENSHistory"), "ENSEvent") or []
        latest: tuple[str, str] | None = None
        for event in events:
            code = _field(event, "type")
            when = _field(_field(event, "time"), "DateTime")
            if code is None:
                continue
            key = str(when or "")
            if latest is None or key >= latest[1]:
                latest = (str(code), key)
        if latest is None:
            return CustomsStatus("submitted", str(mrn) if mrn else None, "no ENS event yet")
        status = self.mapping.events.get(latest[0])
        if status is None:
            return CustomsStatus("submitted", str(mrn) if mrn else None, f"unmapped ENS event type {latest[0]}")
        return CustomsStatus(status, str(mrn) if mrn else None, f"ENS event {latest[0]} at {latest[1]}")

    def _call(self, operation: Any) -> Any:
        last: PartnerCallError | None = None
        for attempt in range(self.retries + 1):
            try:
                return operation()
            except Fault as exc:
                code = str(exc.code or "fault")
                # A Receiver fault is the authority's own trouble (try again later); a Sender fault
                # says our declaration is wrong (a person must look).
                last = PartnerCallError(
                    f"SOAP fault {code}: {str(exc.message or '')[:300]}", retryable=code.endswith("Receiver"), code=code
                )
                if not last.retryable:
                    raise last from None
            except (DTDForbidden, EntitiesForbidden) as exc:
                raise PartnerCallError(
                    f"the customs service answered with forbidden XML ({type(exc).__name__}); refused",
                    retryable=False,
                    code="hostile-xml",
                ) from None
            except TransportError as exc:
                status = int(exc.status_code or 0)
                last = PartnerCallError(
                    f"HTTP {status} from the customs service",
                    retryable=status >= 500 or status == 429,
                    code=f"http-{status}",
                )
                if not last.retryable:
                    raise last from None
            except (requests.Timeout, requests.ConnectionError) as exc:
                last = PartnerCallError(
                    f"customs service unreachable: {type(exc).__name__}", retryable=True, code="transport"
                )
            except (XMLParseError, etree.XMLSyntaxError) as exc:
                last = PartnerCallError(
                    f"malformed SOAP response: {type(exc).__name__}", retryable=True, code="malformed"
                )
            except Error as exc:  # other zeep errors: a response that does not fit the contract
                last = PartnerCallError(
                    f"unexpected SOAP response: {type(exc).__name__}", retryable=True, code="malformed"
                )
            except (ValueError, TypeError, AttributeError, KeyError) as exc:
                last = PartnerCallError(
                    f"unreadable SOAP response: {type(exc).__name__}", retryable=True, code="malformed"
                )
            if attempt < self.retries:
                time.sleep(self.backoff_s * (2**attempt))
        assert last is not None
        raise last
