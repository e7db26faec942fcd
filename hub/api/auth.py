"""SMART Backend Services: client registry, client-assertion checks, access tokens, scopes.

* A partner's client is registered in its profile (``fhir-rest`` channel, ``smart:`` block): its
  public JWKS inline or a ``jwks_url`` (fetched and cached as the response's Cache-Control /
  Expires allow), and the scopes it may be granted.
* ``POST /auth/token`` takes ``grant_type=client_credentials`` with a ``private_key_jwt`` client
  assertion signed RS384 or ES384 (nothing else: ``none`` and HMAC are refused). The assertion's
  ``iss`` = ``sub`` = client id, ``aud`` = this token endpoint, ``exp`` in the future and at most
  five minutes ahead, and a ``jti`` never seen before: each accepted ``jti`` is stored under a
  primary key until it expires, so a replay (even a concurrent one) hits the key and is refused.
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
import logging
import math
import time
import uuid
from dataclasses import dataclass, field
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
    Expires, else a default; capped at a day."""
    cc = headers.get("cache-control", "").lower()
    directives = {d.strip().split("=", 1)[0]: (d.split("=", 1)[1].strip() if "=" in d else "") for d in cc.split(",")}
    if "no-store" in directives or "no-cache" in directives:
        return 0.0
    for name in ("s-maxage", "max-age"):
        if name in directives:
            try:
                return float(max(0, min(JWKS_MAX_TTL_S, int(directives[name].strip('"')))))
            except ValueError:
                break
    expires = headers.get("expires")
    if expires:
        try:
            return float(max(0.0, min(JWKS_MAX_TTL_S, parsedate_to_datetime(expires).timestamp() - now)))
        except (TypeError, ValueError):
            return 0.0
    return float(JWKS_DEFAULT_TTL_S)


@dataclass
class _Cached:
    keys: KeySet
    fetched_at: float
    expires_at: float


@dataclass
class JwksCache:
    """Fetches partners' JWKS URLs and keeps them as long as their caching headers allow."""

    timeout_s: float = 5.0
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
        async with lock:
            entry = self._entries.get(url)
            if entry is not None and entry.fetched_at > now:
                return entry.keys  # another request fetched it while we waited
            return await self._fetch(url)

    async def _fetch(self, url: str) -> KeySet:
        self.fetches += 1
        try:
            async with httpx.AsyncClient(timeout=self.timeout_s, transport=self.transport) as client:
                response = await client.get(url, headers={"Accept": "application/json"})
        except httpx.HTTPError as exc:
            raise OAuthError(
                "invalid_client", f"the client's JWKS could not be fetched ({type(exc).__name__})"
            ) from exc
        if response.status_code != 200:
            raise OAuthError("invalid_client", f"the client's JWKS URL answered {response.status_code}")
        try:
            keys = KeySet.import_key_set(response.json())
        except (ValueError, JoseError) as exc:
            raise OAuthError("invalid_client", "the client's JWKS is not a valid key set") from exc
        now = time.time()
        self._entries[url] = _Cached(keys, now, now + cache_lifetime(response.headers, now))
        return keys


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
        jti = c.get("jti")
        if not isinstance(jti, str) or not jti or len(jti) > 255:
            problems.append("jti is missing")
        if problems:
            raise OAuthError("invalid_client", "; ".join(problems), 401)
        return client, c

    async def _keys(self, client: Client, kid: str | None) -> KeySet:
        if client.settings.jwks is not None:
            try:
                return KeySet.import_key_set(client.settings.jwks)  # type: ignore[arg-type]
            except (ValueError, JoseError) as exc:
                raise OAuthError("invalid_client", "the registered JWKS is not a valid key set", 401) from exc
        assert client.settings.jwks_url is not None
        return await self.jwks.keys(client.settings.jwks_url, kid=kid)

    async def _remember_jti(self, client_id: str, jti: str, exp: int) -> None:
        from datetime import UTC, datetime

        expires = datetime.fromtimestamp(exp, UTC)

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
        scope_text = str(c.get("scope", ""))
        scopes = tuple(s for s in (Scope.parse(t) for t in scope_text.split()) if s is not None)
        return Principal("partner", partner, str(c.get("sub")), scopes, scope_text)


def _peek(token: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """Header and claims of a compact JWS, unverified (to find the client and its keys)."""
    import base64
    import json

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
