"""SMART Backend Services endpoints: discovery and the token endpoint (errors per RFC 6749)."""

from __future__ import annotations

from typing import Any
from urllib.parse import parse_qsl

from fastapi import APIRouter, Request, Response
from fastapi.responses import JSONResponse

from hub.api.auth import ASSERTION_ALGS, OAuthError, TokenService

router = APIRouter()
TOKEN_PATH = "/auth/token"  # noqa: S105 - a path, not a secret


def token_url(request: Request) -> str:
    """The token endpoint, and the only ``aud`` a client assertion may name: from
    ``CGTHUB_PUBLIC_URL``; without it (development) from the request, i.e. its Host header."""
    public: str | None = request.app.state.ctx.settings.public_url
    return (public or str(request.base_url).rstrip("/")) + TOKEN_PATH


def smart_configuration(request: Request) -> dict[str, Any]:
    return {
        "token_endpoint": token_url(request),
        "token_endpoint_auth_methods_supported": ["private_key_jwt"],
        "token_endpoint_auth_signing_alg_values_supported": list(ASSERTION_ALGS),
        "grant_types_supported": ["client_credentials"],
        "scopes_supported": ["system/*.cruds", "system/*.rs", "system/*.read", "system/*.write"],
        "capabilities": ["client-confidential-asymmetric", "permission-v1", "permission-v2"],
        "code_challenge_methods_supported": [],
    }


@router.get("/.well-known/smart-configuration")
@router.get("/fhir/.well-known/smart-configuration")
def well_known(request: Request) -> JSONResponse:
    return JSONResponse(smart_configuration(request), headers={"Cache-Control": "max-age=3600"})


def _oauth_error(exc: OAuthError) -> JSONResponse:
    headers = {"Cache-Control": "no-store", "Pragma": "no-cache"}
    if exc.status == 401:
        headers["WWW-Authenticate"] = 'Bearer error="invalid_client"'
    return JSONResponse({"error": exc.error, "error_description": exc.message}, status_code=exc.status, headers=headers)


@router.post(
    TOKEN_PATH,
    openapi_extra={
        "requestBody": {
            "required": True,
            "content": {
                "application/x-www-form-urlencoded": {
                    "schema": {
                        "type": "object",
                        "properties": {
                            "grant_type": {"type": "string"},
                            "scope": {"type": "string"},
                            "client_assertion_type": {"type": "string"},
                            "client_assertion": {"type": "string"},
                        },
                    }
                }
            },
        }
    },
)
async def token(request: Request) -> Response:
    tokens: TokenService = request.app.state.tokens
    if not request.headers.get("content-type", "").startswith("application/x-www-form-urlencoded"):
        return _oauth_error(OAuthError("invalid_request", "send the token request form-encoded"))
    raw = await request.body()
    try:
        fields = dict(parse_qsl(raw.decode("utf-8"), keep_blank_values=True, max_num_fields=20))
    except (UnicodeDecodeError, ValueError):
        return _oauth_error(OAuthError("invalid_request", "the form body could not be read"))
    try:
        body = await tokens.issue(fields, token_url(request))
    except OAuthError as exc:
        return _oauth_error(exc)
    return JSONResponse(body, headers={"Cache-Control": "no-store", "Pragma": "no-cache"})
