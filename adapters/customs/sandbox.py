"""A local customs authority speaking the ICS2 SOAP 1.2 contracts over HTTP, for tests and the demo.

It serves the two operations the hub uses — ``IE4N10submitPresentationInformation`` (one-way:
HTTP 202, no body) and ``QueryENS`` (``QueryENSRespMsg``/``IE4R05`` with an ``ENSHistory``) — and
reveals a scripted lifecycle per declaration, one event per status query (default: ``A1``
accepted, then ``R1`` released). ``mode`` makes it misbehave on purpose: ``fault`` (SOAP 1.2
Fault), ``malformed`` (broken XML), ``billion-laughs`` and ``xxe`` (hostile documents),
``http-500``, ``slow`` (answers after ``delay_s``).

Requests are parsed with entity resolution, network access and DTD loading off.
"""

from __future__ import annotations

import asyncio
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime
from xml.sax.saxutils import escape

from lxml import etree
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

SOAP12 = "http://www.w3.org/2003/05/soap-envelope"
ITF_CONSULT = "http://xmlns.ec.eu/DataService/ICS/IENSConsultationDS/V2"
ICS2 = "urn:wco:datamodel:eu:ics2:2"
CT = "application/soap+xml; charset=utf-8"
_PARSER = etree.XMLParser(resolve_entities=False, no_network=True, load_dtd=False, huge_tree=False)

BILLION_LAUGHS = b"""<?xml version="1.0"?>
<!DOCTYPE lolz [<!ENTITY lol "lol"><!ENTITY lol2 "&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;">
<!ENTITY lol3 "&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;">
<!ENTITY lol4 "&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;">]>
<env:Envelope xmlns:env="http://www.w3.org/2003/05/soap-envelope"><env:Body><x>&lol4;</x></env:Body></env:Envelope>"""
XXE = b"""<?xml version="1.0"?>
<!DOCTYPE foo [<!ENTITY xxe SYSTEM "file:///etc/passwd">]>
<env:Envelope xmlns:env="http://www.w3.org/2003/05/soap-envelope"><env:Body><x>&xxe;</x></env:Body></env:Envelope>"""


@dataclass
class Declaration:
    reference: str
    mrn: str
    submitted_at: datetime
    revealed: int = 0


@dataclass
class CustomsSandbox:
    script: tuple[str, ...] = ("A1", "R1")
    mode: str = "normal"
    delay_s: float = 0.0
    declarations: dict[str, Declaration] = field(default_factory=dict)
    requests: list[str] = field(default_factory=list)

    def app(self) -> Starlette:
        return Starlette(
            routes=[
                Route("/ENSLifecycleManagementBAS", self._lifecycle, methods=["POST"]),
                Route("/ENSConsultationDS", self._consultation, methods=["POST"]),
            ]
        )

    async def _misbehave(self) -> Response | None:
        if self.mode == "slow":
            await asyncio.sleep(self.delay_s)
        if self.mode == "http-500":
            return Response(b"internal error", status_code=500, media_type="text/plain")
        if self.mode == "fault":
            return _fault("env:Receiver", "ICS2 service temporarily refuses declarations (test fault)")
        if self.mode == "malformed":
            return Response(b"<env:Envelope xmlns:env='" + SOAP12.encode() + b"'><env:Body><unclosed>", media_type=CT)
        if self.mode == "billion-laughs":
            return Response(BILLION_LAUGHS, media_type=CT)
        if self.mode == "xxe":
            return Response(XXE, media_type=CT)
        return None

    async def _body(self, request: Request) -> etree._Element | Response:
        raw = await request.body()
        try:
            doc = etree.fromstring(raw, _PARSER)
        except etree.XMLSyntaxError:
            return _fault("env:Sender", "request is not well-formed XML")
        body = doc.find(f"{{{SOAP12}}}Body")
        if body is None or len(body) == 0:
            return _fault("env:Sender", "no SOAP 1.2 Body")
        return body[0]

    async def _lifecycle(self, request: Request) -> Response:
        bad = await self._misbehave()
        if bad is not None:
            return bad
        payload = await self._body(request)
        if isinstance(payload, Response):
            return payload
        self.requests.append(etree.QName(payload).localname)
        if etree.QName(payload).localname != "IE4N10submitPresentationInformationReqMsg":
            return _fault("env:Sender", f"operation {etree.QName(payload).localname} is not served here")
        reference = payload.findtext(f".//{{{ICS2}}}functionalReference")
        if not reference:
            return _fault("env:Sender", "functionalReference is missing")
        if reference not in self.declarations:
            mrn = ("26NL" + uuid.uuid4().hex.upper())[:18]
            self.declarations[reference] = Declaration(reference, mrn, datetime.now(UTC))
        return Response(status_code=202)

    async def _consultation(self, request: Request) -> Response:
        bad = await self._misbehave()
        if bad is not None:
            return bad
        payload = await self._body(request)
        if isinstance(payload, Response):
            return payload
        self.requests.append(etree.QName(payload).localname)
        reference = payload.findtext(f".//{{{ICS2}}}functionalReference") or ""
        decl = self.declarations.get(reference)
        if decl is None:
            return _fault("env:Sender", f"no ENS with functional reference {reference[:35]}")
        decl.revealed = min(len(self.script), decl.revealed + 1)
        now = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        events = "".join(
            f"<ics:ENSEvent><ics:type>{escape(code)}</ics:type><ics:time><ics:DateTime>{now}</ics:DateTime>"
            f"</ics:time></ics:ENSEvent>"
            for code in self.script[: decl.revealed]
        )
        body = (
            f'<env:Envelope xmlns:env="{SOAP12}"><env:Body>'
            f'<itf:QueryENSRespMsg xmlns:itf="{ITF_CONSULT}" xmlns:ics="{ICS2}"><ics:IE4R05>'
            f"<ics:MessageHeader><ics:messageId>{uuid.uuid4()}</ics:messageId>"
            f"<ics:messageTimestamp>{now}</ics:messageTimestamp><ics:messageSender>ICS2</ics:messageSender>"
            f"<ics:messageRecipient>CGTHUB</ics:messageRecipient></ics:MessageHeader>"
            f"<ics:functionalReference>{escape(reference)}</ics:functionalReference>"
            f"<ics:ENSHistory>{events}</ics:ENSHistory>"
            f"<ics:relatedENS><ics:MRN>{decl.mrn}</ics:MRN></ics:relatedENS>"
            f"</ics:IE4R05></itf:QueryENSRespMsg></env:Body></env:Envelope>"
        )
        return Response(body.encode(), media_type=CT)


def _fault(code: str, reason: str) -> Response:
    body = (
        f'<env:Envelope xmlns:env="{SOAP12}"><env:Body><env:Fault>'
        f"<env:Code><env:Value>{code}</env:Value></env:Code>"
        f'<env:Reason><env:Text xml:lang="en">{escape(reason)}</env:Text></env:Reason>'
        f"</env:Fault></env:Body></env:Envelope>"
    )
    return Response(body.encode(), status_code=500 if code.endswith("Receiver") else 400, media_type=CT)
