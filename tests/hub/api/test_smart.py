"""SMART Backend Services: discovery, token issuance, and the attacks the token endpoint refuses."""

from __future__ import annotations

import base64
import json
import threading
import time
import uuid
from http.server import BaseHTTPRequestHandler, HTTPServer

import httpx
import pytest
import respx
from fastapi.testclient import TestClient
from joserfc import jwt
from joserfc.jwk import OctKey

from hub.api.app import create_app
from hub.api.auth import JwksCache, cache_lifetime
from hub.context import HubContext
from hub.db.uow import Store
from hub.partners.loader import PartnerDirectory
from hub.settings import Settings
from tests.hub.api.conftest import ClientKey, assertion, bearer, token_form
from tests.hub.api.fhir_data import order

AUD = "http://testserver/auth/token"


def test_discovery(api: TestClient) -> None:
    for path in ("/.well-known/smart-configuration", "/fhir/.well-known/smart-configuration"):
        conf = api.get(path).json()
        assert conf["token_endpoint"] == AUD
        assert conf["token_endpoint_auth_signing_alg_values_supported"] == ["RS384", "ES384"]
        assert conf["grant_types_supported"] == ["client_credentials"]
    cs = api.get("/fhir/metadata").json()
    security = cs["rest"][0]["security"]
    assert security["service"][0]["coding"][0]["code"] == "SMART-on-FHIR"
    assert security["extension"][0]["extension"][0]["valueUri"] == AUD


@pytest.mark.parametrize("partner", ["st-marys", "lakeside-hospital"])  # ES384 and RS384
def test_token_issued_for_both_algorithms(api: TestClient, client_keys: dict[str, ClientKey], partner: str) -> None:
    r = api.post(
        "/auth/token", data=token_form(client_keys[partner], AUD, "system/ServiceRequest.rs system/Banana.cruds")
    )
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["token_type"] == "bearer"
    assert body["expires_in"] <= 300
    assert body["scope"] == "system/ServiceRequest.rs"  # a subset: what was asked and is allowed
    assert "refresh_token" not in body
    assert r.headers["cache-control"] == "no-store"
    claims = json.loads(base64.urlsafe_b64decode(body["access_token"].split(".")[1] + "=="))
    assert claims["exp"] - claims["iat"] <= 300


def _refused(api: TestClient, form: dict[str, str], error: str = "invalid_client") -> str:
    r = api.post("/auth/token", data=form)
    assert r.status_code in (400, 401), r.text
    assert r.json()["error"] == error, r.text
    assert "access_token" not in r.text
    return str(r.json()["error_description"])


def test_alg_none_refused(api: TestClient, client_keys: dict[str, ClientKey]) -> None:
    ck = client_keys["st-marys"]
    enc = lambda d: base64.urlsafe_b64encode(json.dumps(d).encode()).rstrip(b"=").decode()  # noqa: E731
    claims = {"iss": ck.client_id, "sub": ck.client_id, "aud": AUD, "exp": int(time.time()) + 60, "jti": "x1"}
    form = token_form(ck, AUD)
    form["client_assertion"] = f"{enc({'alg': 'none', 'typ': 'JWT'})}.{enc(claims)}."
    assert "RS384 or ES384" in _refused(api, form)


def test_hmac_with_public_key_refused(api: TestClient, client_keys: dict[str, ClientKey]) -> None:
    ck = client_keys["lakeside-hospital"]
    public = json.dumps(ck.key.as_dict(private=False)).encode()
    forged = jwt.encode(
        {"alg": "HS256"},
        {"iss": ck.client_id, "sub": ck.client_id, "aud": AUD, "exp": int(time.time()) + 60, "jti": "x2"},
        OctKey.import_key(public),
    )
    form = token_form(ck, AUD)
    form["client_assertion"] = forged
    _refused(api, form)


def test_wrong_signature_refused(api: TestClient, client_keys: dict[str, ClientKey]) -> None:
    # st-marys' client id, signed with leiden's key
    sm, ld = client_keys["st-marys"], client_keys["leiden-cell-factory"]
    form = token_form(sm, AUD)
    form["client_assertion"] = assertion(ClientKey(sm.client_id, sm.partner, ld.key, "ES384"), AUD)
    assert "signature" in _refused(api, form)


