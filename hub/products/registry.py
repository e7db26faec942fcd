"""Loads the product definitions shipped with the hub (and any extra directory)."""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

import yaml

from hub.errors import ValidationFailed
from hub.products.schemas import Product

DEFINITIONS = Path(__file__).parent / "definitions"


def load_products(directory: Path = DEFINITIONS) -> dict[str, Product]:
    products: dict[str, Product] = {}
    for path in sorted(directory.glob("*.yaml")):
        product = Product.model_validate(yaml.safe_load(path.read_text(encoding="utf-8")))
        if product.code in products:
            raise ValueError(f"duplicate product code {product.code} in {path}")
        products[product.code] = product
    return products


@lru_cache(maxsize=1)
def products() -> dict[str, Product]:
    return load_products()


def get_product(code: str) -> Product:
    try:
        return products()[code]
    except KeyError:
        raise ValidationFailed(f"unknown therapy product {code!r}; known: {', '.join(sorted(products()))}") from None
