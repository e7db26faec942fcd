from __future__ import annotations

import contextlib
from datetime import date

import pytest
from hypothesis import given
from hypothesis import strategies as st

from hub.errors import InvalidScan
from hub.identity.gs1 import GS, parse_gs1


def test_parenthesised_form() -> None:
    e = parse_gs1("(01)09501101530003(17)260131(10)AB-123(21)XYZ")
    assert (e.gtin, e.expiry, e.batch, e.serial) == ("09501101530003", date(2026, 1, 31), "AB-123", "XYZ")


def test_raw_element_string_with_fnc1_and_symbology_identifier() -> None:
    e = parse_gs1(f"]d201095011015300031726013110AB-123{GS}21XYZ")
    assert (e.gtin, e.batch, e.serial) == ("09501101530003", "AB-123", "XYZ")


def test_variable_length_field_does_not_swallow_the_next() -> None:
    # python-stdnum 2.2's gs1_128.info returns batch 'AB-12321XYZ' here; we must not.
    e = parse_gs1("(10)AB-123(21)XYZ")
    assert e.batch == "AB-123"
    assert e.serial == "XYZ"


def test_day_zero_means_end_of_month() -> None:
    assert parse_gs1("(17)270200").expiry == date(2027, 2, 28)


@pytest.mark.parametrize(
    ("scan", "reason"),
    [
        ("(01)09501101530004", "check digit"),
        ("(01)0950110153000", "needs 14"),
        ("(17)261301", "month"),
        ("(17)260230", "not a real date"),
        ("(99)ABC", "unsupported"),
        ("(10)" + "A" * 21, "1–20"),
        ("(10)A B", "character set 82"),
        ("(01)09501101530003(01)09501101530003", "twice"),
        ("01095011015300031", "unsupported GS1 application identifier"),
    ],
)
def test_rejects_with_reason(scan: str, reason: str) -> None:
    with pytest.raises(InvalidScan, match=reason):
        parse_gs1(scan)


@given(st.text(max_size=60))
def test_parser_never_crashes(text: str) -> None:
    with contextlib.suppress(InvalidScan):
        parse_gs1(text)