def test_wrong_aud_refused(api: TestClient, client_keys: dict[str, ClientKey]) -> None:
    assert "aud" in _refused(api, token_form(client_keys["st-marys"], "https://evil.example/token"))


def test_replayed_jti_refused(api: TestClient, client_keys: dict[str, ClientKey]) -> None:
    form = token_form(client_keys["st-marys"], AUD)
    assert api.post("/auth/token", data=form).status_code == 200
    assert "already used" in _refused(api, form)


def test_expired_refused(api: TestClient, client_keys: dict[str, ClientKey]) -> None:
    assert "expired" in _refused(api, token_form(client_keys["st-marys"], AUD, exp=int(time.time()) - 60))


def test_exp_too_far_ahead_refused(api: TestClient, client_keys: dict[str, ClientKey]) -> None:
    assert "5 minutes" in _refused(api, token_form(client_keys["st-marys"], AUD, exp=int(time.time()) + 3600))


def test_exp_not_a_number_refused(api: TestClient, client_keys: dict[str, ClientKey]) -> None:
    """NaN passed both comparisons and crashed the token endpoint (a 500)."""
    assert "exp" in _refused(api, token_form(client_keys["st-marys"], AUD, exp=float("nan")))


def test_missing_jti_refused(api: TestClient, client_keys: dict[str, ClientKey]) -> None:
    assert "jti" in _refused(api, token_form(client_keys["st-marys"], AUD, jti=None))


def test_unknown_client_refused(api: TestClient, client_keys: dict[str, ClientKey]) -> None:
    ck = client_keys["st-marys"]
    assert "unknown client" in _refused(api, token_form(ClientKey("nobody", "x", ck.key, "ES384"), AUD))


def test_refresh_token_grant_refused(api: TestClient) -> None:
    r = api.post("/auth/token", data={"grant_type": "refresh_token", "refresh_token": "abc"})
    assert r.status_code == 400
    assert r.json()["error"] == "unsupported_grant_type"


def test_scope_not_allowed_refused(api: TestClient, client_keys: dict[str, ClientKey]) -> None:
    _refused(api, token_form(client_keys["st-marys"], AUD, "system/Banana.cruds"), "invalid_scope")


def test_write_with_read_scope_refused(api: TestClient, client_keys: dict[str, ClientKey]) -> None:
    h = bearer(api, client_keys["st-marys"], "system/ServiceRequest.rs system/Patient.rs")
    r = api.post("/fhir/ServiceRequest", json=order(), headers=h)
    assert r.status_code == 403
    assert r.json()["issue"][0]["code"] == "forbidden"
    assert api.get("/fhir/ServiceRequest", headers=h).status_code == 200
    assert api.get("/fhir/Task", headers=h).status_code == 403  # no Task scope at all


def test_tampered_and_missing_access_tokens(api: TestClient, client_keys: dict[str, ClientKey]) -> None:
    h = bearer(api, client_keys["st-marys"])
    token = h["Authorization"].split()[1]
    head, claims, sig = token.split(".")
    data = json.loads(base64.urlsafe_b64decode(claims + "=="))
    data["partner"] = "lakeside-hospital"
    forged = base64.urlsafe_b64encode(json.dumps(data).encode()).rstrip(b"=").decode()
    for value in (f"Bearer {head}.{forged}.{sig}", "Bearer nonsense", "", f"Basic {token}"):
        r = api.get("/fhir/ServiceRequest", headers={"Authorization": value} if value else {})
        assert r.status_code == 401
        assert r.json()["resourceType"] == "OperationOutcome"


def test_expired_access_token_refused(api: TestClient) -> None:
    from hub.api.auth import TOKEN_ISSUER, _signing_key
    from tests.hub.api.conftest import SECRET_KEY

    class S:
        secret_key = type("K", (), {"get_secret_value": staticmethod(lambda: SECRET_KEY)})()

    old = jwt.encode(
        {"alg": "HS256"},
        {
            "iss": TOKEN_ISSUER,
            "sub": "st-marys-ehr",
            "partner": "st-marys",
            "scope": "system/*.cruds",
            "exp": int(time.time()) - 1,
            "jti": str(uuid.uuid4()),
        },
        _signing_key(S()),  # type: ignore[arg-type]
    )
    assert api.get("/fhir/ServiceRequest", headers={"Authorization": f"Bearer {old}"}).status_code == 401


