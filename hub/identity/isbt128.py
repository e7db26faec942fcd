"""ISBT 128: the chain-of-identity identifier, check characters, and barcode data structures.

* CoI identifier (ST-028, data structure 040): data identifier ``&/`` then 15 data characters
  ``CH`` + FIN (5) + year (2) + sequence (6). Printed as text it carries a check character,
  ISO/IEC 7064 mod 37-2 over the 15 data characters.
* Check characters come from python-stdnum's ``iso7064.mod_37_2`` (it reproduces the published
  examples: ``G123498654321`` → ``H``; see tests).
* Scanned data structures are recognised by their data identifier and checked for length and
  format before anything is interpreted; a compound message (``=+aabbb``) is split into the
  structures it announces and must contain exactly that many.

Only the data structures the hub reads are recognised; any other data identifier is rejected
with its name, never guessed at.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from stdnum.iso7064 import mod_37_2

from hub.errors import InvalidScan

COI_DI = "&/"
_ALPHABET = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZ*"
# FIN: first character A–N, P–Z or 1–9 (never O or 0), then four digits.
_FIN = r"[A-NP-Z1-9][0-9]{4}"
_FIN_RE = re.compile(f"^{_FIN}$")
_COI_DATA_RE = re.compile(rf"^CH(?P<fin>{_FIN})(?P<yy>[0-9]{{2}})(?P<seq>[0-9A-Z]{{6}})$")
_COI_SHAPE_RE = re.compile(rf"^CH{_FIN}[0-9]{{2}}[0-9A-Z]{{6}}[0-9A-Z*]?$", re.IGNORECASE)


def looks_like_coi(text: str) -> bool:
    """Whether ``text`` has a CoI's shape in any letter case, with or without its check character
    (so a lower-case or miskeyed one is refused with its reason instead of passing as other data)."""
    return _COI_SHAPE_RE.match(text) is not None


def check_character(data: str) -> str:
    """ISO/IEC 7064 mod 37-2 check character over ISBT 128 data characters."""
    return str(mod_37_2.calc_check_digit(data))


def check_value(data: str) -> int:
    """The numeric 37-2 checksum (0–36); DIN flag characters carry it as ``60 + value``."""
    return _ALPHABET.index(check_character(data))


@dataclass(frozen=True)
class CoI:
    """A chain-of-identity identifier (data content only, no data identifier)."""

    fin: str
    year: str
    sequence: str

    @property
    def data(self) -> str:
        return f"CH{self.fin}{self.year}{self.sequence}"

    @property
    def check(self) -> str:
        return check_character(self.data)

    @property
    def barcode(self) -> str:
        """What a Code 128 / Data Matrix symbol encodes."""
        return f"{COI_DI}{self.data}"

    @property
    def eye_readable(self) -> str:
        """Grouped for people, with the check character boxed off at the end."""
        return f"CH {self.fin} {self.year} {self.sequence} {self.check}"

    def __str__(self) -> str:
        return self.data


def make_coi(fin: str, year: int, number: int) -> CoI:
    if not _FIN_RE.match(fin):
        raise ValueError(f"{fin!r} is not a valid ISBT 128 facility identification number (FIN)")
    if not 0 < number <= 999_999:
        raise ValueError("CoI sequence exhausted for this facility and year")
    return CoI(fin, f"{year % 100:02d}", f"{number:06d}")


def parse_coi(text: str, *, require_check: bool = False, printed: bool = False) -> CoI:
    """Parse a CoI from a scan (``&/CH…``), from eye-readable text (spaces allowed, with its check
    character) or from bare data content. A check character, when present, must be right.

    Text a person typed is upper-cased first. ``printed`` text (read from a barcode) is taken
    exactly as encoded: ISBT 128 data characters are upper case, so a lower-case CoI on a label is
    a labelling fault to be refused, not silently repaired."""
    raw = text.strip().replace(" ", "")
    if printed and raw != raw.upper():
        raise InvalidScan("CoI in a barcode must be upper case; this label is misprinted")
    raw = raw.upper()
    if raw.startswith(COI_DI):
        raw = raw[2:]
    check: str | None = None
    if len(raw) == 16:
        raw, check = raw[:15], raw[15]
    elif len(raw) != 15:
        raise InvalidScan(f"CoI must have 15 data characters (+1 check character), got {len(raw)}")
    m = _COI_DATA_RE.match(raw)
    if not m:
        raise InvalidScan("CoI is not CH + FIN (5) + year (2) + sequence (6)")
    coi = CoI(m["fin"], m["yy"], m["seq"])
    if check is None and require_check:
        raise InvalidScan("CoI keyed by hand must end with its check character")
    if check is not None and check != coi.check:
        raise InvalidScan(f"CoI check character is {check!r}, expected {coi.check!r}")
    return coi


# ----------------------------------------------------------------------------- barcode structures
@dataclass(frozen=True)
class DataStructure:
    number: str
    name: str
    identifier: str  # the two-character data identifier as scanned (for DIN, '=' + first data char)
    data: str  # data content (after the data identifier)


@dataclass(frozen=True)
class _Spec:
    number: str
    name: str
    di: str
    pattern: re.Pattern[str]
    length: int  # data characters after the two-character data identifier


# Fixed-length structures keyed by their two-character data identifier.
_SPECS: dict[str, _Spec] = {
    s.di: s
    for s in (
        _Spec("002", "Blood Groups [ABO and RhD]", "=%", re.compile(r"^[0-9A-Z]{4}$"), 4),
        _Spec("003", "Product Code", "=<", re.compile(r"^[A-Z][0-9A-Z]{4}[0-9A-Z][0-9A-Z]{2}$"), 8),
        _Spec("004", "Expiration Date", "=>", re.compile(r"^[0-9]{6}$"), 6),
        _Spec("005", "Expiration Date and Time", "&>", re.compile(r"^[0-9]{10}$"), 10),
        _Spec("006", "Collection Date", "=*", re.compile(r"^[0-9]{6}$"), 6),
        _Spec("007", "Collection Date and Time", "&*", re.compile(r"^[0-9]{10}$"), 10),
        _Spec("040", "Chain of Identity Identifier", COI_DI, _COI_DATA_RE, 15),
    )
}
_DIN_RE = re.compile(rf"^(?P<din>{_FIN}[0-9]{{2}}[0-9]{{6}})(?P<flags>[0-9]{{2}})$")
_COMPOUND_DI = "=+"


@dataclass(frozen=True)
class DIN:
    """Donation Identification Number (data structure 001)."""

    data: str  # 13 characters: FIN + year + sequence
    flags: str

    @property
    def check(self) -> str:
        return check_character(self.data)


def _parse_din(body: str) -> tuple[DataStructure, int]:
    # '=' then αppppyynnnnnnff (15 characters)
    chunk = body[:15]
    m = _DIN_RE.match(chunk)
    if len(chunk) < 15 or not m:
        raise InvalidScan("Donation Identification Number must be =αppppyynnnnnnff (16 characters)")
    flags = m["flags"]
    value = int(flags)
    if 60 <= value <= 96 and value - 60 != check_value(m["din"]):
        raise InvalidScan(
            f"DIN flag check value {flags} does not match the DIN (expected {60 + check_value(m['din'])})"
        )
    return DataStructure("001", "Donation Identification Number", "=" + chunk[0], chunk), 16


def _parse_one(scan: str, pos: int) -> tuple[DataStructure, int]:
    di = scan[pos : pos + 2]
    if len(di) < 2:
        raise InvalidScan("truncated ISBT 128 data identifier", f"position {pos}")
    spec = _SPECS.get(di)
    if spec is not None:
        data = scan[pos + 2 : pos + 2 + spec.length]
        if len(data) != spec.length:
            raise InvalidScan(
                f"{spec.name} ({spec.number}) needs {spec.length} data characters, got {len(data)}",
                f"position {pos}",
            )
        if not spec.pattern.match(data):
            raise InvalidScan(f"{spec.name} ({spec.number}) has the wrong format", f"position {pos}")
        return DataStructure(spec.number, spec.name, di, data), spec.length + 2
    if di[0] == "=" and re.match(r"[A-NP-Z1-9]", di[1]):
        ds, used = _parse_din(scan[pos + 1 :])
        return ds, used
    raise InvalidScan(f"unknown or unsupported ISBT 128 data identifier {di!r}", f"position {pos}")


def parse_isbt128(scan: str) -> list[DataStructure]:
    """Parse one scanned ISBT 128 symbol: a single data structure or a compound message."""
    scan = scan.strip()
    if not scan:
        raise InvalidScan("empty scan")
    if not scan.isascii() or not scan.isprintable():
        raise InvalidScan("ISBT 128 data must be printable ASCII")
    if scan.startswith(_COMPOUND_DI):
        header = scan[2:7]
        if len(header) != 5 or not header.isdigit():
            raise InvalidScan("compound message must start =+aabbb (aa structures, bbb message type)")
        count = int(header[:2])
        if count < 2:
            raise InvalidScan("a compound message announces at least 2 data structures")
        pos, found = 7, []
        while pos < len(scan):
            ds, used = _parse_one(scan, pos)
            found.append(ds)
            pos += used
        if len(found) != count:
            raise InvalidScan(f"compound message announces {count} data structures but holds {len(found)}")
        return found
    ds, used = _parse_one(scan, 0)
    if used != len(scan):
        raise InvalidScan(f"{ds.name} ({ds.number}) is {used} characters but the scan has {len(scan)}")
    return [ds]
