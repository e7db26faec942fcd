"""Courier status mappings as data: ``mappings/couriers/<name>.yaml``.

```yaml
format: easypost            # the dialect that reads the courier's bodies (adapters/couriers/dialects.py)
codes:                      # courier code -> canonical shipment event (hub.logistics.schemas.ShipmentEventKind)
  "FedEx:PU": picked-up
  in_transit: in-transit
```
A code that is not listed is recorded and alerts someone (it is never dropped).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import yaml

from hub.logistics.schemas import ShipmentEventKind


@dataclass(frozen=True)
class CourierMapping:
    name: str
    format: str
    codes: dict[str, ShipmentEventKind]

    def resolve(self, candidates: tuple[str, ...]) -> tuple[str, ShipmentEventKind | None]:
        """(the code recorded, its canonical event or None when no candidate is mapped)."""
        for code in candidates:
            kind = self.codes.get(code)
            if kind is not None:
                return code, kind
        return (candidates[0] if candidates else "(none)"), None


@lru_cache(maxsize=64)
def load_mapping(mappings_dir: Path, name: str) -> CourierMapping:
    from hub.settings import project_path

    mappings_dir = project_path(mappings_dir)
    path = (mappings_dir / f"{name}.yaml").resolve()
    if not path.is_relative_to(mappings_dir.resolve()):
        raise ValueError(f"mapping {name!r} lies outside {mappings_dir}")
    data = yaml.safe_load(path.read_text(encoding="utf-8"))
    if not isinstance(data, dict) or not isinstance(data.get("codes"), dict):
        raise ValueError(f"{path}: a courier mapping needs 'format' and 'codes'")
    from adapters.couriers.dialects import PARSERS

    if data.get("format") not in PARSERS:
        raise ValueError(f"{path}: format must be one of {sorted(PARSERS)}")
    codes = {str(k): ShipmentEventKind(v) for k, v in data["codes"].items()}
    return CourierMapping(name, str(data["format"]), codes)