def test_jwks_cache_follows_cache_headers() -> None:
    now = time.time()
    assert cache_lifetime(httpx.Headers({"cache-control": "public, max-age=120"}), now) == 120
    assert cache_lifetime(httpx.Headers({"cache-control": "no-store"}), now) == 0
    assert cache_lifetime(httpx.Headers({"cache-control": "max-age=999999"}), now) == 24 * 3600
    assert cache_lifetime(httpx.Headers({}), now) == 300


@respx.mock
def test_jwks_url_fetched_and_cached(client_keys: dict[str, ClientKey]) -> None:
    import asyncio

    asyncio.run(_jwks_url_fetched_and_cached(client_keys))


async def _jwks_url_fetched_and_cached(client_keys: dict[str, ClientKey]) -> None:
    ck = client_keys["st-marys"]
    jwks = {"keys": [{**ck.key.as_dict(private=False), "kid": ck.key.kid}]}
    route = respx.get("https://ehr.example/jwks.json").mock(
        return_value=httpx.Response(200, json=jwks, headers={"Cache-Control": "max-age=600"})
    )
    cache = JwksCache()
    keys = await cache.keys("https://ehr.example/jwks.json", kid=ck.key.kid)
    await cache.keys("https://ehr.example/jwks.json", kid=ck.key.kid)
    assert route.call_count == 1
    assert keys.keys[0].kid == ck.key.kid
    respx.get("https://down.example/jwks.json").mock(return_value=httpx.Response(503))
    from hub.api.auth import OAuthError

    with pytest.raises(OAuthError):
        await cache.keys("https://down.example/jwks.json")


def test_jwks_url_served_by_a_real_server(
    store: Store, fhir_partners: PartnerDirectory, fhir_settings: Settings, client_keys: dict[str, ClientKey]
) -> None:
    """The client's JWKS published at a URL (as st-marys' profile has it), fetched over HTTP once and
    reused while its Cache-Control allows."""
    ck = client_keys["st-marys"]
    jwks = json.dumps({"keys": [{**ck.key.as_dict(private=False), "kid": ck.key.kid}]}).encode()
    hits: list[str] = []

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            hits.append(self.path)
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Cache-Control", "public, max-age=600")
            self.end_headers()
            self.wfile.write(jwks)

        def log_message(self, *args: object) -> None:
            return None

    server = HTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}/.well-known/jwks.json"
        profile = fhir_partners.profiles["st-marys"]
        channels = tuple(
            c.model_copy(update={"smart": c.smart.model_copy(update={"jwks": None, "jwks_url": url})})
            if getattr(c, "adapter", None) == "fhir-rest"
            else c
            for c in profile.channels
        )
        partners = PartnerDirectory(
            {**fhir_partners.profiles, "st-marys": profile.model_copy(update={"channels": channels})}
        )
        with TestClient(create_app(HubContext(fhir_settings, store, partners))) as c:
            for _ in range(3):
                assert c.post("/auth/token", data=token_form(ck, AUD, "system/ServiceRequest.rs")).status_code == 200
    finally:
        server.shutdown()
    assert hits == ["/.well-known/jwks.json"]


def test_a_conditional_create_or_reference_needs_the_search_scope(
    api: TestClient, client_keys: dict[str, ClientKey]
) -> None:
    """Both search, and a conditional create answers with the match: with create alone, a token
    could read what it was never granted search or read on."""
    h = bearer(api, client_keys["st-marys"], scope="system/Observation.c system/ServiceRequest.r")
    body = {"resourceType": "Observation", "status": "final", "code": {"text": "x"}}
    r = api.post("/fhir/Observation", json=body, headers={**h, "If-None-Exist": "identifier=urn:x|1"})
    assert r.status_code == 403, r.text
    assert "system/Observation.s" in r.json()["issue"][0]["diagnostics"]
    ref = {**body, "basedOn": [{"reference": "ServiceRequest?identifier=urn:x|1"}]}
    tx = {
        "resourceType": "Bundle",
        "type": "transaction",
        "entry": [{"resource": ref, "request": {"method": "POST", "url": "Observation"}}],
    }
    r = api.post("/fhir", json=tx, headers=h)
    assert r.status_code == 403, r.text
    assert "system/ServiceRequest.s" in r.json()["issue"][0]["diagnostics"]
    assert api.post("/fhir/Observation", json=body, headers=h).status_code == 201  # plain create: fine


