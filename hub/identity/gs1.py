"""GS1 element strings for the AIs the hub reads: 01 (GTIN), 10 (batch/lot), 17 (expiry), 21 (serial).

Accepted forms: raw element strings with FNC1 as ASCII GS (0x1D) between variable-length fields,
optionally prefixed by a symbology identifier (``]d2``, ``]C1``, ``]Q3``), and the human-readable
form with parentheses ``(01)…(10)…``.

Why not ``stdnum.gs1_128.info``: measured with python-stdnum 2.2 it runs a variable-length AI on
into the next one — ``(10)AB-123(21)XYZ`` gives batch ``AB-12321XYZ``, and a GS separator ends up
inside the batch. For identity that is a wrong answer, so the element-string split is written here;
the GTIN check digit still comes from ``stdnum.ean``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import date

from stdnum import ean

from hub.errors import InvalidScan

GS = "\x1d"
_SYMBOLOGY_RE = re.compile(r"^\][A-Za-z][0-9]")
_CSET82 = re.compile(r"^[!\"%&'()*+,\-./0-9:;<=>?A-Z_a-z]+$")


@dataclass(frozen=True)
class _AI:
    code: str
    name: str
    fixed: int | None  # fixed data length, or None for variable
    max_len: int


_AIS = {
    "01": _AI("01", "GTIN", 14, 14),
    "10": _AI("10", "batch/lot", None, 20),
    "17": _AI("17", "expiry date", 6, 6),
    "21": _AI("21", "serial number", None, 20),
}


@dataclass(frozen=True)
class GS1Element:
    gtin: str | None = None
    batch: str | None = None
    expiry: date | None = None
    serial: str | None = None


def _check_value(ai: _AI, value: str) -> None:
    if ai.fixed is not None and len(value) != ai.fixed:
        raise InvalidScan(f"AI ({ai.code}) {ai.name} needs {ai.fixed} characters, got {len(value)}")
    if not value or len(value) > ai.max_len:
        raise InvalidScan(f"AI ({ai.code}) {ai.name} must be 1–{ai.max_len} characters")
    if ai.code in ("01", "17") and not value.isdigit():
        raise InvalidScan(f"AI ({ai.code}) {ai.name} must be digits")
    if ai.code in ("10", "21") and not _CSET82.match(value):
        raise InvalidScan(f"AI ({ai.code}) {ai.name} has characters outside GS1 character set 82")
    if ai.code == "01" and not ean.is_valid(value):
        raise InvalidScan("AI (01) GTIN check digit is wrong")


def _expiry(value: str) -> date:
    yy, mm, dd = int(value[:2]), int(value[2:4]), int(value[4:6])
    # GS1 General Specifications 7.12: a two-digit year lies within -49..+50 years of today.
    year = 2000 + yy
    if year - date.today().year > 50:
        year -= 100
    if not 1 <= mm <= 12:
        raise InvalidScan("AI (17) expiry month is not 01–12")
    if dd == 0:  # "day 00" means the last day of the month
        nxt = date(year + (mm == 12), 1 if mm == 12 else mm + 1, 1)
        return date.fromordinal(nxt.toordinal() - 1)
    try:
        return date(year, mm, dd)
    except ValueError as exc:
        raise InvalidScan(f"AI (17) expiry is not a real date: {value}") from exc


def _pairs_parenthesised(text: str) -> list[tuple[str, str]]:
    parts = re.findall(r"\((\d{2,4})\)([^()]*)", text)
    if not parts or "".join(f"({a}){v}" for a, v in parts) != text:
        raise InvalidScan("GS1 human-readable form must be (AI)value(AI)value…")
    return parts


def _pairs_raw(text: str) -> list[tuple[str, str]]:
    pairs: list[tuple[str, str]] = []
    pos = 0
    while pos < len(text):
        if text[pos] == GS:
            pos += 1
            continue
        code = text[pos : pos + 2]
        ai = _AIS.get(code)
        if ai is None:
            raise InvalidScan(f"unsupported GS1 application identifier ({code})", f"position {pos}")
        pos += 2
        if ai.fixed is not None:
            value = text[pos : pos + ai.fixed]
            pos += ai.fixed
        else:
            end = text.find(GS, pos)
            end = len(text) if end < 0 else end
            value = text[pos:end]
            pos = end
        pairs.append((code, value))
    return pairs


def parse_gs1(scan: str) -> GS1Element:
    text = scan.strip()
    text = _SYMBOLOGY_RE.sub("", text, count=1)
    if not text:
        raise InvalidScan("empty GS1 scan")
    pairs = _pairs_parenthesised(text) if text.startswith("(") else _pairs_raw(text)
    seen: dict[str, str] = {}
    for code, value in pairs:
        ai = _AIS.get(code)
        if ai is None:
            raise InvalidScan(f"unsupported GS1 application identifier ({code})")
        if code in seen:
            raise InvalidScan(f"AI ({code}) appears twice")
        _check_value(ai, value)
        seen[code] = value
    return GS1Element(
        gtin=seen.get("01"),
        batch=seen.get("10"),
        expiry=_expiry(seen["17"]) if "17" in seen else None,
        serial=seen.get("21"),
    )


def looks_like_gs1(scan: str) -> bool:
    s = scan.strip()
    return (
        bool(_SYMBOLOGY_RE.match(s))
        or s.startswith("(01)")
        or s.startswith("(10)")
        or (len(s) >= 16 and s[:2] in _AIS and s[:2] == "01" and s[2:16].isdigit())
    )
