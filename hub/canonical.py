"""Canonical JSON: the exact bytes the hub hashes and stores (sorted keys, no whitespace, UTF-8)."""

from __future__ import annotations

import hashlib
from typing import Any

import orjson

_OPTS = orjson.OPT_SORT_KEYS | orjson.OPT_UTC_Z | orjson.OPT_NAIVE_UTC


def dumps(value: Any) -> str:
    return orjson.dumps(value, option=_OPTS).decode()


def dumpb(value: Any) -> bytes:
    return orjson.dumps(value, option=_OPTS)


def loads(value: str | bytes) -> Any:
    return orjson.loads(value)


def sha256_hex(data: bytes | str) -> str:
    if isinstance(data, str):
        data = data.encode()
    return hashlib.sha256(data).hexdigest()