def _with_smart(partners: PartnerDirectory, **update: object) -> PartnerDirectory:
    """st-marys' profile with its SMART client registration changed."""
    profile = partners.profiles["st-marys"]
    channels = tuple(
        c.model_copy(update={"smart": c.smart.model_copy(update=update)})
        if getattr(c, "adapter", None) == "fhir-rest"
        else c
        for c in profile.channels
    )
    return PartnerDirectory({**partners.profiles, "st-marys": profile.model_copy(update={"channels": channels})})


def _with_jwks_url(partners: PartnerDirectory, url: str) -> PartnerDirectory:
    """st-marys' client registered by a JWKS URL instead of an inline JWKS."""
    return _with_smart(partners, jwks=None, jwks_url=url)


@pytest.mark.parametrize(
    "name", ["bare_jwk", "empty_object", "list", "string", "keys_not_a_list", "unknown_crv", "oct_key", "deep"]
)
@respx.mock
def test_a_malformed_jwks_document_is_invalid_client(
    store: Store,
    fhir_partners: PartnerDirectory,
    fhir_settings: Settings,
    client_keys: dict[str, ClientKey],
    name: str,
) -> None:
    """joserfc raised KeyError / TypeError (and json RecursionError) for these: a 500."""
    ck = client_keys["st-marys"]
    public = {**ck.key.as_dict(private=False), "kid": ck.key.kid}
    docs = {
        "bare_jwk": json.dumps(public).encode(),
        "empty_object": b"{}",
        "list": json.dumps([public]).encode(),
        "string": b'"keys"',
        "keys_not_a_list": b'{"keys": {"kty": "EC"}}',
        "unknown_crv": b'{"keys": [{"kty": "EC", "crv": "P-999", "x": "AA", "y": "AA"}]}',
        "oct_key": b'{"keys": [{"kty": "oct", "k": "c2VjcmV0"}]}',
        "deep": b"[" * 100_000 + b"]" * 100_000,
    }
    url = "https://ehr.example/jwks.json"
    respx.get(url).mock(return_value=httpx.Response(200, content=docs[name]))
    app = create_app(HubContext(fhir_settings, store, _with_jwks_url(fhir_partners, url)))
    with TestClient(app, raise_server_exceptions=False) as c:
        r = c.post("/auth/token", data=token_form(ck, AUD, "system/ServiceRequest.rs"))
    assert r.status_code == 401, r.text
    assert r.json()["error"] == "invalid_client"
    assert "JWKS" in r.json()["error_description"]


@pytest.mark.parametrize(
    "jwks",
    [
        {"keys": [{"kty": "EC", "crv": "P-999", "x": "AA", "y": "AA"}]},
        {"keys": [{"kty": "RSA", "n": "!!", "e": "AQAB"}]},
    ],
)
def test_a_profile_with_an_unusable_inline_jwks_is_refused_at_load(jwks: dict[str, object]) -> None:
    from pydantic import ValidationError

    from hub.api.smart_schemas import SmartClientSettings

    with pytest.raises(ValidationError, match=r"crv|not a valid key set"):
        SmartClientSettings(jwks=jwks)


