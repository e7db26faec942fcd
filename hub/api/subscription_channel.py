"""What a rest-hook Subscription's channel may say, checked when it is created (so the partner is
told) and again by the delivery worker (for Subscriptions stored before a rule existed).

* ``channel.header`` lines are ``Name: value`` that an HTTP client can put on the wire: httpx
  refuses a non-ASCII value with UnicodeEncodeError, which failed every notification after.
* The partner's Standard Webhooks secret: ``whsec_`` + base64 bytes, or any other text used as
  its UTF-8 bytes (our documented choice for unprefixed secrets).
"""

from __future__ import annotations

import base64
import binascii
import re

# RFC 9110 §5.1 field name (a token) and §5.5 field value (visible ASCII, space, tab): what an
# HTTP client can put on the wire. httpx refuses anything else with UnicodeEncodeError.
_FIELD_NAME = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")
_FIELD_VALUE = re.compile(r"[\t\x20-\x7e]*")
# Headers the hub sets itself (or the HTTP client computes): a Subscription may not replace them.
RESERVED_HEADERS = frozenset(
    {"host", "content-length", "transfer-encoding", "connection", "content-type"}
    | {"webhook-id", "webhook-timestamp", "webhook-signature"}
)
RESERVED_PREFIX = "x-cgt-"


def secret_bytes(secret: str) -> bytes:
    """The HMAC key of a Standard Webhooks secret; ValueError when a ``whsec_`` secret is not base64."""
    if secret.startswith("whsec_"):
        try:
            # Decoded as the reference library does (characters outside base64 are skipped).
            key = base64.b64decode(secret.removeprefix("whsec_"))
        except binascii.Error as exc:
            raise ValueError("a whsec_ webhook secret must be followed by standard base64") from exc
        if not key:
            raise ValueError("the whsec_ webhook secret is empty")
        return key
    return secret.encode()


def header_line(line: object) -> tuple[str, str]:
    """``Name: value`` of a Subscription ``channel.header`` line; ValueError saying what is wrong."""
    if not isinstance(line, str):
        raise ValueError("each header line must be a string 'Name: value'")
    name, sep, value = line.partition(":")
    name, value = name.strip(), value.strip()
    if not sep or not _FIELD_NAME.fullmatch(name):
        raise ValueError("a header line must be 'Name: value' with a name of letters, digits and -")
    if not _FIELD_VALUE.fullmatch(value):
        raise ValueError("a header value may hold only printable ASCII (no accents, no line breaks)")
    if name.lower() in RESERVED_HEADERS or name.lower().startswith(RESERVED_PREFIX):
        raise ValueError(f"the hub sets the {name} header itself; choose another name")
    return name, value
