from __future__ import annotations

import pytest
from pydantic import ValidationError

from hub.products.registry import products
from hub.products.schemas import Checkpoint, Product


def test_two_products_are_data() -> None:
    found = products()
    assert {"car-t-fresh", "car-t-cryo"} <= set(found)
    fresh, cryo = found["car-t-fresh"], found["car-t-cryo"]
    assert [s.code for s in fresh.stages] != [s.code for s in cryo.stages]
    assert fresh.viability.window_hours != cryo.viability.window_hours
    assert {s.code for s in cryo.release_panel} - {s.code for s in fresh.release_panel} == {"rcl"}
    for p in found.values():
        assert {c for s in p.stages for c in s.checkpoints} == set(Checkpoint)
        assert p.stages[-1].requires_patient_scan


def test_spec_limits() -> None:
    fresh = products()["car-t-fresh"]
    viability = fresh.spec("viability")
    assert viability is not None
    assert viability.evaluate("70")
    assert not viability.evaluate("69.9")
    assert not viability.evaluate("n/a")
    sterility = fresh.spec("sterility")
    assert sterility is not None
    assert sterility.evaluate("Negative")
    assert not sterility.evaluate("positive")


def test_incoherent_definition_is_refused() -> None:
    data = products()["car-t-fresh"].model_dump(mode="json")
    data["viability"]["must_reach"] = "nowhere"
    with pytest.raises(ValidationError, match="unknown stage"):
        Product.model_validate(data)
    data = products()["car-t-fresh"].model_dump(mode="json")
    data["stages"] = [s for s in data["stages"] if s["code"] != "administered"]
    with pytest.raises(ValidationError):
        Product.model_validate(data)