class _JwksServer:
    """A JWKS URL that drips its answer (one byte a second) or sends an endless body."""

    def __init__(self, mode: str, doc: bytes) -> None:
        import socket

        self.mode, self.doc = mode, doc
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self.sock.getsockname()[1]}/jwks.json"
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        conn, _ = self.sock.accept()
        with conn:
            conn.recv(65536)
            try:
                if self.mode == "drip":
                    body = b" " * 8 + self.doc
                    conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % len(body))
                    for byte in body:
                        time.sleep(1.0)
                        conn.sendall(bytes([byte]))
                else:  # no Content-Length: the body ends when the connection closes
                    conn.sendall(b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\n")
                    for _ in range(64 * 16):  # 64 MiB
                        conn.sendall(b" " * 65536)
            except OSError:
                return  # the hub gave up and closed the connection, as it should

    def close(self) -> None:
        self.sock.close()


@pytest.mark.parametrize("mode", ["drip", "endless"])
def test_a_jwks_fetch_has_a_total_deadline_and_a_size_cap(client_keys: dict[str, ClientKey], mode: str) -> None:
    """httpx's timeout is per read: a byte a second kept the token request waiting for minutes, and
    the body was read whole into memory whatever its size."""
    import asyncio

    from hub.api.auth import OAuthError

    ck = client_keys["st-marys"]
    server = _JwksServer(mode, json.dumps({"keys": [ck.key.as_dict(private=False)]}).encode())
    started = time.perf_counter()
    try:
        with pytest.raises(OAuthError) as refused:
            asyncio.run(JwksCache(timeout_s=1.5).keys(server.url))
    finally:
        server.close()
    assert time.perf_counter() - started < 3.0
    assert refused.value.status == 401
    assert ("within 1.5 s" if mode == "drip" else "larger than 256 KiB") in refused.value.message


@respx.mock
def test_a_jwks_with_a_large_content_length_is_refused_unread() -> None:
    import asyncio

    from hub.api.auth import OAuthError

    respx.get("https://ehr.example/big.json").mock(return_value=httpx.Response(200, content=b" " * 300_000))
    with pytest.raises(OAuthError, match="larger than"):
        asyncio.run(JwksCache().keys("https://ehr.example/big.json"))


def test_jwks_cache_lifetime_is_that_of_a_private_cache() -> None:
    now = time.time()
    life = lambda cc: cache_lifetime(httpx.Headers({"cache-control": cc}), now)  # noqa: E731
    assert life("s-maxage=86400, max-age=0") == 0  # s-maxage is for shared caches only
    assert life("s-maxage=86400") == 300  # ... so the default applies
    assert life('max-age=60, no-cache="set-cookie"') == 60  # no-cache of a header field, not the body
    assert life("no-cache") == 0
    for invalid in ("max-age=abc", "max-age=1.5", "max-age=-5", "max-age="):
        assert life(invalid) == 0, invalid  # an invalid max-age makes the response stale
    naive = httpx.Headers({"expires": "Thu, 01 Jan 2099 00:00:00 -0000"})
    assert cache_lifetime(naive, now) == 24 * 3600


def test_an_assertion_accepted_within_the_clock_skew_cannot_be_replayed(
    api: TestClient, client_keys: dict[str, ClientKey]
) -> None:
    """exp 2 s ago is still accepted (5 s of clock skew), but its jti row was kept only until exp:
    the next request purged it and took the same assertion again."""
    form = token_form(client_keys["st-marys"], AUD, "system/ServiceRequest.rs", exp=int(time.time()) - 2)
    assert api.post("/auth/token", data=form).status_code == 200
    assert "already used" in _refused(api, form)


@pytest.mark.parametrize(
    ("claims", "problem"),
    [
        ({"nbf": 3600}, "nbf (not valid before) is in the future"),
        ({"iat": 3600}, "iat (issued at) is in the future"),
        ({"nbf": "soon"}, "nbf must be a number"),
        ({"iat": True}, "iat must be a number"),
        ({"iat": float("nan")}, "iat must be a number"),
    ],
)
def test_an_assertion_not_yet_valid_is_refused(
    api: TestClient, client_keys: dict[str, ClientKey], claims: dict[str, object], problem: str
) -> None:
    now = int(time.time())
    shifted = {k: now + v if isinstance(v, int) and not isinstance(v, bool) else v for k, v in claims.items()}
    assert problem in _refused(api, token_form(client_keys["st-marys"], AUD, **shifted))


def test_nbf_and_iat_within_the_clock_skew_are_accepted(api: TestClient, client_keys: dict[str, ClientKey]) -> None:
    now = int(time.time())
    form = token_form(client_keys["st-marys"], AUD, "system/ServiceRequest.rs", nbf=now + 2, iat=now - 30)
    assert api.post("/auth/token", data=form).status_code == 200


def test_a_token_does_not_outlive_its_client(
    store: Store, fhir_partners: PartnerDirectory, fhir_settings: Settings, client_keys: dict[str, ClientKey]
) -> None:
    """The hub restarted with st-marys' SMART client removed (the partner kept): its token from
    before still read and wrote for up to 5 minutes."""
    ck = client_keys["st-marys"]
    with TestClient(create_app(HubContext(fhir_settings, store, fhir_partners))) as c:
        h = bearer(c, ck, "system/ServiceRequest.rs")
    profile = fhir_partners.profiles["st-marys"]
    channels = tuple(c for c in profile.channels if getattr(c, "adapter", None) != "fhir-rest")
    partners = PartnerDirectory(
        {**fhir_partners.profiles, "st-marys": profile.model_copy(update={"channels": channels})}
    )
    with TestClient(create_app(HubContext(fhir_settings, store, partners))) as c:
        r = c.get("/fhir/ServiceRequest", headers=h)
    assert r.status_code == 401, r.text
    assert "no longer registered" in r.text


def test_a_token_loses_the_scopes_cut_from_its_client(
    store: Store, fhir_partners: PartnerDirectory, fhir_settings: Settings, client_keys: dict[str, ClientKey]
) -> None:
    ck = client_keys["st-marys"]
    with TestClient(create_app(HubContext(fhir_settings, store, fhir_partners))) as c:
        h = bearer(c, ck, "system/ServiceRequest.cruds system/Patient.cruds system/Task.rs")
    cut = _with_smart(fhir_partners, scopes=("system/*.rs",))  # read-only now
    with TestClient(create_app(HubContext(fhir_settings, store, cut))) as c:
        assert c.get("/fhir/ServiceRequest", headers=h).status_code == 200
        assert c.get("/fhir/Task", headers=h).status_code == 200
        r = c.post("/fhir/ServiceRequest", json=order(), headers=h)
        assert r.status_code == 403, r.text
        assert c.get("/fhir/Observation", headers=h).status_code == 403  # never in the token


def test_scope_intersection() -> None:
    from hub.api.auth import still_allowed

    texts = lambda granted, allowed: [s.text for s in still_allowed(granted, allowed)]  # noqa: E731
    assert texts("system/*.cruds", ("system/Task.rs", "system/Patient.read")) == [
        "system/Task.rs",
        "system/Patient.rs",
    ]
    assert texts("system/Task.cu system/Patient.write", ("system/*.rs",)) == []
    assert texts("system/Task.*", ("system/*.cruds",)) == ["system/Task.cruds"]


def test_aud_is_the_configured_public_url_not_the_host_header(
    store: Store, fhir_partners: PartnerDirectory, fhir_settings: Settings, client_keys: dict[str, ClientKey]
) -> None:
    """The expected audience came from request.base_url: an assertion a client made for another
    server was accepted when the request's Host header named that server."""
    ck = client_keys["st-marys"]
    public = "https://hub.example.org/auth/token"
    settings = fhir_settings.model_copy(update={"public_url": "https://hub.example.org"})
    with TestClient(create_app(HubContext(settings, store, fhir_partners))) as c:
        other = token_form(ck, "http://other-fhir-server.example/auth/token", "system/ServiceRequest.rs")
        r = c.post("/auth/token", data=other, headers={"Host": "other-fhir-server.example"})
        assert r.status_code == 401, r.text
        assert public in r.json()["error_description"]
        assert c.post("/auth/token", data=token_form(ck, AUD, "system/ServiceRequest.rs")).status_code == 401
        assert c.post("/auth/token", data=token_form(ck, public, "system/ServiceRequest.rs")).status_code == 200
        conf = c.get("/.well-known/smart-configuration", headers={"Host": "other-fhir-server.example"}).json()
        assert conf["token_endpoint"] == public


@pytest.mark.parametrize(
    ("url", "accepted"),
    [
        ("https://ehr.example/.well-known/jwks.json", True),
        ("http://127.0.0.1:8765/jwks.json", True),
        ("http://localhost/jwks.json", True),
        ("http://ehr.example/.well-known/jwks.json", False),
        ("http://10.20.0.5/jwks.json", False),
    ],
)
def test_keys_and_notifications_travel_over_tls_only(url: str, accepted: bool) -> None:
    """A jwks_url over plain HTTP let anyone on the path answer with their own key and sign client
    assertions as the partner; a notify URL over plain HTTP sent the order (the patient's record)
    in the clear. Both loaded without a word."""
    from pydantic import ValidationError

    from hub.api.smart_schemas import SmartClientSettings

    if accepted:
        SmartClientSettings(jwks_url=url, notify_urls=(url,))
        return
    with pytest.raises(ValidationError, match="must be https://"):
        SmartClientSettings(jwks_url=url)
    with pytest.raises(ValidationError, match="must be https://"):
        SmartClientSettings(notify_urls=("https://ehr.example/hooks", url))
