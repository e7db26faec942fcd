from __future__ import annotations

import contextlib

import pytest
from hypothesis import given
from hypothesis import strategies as st

from hub.errors import InvalidScan
from hub.identity.isbt128 import check_character, check_value, make_coi, parse_coi, parse_isbt128


# Published ISO/IEC 7064 mod 37-2 examples for ISBT 128:
# - UK Red Book annex 2 (JPAC): donation number G123 498 654 321 -> H (checksum 17, barcode flag 77)
# - ICCBBA's DIN example A9998 18 123456 -> N (LIBRARIES.md, measured with python-stdnum)
@pytest.mark.parametrize(
    ("data", "expected", "value"),
    [("G123498654321", "H", 17), ("A99981812345" + "6", "N", 23)],
)
def test_published_check_characters(data: str, expected: str, value: int) -> None:
    assert check_character(data) == expected
    assert check_value(data) == value


def test_coi_shape_and_round_trip() -> None:
    coi = make_coi("A9998", 2026, 42)
    assert coi.data == "CHA999826000042"
    assert len(coi.data) == 15
    assert coi.barcode == "&/CHA999826000042"
    assert coi.check == check_character(coi.data)
    assert parse_coi(coi.barcode) == coi
    assert parse_coi(coi.eye_readable, require_check=True) == coi
    assert parse_coi(coi.data.lower()) == coi


def test_coi_wrong_check_character_is_refused_with_reason() -> None:
    coi = make_coi("A9998", 2026, 1)
    wrong = "0" if coi.check != "0" else "1"
    with pytest.raises(InvalidScan, match="check character"):
        parse_coi(coi.data + wrong)


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("&/CHA99982600001", "15 data characters"),
        ("&/XXA999826000001", "CH \\+ FIN"),
        ("&/CHO999826000001", "CH \\+ FIN"),  # a FIN never starts with O
        ("&/CHA99982A000001", "CH \\+ FIN"),
    ],
)
def test_coi_format_errors(text: str, reason: str) -> None:
    with pytest.raises(InvalidScan, match=reason):
        parse_coi(text)


def test_keyed_coi_needs_its_check_character() -> None:
    with pytest.raises(InvalidScan, match="check character"):
        parse_coi("CHA999826000001", require_check=True)


@given(st.integers(min_value=1, max_value=999_999), st.integers(min_value=2000, max_value=2099))
def test_any_single_character_substitution_is_caught(number: int, year: int) -> None:
    coi = make_coi("A9998", year, number)
    text = coi.data + coi.check
    for i in range(2, 15):
        for replacement in "0123456789":
            if replacement == text[i]:
                continue
            altered = text[:i] + replacement + text[i + 1 :]
            try:
                parse_coi(altered)
            except InvalidScan:
                continue
            pytest.fail(f"substitution at {i} not detected: {altered}")


def test_single_structures() -> None:
    [coi] = parse_isbt128("&/CHA999826000001")
    assert (coi.number, coi.data) == ("040", "CHA999826000001")
    [product] = parse_isbt128("=<E0685V00")
    assert product.number == "003"
    [din] = parse_isbt128("=A99981812345600")
    assert din.number == "001"


def test_din_flag_check_value() -> None:
    good = 60 + check_value("A999818123456")
    [din] = parse_isbt128(f"=A999818123456{good}")
    assert din.data.endswith(str(good))
    with pytest.raises(InvalidScan, match="flag check value"):
        parse_isbt128(f"=A999818123456{good - 1 if good > 60 else good + 1}")


def test_compound_message() -> None:
    found = parse_isbt128("=+02000&/CHA999826000001=<E0685V00")
    assert [d.number for d in found] == ["040", "003"]
    with pytest.raises(InvalidScan, match="announces 3"):
        parse_isbt128("=+03000&/CHA999826000001=<E0685V00")
    with pytest.raises(InvalidScan, match="=\\+aabbb"):
        parse_isbt128("=+0x000&/CHA999826000001")


@pytest.mark.parametrize(
    ("scan", "reason"),
    [
        ("", "empty"),
        ("&/CHA999826000001X", "characters but the scan has"),
        ("=<E0685", "needs 8 data characters"),
        ("%%ABC", "unknown or unsupported"),
        ("&/CHA99982600000\u00e9", "printable ASCII"),
    ],
)
def test_rejects_with_reason(scan: str, reason: str) -> None:
    with pytest.raises(InvalidScan, match=reason):
        parse_isbt128(scan)


@given(st.text(max_size=80))
def test_parser_never_crashes(text: str) -> None:
    with contextlib.suppress(InvalidScan):
        parse_isbt128(text)
