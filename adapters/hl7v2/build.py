"""Outbound HL7 v2 messages (ORU^R01 by default; ORM^O01 or OML^O21 status messages when the
partner's outbound channel names them), built from an event snapshot.

The segments are composed here with every value escaped; hl7apy (off the hot path: outbound
volume is a few messages per order over weeks) then parses the result with STRICT validation,
finds the message structure's groups and serialises it, so what leaves is a well-formed message of
the named version and structure. ORU^R01 is also run through hl7apy's ``validate()``; ORM^O01 is not,
because hl7apy 1.3.5 demands an RQD segment in every ORM^O01 (LIBRARIES.md), which a status message
has no business carrying.
"""

from __future__ import annotations

import re
from datetime import datetime
from decimal import Decimal, InvalidOperation
from typing import Any

from adapters.hl7v2.ack import hl7_timestamp
from adapters.hl7v2.tokenizer import DEFAULT_ENCODING, escape

VERSION = "2.5.1"
HUB_APP = "CGTHUB"
SUPPORTED = ("ORU^R01", "ORM^O01", "OML^O21")
ORDER_STATUS = {"active": "IP", "on-hold": "HD", "revoked": "CA", "completed": "CM"}
RESULT_STATUS = {"active": "P", "on-hold": "P", "revoked": "X", "completed": "F"}
CODE_SYSTEM = "CGTHUB"
NM = re.compile(r"^[+-]?(\d+(\.\d*)?|\.\d+)$")  # HL7 NM: an optional sign, digits, an optional point


class BuildError(ValueError):
    pass


def _e(value: Any) -> str:
    return escape("" if value is None else str(value), DEFAULT_ENCODING)


def _cx(ident: dict[str, Any]) -> str:
    system = str(ident.get("system") or "")
    namespace = str(ident.get("namespace") or "")
    if system.startswith("urn:oid:"):
        authority = f"{_e(namespace)}&{_e(system[8:])}&ISO"
    elif namespace:
        authority = _e(namespace)
    else:
        authority = f"&{_e(system)}&URI" if system else ""
    return f"{_e(ident.get('value'))}^^^{authority}^{_e(ident.get('type') or '')}"


def _nm(value: Any) -> str | None:
    """The value as an HL7 NM (``1.2e8`` → ``120000000``), or None if it is not a finite number."""
    text = str(value).strip()
    if NM.match(text):
        return text
    try:
        number = Decimal(text)
    except InvalidOperation:
        return None
    return format(number, "f") if number.is_finite() else None


def _ts(value: str | None) -> str:
    if not value:
        return ""
    return hl7_timestamp(datetime.fromisoformat(value)).split(".")[0] + "+0000"


def segments(snapshot: dict[str, Any]) -> list[str]:
    """The segments of the message (escaped ER7, one string per segment)."""
    mtype = snapshot["message_type"]
    if mtype not in SUPPORTED:
        raise BuildError(f"outbound message type {mtype} is not supported (supported: {', '.join(SUPPORTED)})")
    code, trigger = mtype.split("^")
    structure = f"{code}_{trigger}"
    at = _ts(snapshot["occurred_at"])
    patient = snapshot.get("patient") or {}
    status = snapshot["status"]
    processing_id = snapshot.get("processing_id") or "P"  # the hub's (MSH-11); older snapshots: P
    msh = (
        f"MSH|^~\\&|{HUB_APP}|{_e(snapshot.get('sending_facility') or HUB_APP)}|"
        f"{_e(snapshot.get('receiving_application') or '')}|{_e(snapshot.get('receiving_facility') or '')}|"
        f"{at}||{code}^{trigger}^{structure}|{_e(snapshot['control_id'])}|{_e(processing_id)}|{VERSION}"
        "||||||UNICODE UTF-8"
    )
    pid = (
        f"PID|1||{'~'.join(_cx(i) for i in patient.get('identifiers', []))}||"
        f"{_e(patient.get('family'))}^{_e(patient.get('given'))}^{_e(patient.get('middle'))}||"
        f"{_e((patient.get('birth_date') or '').replace('-', ''))}|{_e(patient.get('sex') or '')}"
    )
    placer = f"{_e(snapshot['placer_number'])}^{_e(snapshot.get('ordering_partner') or '')}"
    filler = f"{_e(snapshot['coi'])}^{HUB_APP}"
    orc = f"ORC|SC|{placer}|{filler}||{ORDER_STATUS.get(status, 'IP')}||||{at}"
    product = f"{_e(snapshot['product_code'])}^{_e(snapshot.get('product_name') or '')}^{CODE_SYSTEM}"
    # OBR-25 never goes back from F once the final release results are out (HL7 table 0123).
    result_status = "F" if snapshot.get("final") or snapshot.get("results") else RESULT_STATUS.get(status, "P")
    obr = f"OBR|1|{placer}|{filler}|{product}|||{at}|||||||||||||||{at}|||{result_status}"
    obx: list[str] = []

    def add(value_type: str, code_: str, name: str, value: str, unit: str = "", ref: str = "", flag: str = "") -> None:
        n = len(obx) + 1
        obx.append(f"OBX|{n}|{value_type}|{_e(code_)}^{_e(name)}^{CODE_SYSTEM}||{value}|{unit}|{ref}|{flag}|||F|||{at}")

    stage = snapshot["stage"]
    add("CWE", "journey-stage", "Journey stage", f"{_e(stage)}^{_e(snapshot.get('stage_name') or stage)}^{CODE_SYSTEM}")
    add("ST", "order-status", "Order status", _e(status))
    add("ST", "coi", "Chain of identity identifier", _e(snapshot.get("coi_eye_readable") or snapshot["coi"]))
    if snapshot.get("hold_kind"):
        add("ST", "hold", "Hold", _e(snapshot["hold_kind"]))
    if snapshot.get("appointment"):
        appt = snapshot["appointment"]
        add("DTM", "collection-start", "Collection appointment start", _ts(appt.get("start")))
    for res in snapshot.get("results", []):
        numeric = res.get("numeric", False)
        flag = "N" if res.get("in_spec") else "A"
        name = _e(res.get("name") or res["code"])
        coding = f"{_e(res['code'])}^{name}^{CODE_SYSTEM}-RELEASE"
        if res.get("loinc"):
            coding += f"^{_e(res['loinc'])}^^LN"
        number = _nm(res["value"]) if numeric else None
        value = number if number is not None else _e(res["value"])
        n = len(obx) + 1
        obx.append(
            f"OBX|{n}|{'NM' if number is not None else 'ST'}|{coding}||{value}|{_e(res.get('unit') or '')}|"
            f"{_e(res.get('range') or '')}|{flag}|||F|||{_ts(res.get('observed_at')) or at}"
        )
    # The three structures share this segment order (hl7apy finds each one's groups).
    return [msh, pid, orc, obr, *obx]


def build(snapshot: dict[str, Any]) -> bytes:
    """ER7 bytes (UTF-8, CR segment ends), structure-checked by hl7apy."""
    from hl7apy.consts import VALIDATION_LEVEL
    from hl7apy.parser import parse_message

    text = "\r".join(segments(snapshot))
    try:
        message = parse_message(text, validation_level=VALIDATION_LEVEL.STRICT, find_groups=True)
        if snapshot["message_type"] == "ORU^R01":
            message.validate()
        out = message.to_er7()
    except Exception as exc:  # hl7apy raises many types; a message we cannot build is our bug
        raise BuildError(f"hl7apy refused the outbound message: {type(exc).__name__}: {str(exc)[:200]}") from exc
    return (out + "\r").encode("utf-8")
