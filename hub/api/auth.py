"""SMART Backend Services: client registry, client-assertion checks, access tokens, scopes.

* A partner's client is registered in its profile (``fhir-rest`` channel, ``smart:`` block): its
  public JWKS inline or a ``jwks_url`` (fetched and cached as the response's Cache-Control /
  Expires allow), and the scopes it may be granted.
* ``POST /auth/token`` takes ``grant_type=client_credentials`` with a ``private_key_jwt`` client
  assertion signed RS384 or ES384 (nothing else: ``none`` and HMAC are refused). The assertion's
  ``iss`` = ``sub`` = client id, ``aud`` = this token endpoint, ``exp`` in the future and at most
  five minutes ahead, ``nbf``/``iat`` not in the future, and a ``jti`` never seen before: each
  accepted ``jti`` is stored under a primary key until it expires (plus the clock skew it is still
  accepted within), so a replay (even a concurrent one) hits the key and is refused.
* The access token is a JWT (HS256, key derived from ``CGTHUB_SECRET_KEY``) valid for 300 s at
  most. No refresh tokens: a ``refresh_token`` grant is refused (``unsupported_grant_type``).
* Scopes are SMART ``system/<Type>.<cruds>`` (v2) or ``.read``/``.write``/``.*`` (v1). Every FHIR
  interaction names the letter it needs (``c`` create, ``r`` read/vread/history, ``u`` update,
  ``d`` delete, ``s`` search) and is refused with 403 without it.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import logging
import math
import time
import uuid
from dataclasses import dataclass, field
from datetime import UTC
from email.utils import parsedate_to_datetime
from typing import Any

import httpx
from joserfc import jwt
from joserfc.errors import JoseError
from joserfc.jwk import KeySet, OctKey
from sqlalchemy import delete, insert
from sqlalchemy.exc import IntegrityError

from hub.api.smart_schemas import SCOPE_RE, SmartClientSettings
from hub.db.models_fhirapi import SmartAssertion
from hub.db.uow import Store, Work
from hub.errors import AuthenticationFailed, Conflict, Forbidden, HubError
from hub.partners.loader import PartnerDirectory
from hub.settings import Settings

log = logging.getLogger(__name__)

ASSERTION_ALGS = ("RS384", "ES384")
ASSERTION_TYPE = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
ASSERTION_MAX_AHEAD_S = 300  # exp at most 5 minutes ahead (SMART Backend Services)
CLOCK_SKEW_S = 5
TOKEN_LIFETIME_S = 300
TOKEN_ISSUER = "cgt-hub"  # noqa: S105 - the issuer name, not a secret
JWKS_DEFAULT_TTL_S = 300
JWKS_MAX_TTL_S = 24 * 3600
JWKS_REFRESH_MIN_S = 10  # an unknown kid refetches the JWKS, but not more often than this
JWKS_MAX_BYTES = 256 * 1024  # a JWKS of a few keys is a few KiB
LETTERS = "cruds"


class OAuthError(HubError):
    """An RFC 6749 §5.2 error: rendered as ``{"error": ..., "error_description": ...}``."""

    def __init__(self, error: str, description: str, status: int = 400) -> None:
        super().__init__(description, [], status=status, fhir_code="security", hl7_code="207")
        self.error = error


# --------------------------------------------------------------------------- scopes
@dataclass(frozen=True)
class Scope:
    resource_type: str  # a type or "*"
    letters: frozenset[str]

    @classmethod
    def parse(cls, text: str) -> Scope | None:
        m = SCOPE_RE.match(text)
        if m is None:
            return None
        rtype, perm = m.group(1), m.group(2)
        letters = {"read": "rs", "write": "cud", "*": LETTERS}.get(perm, perm)
        return cls(rtype, frozenset(letters))

    def covers(self, other: Scope) -> bool:
        return (
            self.resource_type == "*" or self.resource_type == other.resource_type
        ) and other.letters <= self.letters

    def allows(self, resource_type: str, letter: str) -> bool:
        return (self.resource_type in ("*", resource_type)) and letter in self.letters

    def intersect(self, other: Scope) -> Scope | None:
        """What both scopes allow (``system/*.rs`` ∩ ``system/Task.cruds`` = ``system/Task.rs``)."""
        if self.resource_type == "*":
            rtype = other.resource_type
        elif other.resource_type in ("*", self.resource_type):
            rtype = self.resource_type
        else:
            return None
        letters = self.letters & other.letters
        return Scope(rtype, letters) if letters else None

    @property
    def text(self) -> str:
        return f"system/{self.resource_type}.{''.join(x for x in LETTERS if x in self.letters)}"


def still_allowed(granted: str, allowed: tuple[str, ...]) -> tuple[Scope, ...]:
    """The scopes of a token as far as the client's registration allows them now."""
    permitted = [s for s in (Scope.parse(a) for a in allowed) if s is not None]
    out = []
    for scope in (Scope.parse(t) for t in granted.split()):
        if scope is not None:
            out += [both for p in permitted if (both := scope.intersect(p)) is not None]
    return tuple(dict.fromkeys(out))


def grant(requested: str, allowed: tuple[str, ...]) -> list[str]:
    """The requested scopes the client may have (SMART: the server may grant a subset)."""
    permitted = [s for s in (Scope.parse(a) for a in allowed) if s is not None]
    granted = []
    for text in requested.split():
        scope = Scope.parse(text)
        if scope is not None and any(p.covers(scope) for p in permitted):
            granted.append(text)
    return granted


@dataclass(frozen=True)
class Principal:
    """Who is calling: a hub operator (sees everything) or a partner's SMART client."""

    kind: str  # "operator" | "partner"
    partner_id: str | None = None
    client_id: str | None = None
    scopes: tuple[Scope, ...] = ()
    scope_text: str = ""

    @property
    def is_operator(self) -> bool:
        return self.kind == "operator"

    @property
    def actor(self) -> str:
        return "operator" if self.is_operator else f"fhir:{self.partner_id}"

    def allows(self, resource_type: str, letter: str) -> bool:
        return self.is_operator or any(s.allows(resource_type, letter) for s in self.scopes)

    def require(self, resource_type: str, letter: str) -> None:
        if not self.allows(resource_type, letter):
            what = {"c": "create", "r": "read", "u": "update", "d": "delete", "s": "search"}[letter]
            raise Forbidden(
                f"the token's scopes do not allow {what} on {resource_type} (needs system/{resource_type}.{letter})"
            )


OPERATOR = Principal("operator")


# --------------------------------------------------------------------------- client registry
@dataclass(frozen=True)
class Client:
    client_id: str
    partner_id: str
    settings: SmartClientSettings


def clients(partners: PartnerDirectory) -> dict[str, Client]:
    out: dict[str, Client] = {}
    for profile in partners.profiles.values():
        for channel in profile.channels_of("fhir-rest"):
            smart = getattr(channel, "smart", None)
            if not isinstance(smart, SmartClientSettings):
                continue
            if smart.jwks is None and smart.jwks_url is None:
                continue  # no key registered: this partner cannot get tokens
            cid = smart.client_id or profile.id
            out[cid] = Client(cid, profile.id, smart)
    return out


def smart_settings_of(partners: PartnerDirectory, partner_id: str) -> SmartClientSettings | None:
    profile = partners.get(partner_id)
    if profile is None:
        return None
    for channel in profile.channels_of("fhir-rest"):
        smart = getattr(channel, "smart", None)
        if isinstance(smart, SmartClientSettings):
            return smart
    return None


# --------------------------------------------------------------------------- JWKS cache
def cache_lifetime(headers: httpx.Headers, now: float) -> float:
    """Seconds a JWKS response may be reused: Cache-Control max-age (no-store/no-cache: 0), else
    Expires, else a default; capped at a day.

    The hub is a private cache (RFC 9111 §5.2.2.10): ``s-maxage`` is for shared caches and is
    ignored. A qualified ``no-cache="set-cookie"`` restricts only those header fields, not the body.
    A ``max-age`` that is not a non-negative integer makes the response stale (§1.2.2, §4.2.1)."""
    cc = headers.get("cache-control", "").lower()
    directives = {d.strip().split("=", 1)[0]: (d.split("=", 1)[1].strip() if "=" in d else "") for d in cc.split(",")}
    if "no-store" in directives or directives.get("no-cache") == "":
        return 0.0
    if "max-age" in directives:
        value = directives["max-age"].strip('"')
        return float(min(JWKS_MAX_TTL_S, int(value))) if value.isdigit() else 0.0
    expires = headers.get("expires")
    if expires:
        try:
            when = parsedate_to_datetime(expires)
        except (TypeError, ValueError):
            return 0.0
        if when.tzinfo is None:  # "-0000": UTC with no zone information (RFC 5322 §3.3)
            when = when.replace(tzinfo=UTC)
        return float(max(0.0, min(JWKS_MAX_TTL_S, when.timestamp() - now)))
    return float(JWKS_DEFAULT_TTL_S)


def key_set(doc: object, what: str = "the client's JWKS") -> KeySet:
    """A JWKS document (``{"keys": [RSA or EC public keys]}``) as a key set. Anything else is the
    client's mistake (invalid_client), never a 500: joserfc raises KeyError or TypeError for a bare
    JWK, ``{}``, a list or an unknown curve."""
    keys = doc.get("keys") if isinstance(doc, dict) else None
    if not isinstance(keys, list) or not keys:
        raise OAuthError("invalid_client", f"{what} must be a JSON object with a non-empty 'keys' list", 401)
    if not all(isinstance(k, dict) and k.get("kty") in ("RSA", "EC") for k in keys):
        raise OAuthError("invalid_client", f"{what} may hold only RSA and EC public keys", 401)
    try:
        return KeySet.import_key_set(doc)  # type: ignore[arg-type]
    except (ValueError, TypeError, KeyError, JoseError) as exc:
        problem = f"{what} is not a valid key set: check each key's kty, crv and parameters"
        raise OAuthError("invalid_client", problem, 401) from exc


class _JwksUnusable(Exception):
    """The JWKS URL's answer cannot be used; the message says why (for the client)."""


@dataclass
class _Cached:
    keys: KeySet
    fetched_at: float
    expires_at: float


@dataclass
class JwksCache:
    """Fetches partners' JWKS URLs and keeps them as long as their caching headers allow.

    A fetch has a total deadline (``timeout_s``: connecting, waiting for the lock another request
    holds for the same URL, and reading the whole body) and a size cap (``max_bytes``): a slow or
    endless JWKS URL costs a token request at most ``timeout_s`` and never much memory."""

    timeout_s: float = 5.0
    max_bytes: int = JWKS_MAX_BYTES
    transport: httpx.AsyncBaseTransport | None = None
    _entries: dict[str, _Cached] = field(default_factory=dict)
    _locks: dict[str, asyncio.Lock] = field(default_factory=dict)
    fetches: int = 0

    async def keys(self, url: str, *, kid: str | None = None) -> KeySet:
        now = time.time()
        entry = self._entries.get(url)
        fresh = entry is not None and now < entry.expires_at
        if (
            fresh
            and entry is not None
            and (kid is None or _has_kid(entry.keys, kid) or now - entry.fetched_at < JWKS_REFRESH_MIN_S)
        ):
            return entry.keys
        lock = self._locks.setdefault(url, asyncio.Lock())
        try:
            async with asyncio.timeout(self.timeout_s), lock:
                entry = self._entries.get(url)
                if entry is not None and entry.fetched_at > now:
                    return entry.keys  # another request fetched it while we waited
                return await self._fetch(url)
        except TimeoutError as exc:
            raise OAuthError(
                "invalid_client", f"the client's JWKS URL did not answer within {self.timeout_s:g} s", 401
            ) from exc

    async def _fetch(self, url: str) -> KeySet:
        self.fetches += 1
        try:
            headers, body = await self._download(url)
        except (httpx.HTTPError, httpx.InvalidURL) as exc:
            raise OAuthError(
                "invalid_client", f"the client's JWKS could not be fetched ({type(exc).__name__})", 401
            ) from exc
        except _JwksUnusable as exc:
            raise OAuthError("invalid_client", str(exc), 401) from exc
        try:
            doc = json.loads(body)
        except (ValueError, RecursionError) as exc:  # RecursionError: absurdly deep nesting
            raise OAuthError("invalid_client", "the client's JWKS is not JSON", 401) from exc
        keys = key_set(doc)
        now = time.time()
        self._entries[url] = _Cached(keys, now, now + cache_lifetime(headers, now))
        return keys

    async def _download(self, url: str) -> tuple[httpx.Headers, bytes]:
        """Status 200 and at most ``max_bytes`` of body, streamed (never read whole first)."""
        request_headers = {"Accept": "application/json", "Accept-Encoding": "identity"}
        async with (
            httpx.AsyncClient(timeout=self.timeout_s, transport=self.transport) as client,
            client.stream("GET", url, headers=request_headers) as response,
        ):
            if response.status_code != 200:
                raise _JwksUnusable(f"the client's JWKS URL answered {response.status_code}")
            too_big = _JwksUnusable(f"the client's JWKS is larger than {self.max_bytes // 1024} KiB")
            declared = response.headers.get("content-length", "")
            if declared.isdigit() and int(declared) > self.max_bytes:
                raise too_big
            body = bytearray()
            async for chunk in response.aiter_bytes():
                body += chunk
                if len(body) > self.max_bytes:
                    raise too_big
            return response.headers, bytes(body)


def _has_kid(keys: KeySet, kid: str) -> bool:
    return any(k.kid == kid for k in keys.keys)


# --------------------------------------------------------------------------- tokens
def _signing_key(settings: Settings) -> OctKey:
    secret = settings.secret_key.get_secret_value().encode()
    return OctKey.import_key(hmac.new(secret, b"cgthub smart access token v1", hashlib.sha256).digest())


@dataclass
class TokenService:
    settings: Settings
    store: Store
    partners: PartnerDirectory
    jwks: JwksCache = field(default_factory=JwksCache)

    def __post_init__(self) -> None:
        self._key = _signing_key(self.settings)
        self._clients = clients(self.partners)

    # ------------------------------------------------------------------ token endpoint
    async def issue(self, form: dict[str, str], token_url: str) -> dict[str, Any]:
        grant_type = form.get("grant_type", "")
        if grant_type != "client_credentials":
            raise OAuthError(
                "unsupported_grant_type",
                "only grant_type=client_credentials is supported (no refresh tokens: ask for a new token)",
            )
        if form.get("client_assertion_type") != ASSERTION_TYPE:
            raise OAuthError("invalid_client", f"client_assertion_type must be {ASSERTION_TYPE}", 401)
        assertion = form.get("client_assertion", "")
        if not assertion:
            raise OAuthError("invalid_client", "client_assertion is missing", 401)
        client, claims = await self.verify_assertion(assertion, token_url)
        requested = form.get("scope", "")
        if not requested.strip():
            raise OAuthError("invalid_scope", "ask for at least one scope, e.g. system/ServiceRequest.cruds")
        granted = grant(requested, client.settings.scopes)
        if not granted:
            raise OAuthError("invalid_scope", "none of the requested scopes is allowed for this client")
        await self._remember_jti(client.client_id, str(claims["jti"]), int(claims["exp"]))
        now = int(time.time())
        scope = " ".join(granted)
        token = jwt.encode(
            {"alg": "HS256", "typ": "JWT"},
            {
                "iss": TOKEN_ISSUER,
                "sub": client.client_id,
                "partner": client.partner_id,
                "scope": scope,
                "iat": now,
                "exp": now + TOKEN_LIFETIME_S,
                "jti": str(uuid.uuid4()),
            },
            self._key,
        )
        log.info("SMART token issued to client %s (partner %s)", client.client_id, client.partner_id)
        return {"access_token": token, "token_type": "bearer", "expires_in": TOKEN_LIFETIME_S, "scope": scope}

    async def verify_assertion(self, assertion: str, token_url: str) -> tuple[Client, dict[str, Any]]:
        try:
            unverified = _peek(assertion)
        except ValueError as exc:
            raise OAuthError("invalid_client", f"client_assertion is not a JWT: {exc}", 401) from exc
        header, claims = unverified
        alg = header.get("alg")
        if alg not in ASSERTION_ALGS:
            raise OAuthError("invalid_client", f"client assertions must be signed {' or '.join(ASSERTION_ALGS)}", 401)
        client = self._clients.get(str(claims.get("iss", "")))
        if client is None:
            raise OAuthError("invalid_client", "unknown client (iss)", 401)
        keys = await self._keys(client, header.get("kid"))
        try:
            token = jwt.decode(assertion, keys, algorithms=list(ASSERTION_ALGS))
        except (JoseError, ValueError) as exc:
            raise OAuthError("invalid_client", "the client assertion's signature does not verify", 401) from exc
        c = token.claims
        now = time.time()
        problems = []
        if c.get("iss") != client.client_id or c.get("sub") != client.client_id:
            problems.append("iss and sub must both be the client id")
        aud = c.get("aud")
        if not (aud == token_url or (isinstance(aud, list) and token_url in aud)):
            problems.append(f"aud must be the token endpoint {token_url}")
        exp = c.get("exp")
        if not isinstance(exp, int | float) or isinstance(exp, bool) or not math.isfinite(exp):
            problems.append("exp is missing or not a number of seconds")  # NaN passed every comparison
        elif exp <= now - CLOCK_SKEW_S:
            problems.append("the assertion has expired")
        elif exp > now + ASSERTION_MAX_AHEAD_S + CLOCK_SKEW_S:
            problems.append("exp may be at most 5 minutes ahead")
        problems += _not_yet_valid(c, now)
        jti = c.get("jti")
        if not isinstance(jti, str) or not jti or len(jti) > 255:
            problems.append("jti is missing")
        if problems:
            raise OAuthError("invalid_client", "; ".join(problems), 401)
        return client, c

    async def _keys(self, client: Client, kid: str | None) -> KeySet:
        if client.settings.jwks is not None:
            return key_set(client.settings.jwks, "the registered JWKS")
        assert client.settings.jwks_url is not None
        return await self.jwks.keys(client.settings.jwks_url, kid=kid)

    async def _remember_jti(self, client_id: str, jti: str, exp: int) -> None:
        from datetime import datetime

        # Kept as long as the assertion is accepted (exp + skew), or it could be used once more.
        expires = datetime.fromtimestamp(exp + CLOCK_SKEW_S, UTC)

        def job(work: Work) -> None:
            work.session.execute(delete(SmartAssertion).where(SmartAssertion.expires_at < work.now))
            try:
                with work.session.begin_nested():
                    work.session.execute(
                        insert(SmartAssertion).values(client_id=client_id, jti=jti, expires_at=expires)
                    )
            except IntegrityError:
                raise Conflict("replayed client assertion") from None

        try:
            await self.store.run_async(job, actor=f"smart:{client_id}")
        except Conflict:
            raise OAuthError("invalid_client", "this client assertion (jti) was already used", 401) from None

    # ------------------------------------------------------------------ resource requests
    def principal(self, authorization: str) -> Principal:
        scheme, _, token = authorization.partition(" ")
        if scheme.lower() != "bearer" or not token:
            raise AuthenticationFailed("a bearer token is required (SMART Backend Services)")
        operator = self.settings.operator_token.get_secret_value()
        if hmac.compare_digest(token.encode(), operator.encode()):
            return OPERATOR
        try:
            decoded = jwt.decode(token, self._key, algorithms=["HS256"])
        except (JoseError, ValueError):
            raise AuthenticationFailed("the access token is not valid") from None
        c = decoded.claims
        now = time.time()
        exp = c.get("exp")
        if c.get("iss") != TOKEN_ISSUER or not isinstance(exp, int) or exp <= now:
            raise AuthenticationFailed("the access token has expired or was not issued here")
        partner = c.get("partner")
        if not isinstance(partner, str) or partner not in self.partners:
            raise AuthenticationFailed("the access token names no known partner")
        # A token outlives neither its client's removal nor a cut of the client's scopes: both are
        # checked against the registration on every request, not only when the token was issued.
        client = self._clients.get(str(c.get("sub")))
        if client is None or client.partner_id != partner:
            raise AuthenticationFailed("the access token's client is no longer registered for this partner")
        scopes = still_allowed(str(c.get("scope", "")), client.settings.scopes)
        return Principal("partner", partner, client.client_id, scopes, " ".join(s.text for s in scopes))


def _not_yet_valid(claims: dict[str, Any], now: float) -> list[str]:
    """RFC 7523 §3: an assertion whose ``nbf`` (or ``iat``) is in the future is not to be accepted;
    a value that is not a number of seconds is refused too (it compares as nothing)."""
    problems = []
    for name, meaning in (("nbf", "not valid before"), ("iat", "issued at")):
        value = claims.get(name)
        if value is None:
            continue
        if not isinstance(value, int | float) or isinstance(value, bool) or not math.isfinite(value):
            problems.append(f"{name} must be a number of seconds")
        elif value > now + CLOCK_SKEW_S:
            problems.append(f"{name} ({meaning}) is in the future: check the client's clock")
    return problems


def _peek(token: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """Header and claims of a compact JWS, unverified (to find the client and its keys)."""
    import base64

    parts = token.split(".")
    if len(parts) != 3:
        raise ValueError("expected three dot-separated parts")

    def part(text: str) -> dict[str, Any]:
        raw = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
        value = json.loads(raw)
        if not isinstance(value, dict):
            raise ValueError("not a JSON object")
        return value

    try:
        return part(parts[0]), part(parts[1])
    except (ValueError, UnicodeDecodeError) as exc:
        raise ValueError("undecodable") from exc
