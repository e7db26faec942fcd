"""Turn raw scans into identifiers, checking each before anything is interpreted."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from hub.errors import InvalidScan
from hub.identity import gs1, isbt128


@dataclass
class ScannedIdentifiers:
    coi: list[str] = field(default_factory=list)
    patient: list[str] = field(default_factory=list)
    recorded: list[dict[str, Any]] = field(default_factory=list)  # everything read, for the record


def interpret(scans: list[tuple[str, str]]) -> ScannedIdentifiers:
    """``scans`` are (kind, value) pairs; kinds: auto | isbt128 | gs1 | keyed | patient."""
    out = ScannedIdentifiers()
    for index, (kind, value) in enumerate(scans):
        where = f"scans[{index}]"
        try:
            _one(out, kind, value)
        except InvalidScan as exc:
            raise InvalidScan(f"{where}: {exc.message}", where) from exc
    return out


def _one(out: ScannedIdentifiers, kind: str, value: str) -> None:
    text = value.strip()
    if kind == "patient":
        if not text or len(text) > 128 or not text.isprintable():
            raise InvalidScan("patient wristband identifier is empty or not printable")
        out.patient.append(text)
        out.recorded.append({"kind": "patient"})  # the value itself is PHI; it is in `scanned`
        return
    if kind == "keyed":
        coi = isbt128.parse_coi(text, require_check=True)
        out.coi.append(coi.data)
        out.recorded.append({"kind": "coi", "source": "keyed", "value": coi.data})
        return
    if kind == "isbt128" or (kind == "auto" and text[:1] in ("=", "&")):
        for ds in isbt128.parse_isbt128(text):
            if ds.number == "040":
                out.coi.append(ds.data)
                out.recorded.append({"kind": "coi", "source": "isbt128", "value": ds.data})
            else:
                out.recorded.append({"kind": f"isbt128-{ds.number}", "value": ds.data})
        return
    if kind == "gs1" or (kind == "auto" and gs1.looks_like_gs1(text)):
        element = gs1.parse_gs1(text)
        record: dict[str, Any] = {
            "kind": "gs1",
            "gtin": element.gtin,
            "batch": element.batch,
            "serial": element.serial,
            "expiry": element.expiry.isoformat() if element.expiry else None,
        }
        out.recorded.append(record)
        # Manufacturers print the CoI as the GS1 batch/lot (AI 10) on GS1-labelled bags. A lot with
        # a CoI's shape is read as one, exactly as printed (GS1 lots are case-sensitive); any other
        # lot (e.g. "CHARGE-2024-001") is ordinary lot data, not a CoI.
        if element.batch is not None and isbt128.looks_like_coi(element.batch):
            out.coi.append(isbt128.parse_coi(element.batch, printed=True).data)
        return
    raise InvalidScan("scan is neither ISBT 128 (starts with = or &) nor a GS1 element string")
