"""HL7 v2 refusals that are answered AR (original mode) or CR (enhanced mode): the message is kept
in the inbox but cannot be taken at all — not parsable, an unsupported type, an unknown sender, a
control id reused for other content. Everything else the hub refuses is answered AE with the
``hl7_code`` the :class:`~hub.errors.HubError` carries."""

from __future__ import annotations

from hub.errors import HubError, Issue


class Rejected(HubError):
    def __init__(self, message: str, hl7_code: str, location: str | None = None) -> None:
        super().__init__(message, [Issue(message, location)], status=400, fhir_code="not-supported", hl7_code=hl7_code)
