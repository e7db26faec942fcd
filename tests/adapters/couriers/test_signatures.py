"""Signature schemes against published vectors (EasyPost corpus; Standard Webhooks' own example)."""

from __future__ import annotations

import json

import pytest

from adapters.couriers.signatures import (
    StaleWebhook,
    easypost_signature,
    fedex_signature,
    signed_headers_for_test,
    standard_signature,
    verify,
)
from hub.errors import AuthenticationFailed
from tests.logistics_support import corpus


def test_easypost_corpus_vector_verifies() -> None:
    fixtures = json.loads(corpus("easypost/client-library-fixtures.json"))["webhooks"]
    body = corpus("easypost/event-body.json").removesuffix(b"\n")  # the trailing newline is not signed
    assert len(body) == 3550
    assert easypost_signature(fixtures["secret"], body) == fixtures["hmac_signature"]
    headers = {"x-hmac-signature": fixtures["hmac_signature"]}
    assert verify("easypost", headers, body, [fixtures["secret"]], now=0, tolerance_s=300).scheme == "easypost"
    # NFC instead of NFKD, or the body with its newline: refused.
    with pytest.raises(AuthenticationFailed):
        verify("easypost", headers, body + b"\n", [fixtures["secret"]], now=0, tolerance_s=300)
    assert easypost_signature("s\u00e9cret", body) == easypost_signature("se\u0301cret", body)


def test_standard_webhooks_published_example() -> None:
    secret = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
    sig = standard_signature(secret, "msg_p5jXN8AQM9LWM0D4loKWxJek", 1614265330, b'{"test": 2432232314}')
    assert sig == "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="


def test_standard_webhooks_rotation_staleness_and_tampering() -> None:
    old, new = "whsec_" + "b2xkLXNlY3JldC1rZXktMTIzNDU2Nzg=", "whsec_" + "bmV3LXNlY3JldC1rZXktODc2NTQzMjE="
    body = b'{"type":"shipment.updated"}'
    headers = signed_headers_for_test(new, body, "msg_1", 1_000_000)
    # Several signatures in one header (the sender signs with both keys while rotating).
    headers["webhook-signature"] = (
        standard_signature(old, "msg_1", 1_000_000, body) + " " + headers["webhook-signature"]
    )
    assert verify("standard-webhooks", headers, body, [new], now=1_000_100, tolerance_s=300).webhook_id == "msg_1"
    assert verify("standard-webhooks", headers, body, [old], now=1_000_100, tolerance_s=300)
    with pytest.raises(StaleWebhook):
        verify("standard-webhooks", headers, body, [new], now=1_000_301, tolerance_s=300)
    with pytest.raises(StaleWebhook):
        verify("standard-webhooks", headers, body, [new], now=999_699, tolerance_s=300)
    with pytest.raises(AuthenticationFailed):
        verify("standard-webhooks", headers, body + b" ", [new], now=1_000_000, tolerance_s=300)
    with pytest.raises(AuthenticationFailed):
        verify("standard-webhooks", headers, body, ["whsec_c29tZW9uZS1lbHNl"], now=1_000_000, tolerance_s=300)


def test_fedex_base64_and_static_token() -> None:
    body = b'{"trackingNumber":"7946"}'
    good = {"fdx-signature": fedex_signature("token-1", body)}
    assert verify("fedex-hmac", good, body, ["token-1"], now=0, tolerance_s=300).scheme == "fedex-hmac"
    with pytest.raises(AuthenticationFailed):
        verify("fedex-hmac", good, body, ["token-2"], now=0, tolerance_s=300)
    assert verify("static-token", {"x-api-key": "abc"}, body, ["abc"], now=0, tolerance_s=300, header="x-api-key")
    with pytest.raises(AuthenticationFailed):
        verify("static-token", {"x-api-key": "abd"}, body, ["abc"], now=0, tolerance_s=300, header="x-api-key")
    with pytest.raises(AuthenticationFailed):
        verify("static-token", {}, body, [], now=0, tolerance_s=300)
