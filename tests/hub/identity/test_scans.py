"""What a scan means: a GS1-labelled bag carries its CoI as the batch/lot (AI 10)."""

from __future__ import annotations

import pytest

from hub.errors import InvalidScan
from hub.identity.isbt128 import make_coi
from hub.identity.scans import interpret

COI = make_coi("W1234", 2026, 42)
GTIN = "(01)09501101530003"


def test_a_gs1_lot_shaped_like_a_coi_is_the_bags_coi() -> None:
    for lot in (COI.data, COI.data + COI.check):
        assert interpret([("gs1", f"{GTIN}(10){lot}")]).coi == [COI.data]


def test_a_lower_case_coi_lot_is_a_misprinted_label_not_the_same_coi() -> None:
    # GS1 lots are case-sensitive and ISBT 128 data is upper case: "ch…" is not "CH…".
    with pytest.raises(InvalidScan, match="upper case"):
        interpret([("gs1", f"{GTIN}(10){COI.data.lower()}")])


def test_a_coi_lot_with_a_wrong_check_character_is_refused() -> None:
    wrong = "A" if COI.check != "A" else "B"
    with pytest.raises(InvalidScan, match="check character"):
        interpret([("gs1", f"{GTIN}(10){COI.data}{wrong}")])


def test_an_ordinary_lot_starting_with_ch_is_lot_data_not_a_coi() -> None:
    scanned = interpret([("gs1", f"{GTIN}(10)CHARGE-2024-001")])
    assert scanned.coi == []
    assert scanned.recorded[0]["batch"] == "CHARGE-2024-001"


def test_typed_cois_may_be_lower_case_but_need_their_check_character() -> None:
    assert interpret([("keyed", (COI.data + COI.check).lower())]).coi == [COI.data]
