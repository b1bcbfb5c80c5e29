"""Who is looking at a page: a tenant's portal session or the operator's console session.

The portal starts from a short-lived link (``GET /api/v1/tenants/{id}/portal``): a JWT
whose audience is the portal's, so it is not an API token, and an API token is not a
link. Opening it sets an HttpOnly, SameSite=Lax cookie holding a signed session and
redirects to a URL without the token; it works once (its ``jti`` is kept in
relay.portal_links_used until it would have expired). The console's session starts from
the admin key, typed into its login form. Both sessions are JWTs signed with a key derived from
relay's tenant-token key (rotating the admin key, or ``server.jwt_secret``, ends them),
and expire. Every state-changing request carries a CSRF token derived from the session.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import time
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import jwt
from aiohttp import web
from yarl import URL

from relay.api.auth import ALGORITHM, INCARNATION, ISSUER, incarnation, jwt_key
from relay.config import Settings
from relay.db import web as web_db
from relay.db.admin import live_tenant_created_at
from relay.errors import Forbidden, Unauthorized

# The link from GET /tenants/{id}/portal: opened at once by whoever asked for it.
LINK_LIFETIME_SECONDS = 5 * 60
PORTAL_SESSION_SECONDS = 60 * 60
CONSOLE_SESSION_SECONDS = 60 * 60

LINK_AUDIENCE = "relay-portal-link"
PORTAL_AUDIENCE = "relay-portal-session"
CONSOLE_AUDIENCE = "relay-console-session"

PORTAL_COOKIE = "relay_portal"
CONSOLE_COOKIE = "relay_console"
CSRF_FIELD = "csrf"
CSRF_HEADER = "X-CSRF-Token"


def _key(settings: Settings, purpose: bytes) -> bytes:
    base = jwt_key(settings)
    if base is None:
        raise Unauthorized("no admin API key or jwt_secret is configured: the web pages are off")
    return hmac.new(base, b"relay web " + purpose, hashlib.sha256).digest()


@dataclass(frozen=True, slots=True)
class Session:
    """A signed session: the tenant's (``tenant_id``) or the operator's (None)."""

    tenant_id: str | None
    nonce: str
    expires: int

    def csrf(self, settings: Settings) -> str:
        """The token every form and script of this session sends back."""
        return hmac.new(_key(settings, b"csrf"), self.nonce.encode(), hashlib.sha256).hexdigest()


def issue_link_token(
    settings: Settings, tenant_id: str, created_at: datetime, now: float | None = None
) -> str:
    issued = int(time.time() if now is None else now)
    claims = {
        "iss": ISSUER,
        "aud": LINK_AUDIENCE,
        "sub": tenant_id,
        "iat": issued,
        "exp": issued + LINK_LIFETIME_SECONDS,
        # Its id: the link opens a session once (redeem_link).
        "jti": secrets.token_urlsafe(16),
        INCARNATION: incarnation(created_at),
    }
    return jwt.encode(claims, _key(settings, b"link"), algorithm=ALGORITHM)


def _decode(settings: Settings, token: str, purpose: bytes, audience: str) -> dict[str, Any]:
    try:
        claims: dict[str, Any] = jwt.decode(
            token,
            _key(settings, purpose),
            algorithms=[ALGORITHM],
            issuer=ISSUER,
            audience=audience,
            options={"require": ["iss", "aud", "sub", "exp", "iat"]},
        )
    except jwt.ExpiredSignatureError:
        raise Unauthorized("this link or session has expired") from None
    except jwt.PyJWTError:
        raise Unauthorized("this link or session is not valid") from None
    if not isinstance(claims.get("sub"), str):
        raise Unauthorized("this link or session is not valid")
    return claims


async def _check_live(conn: Any, tenant_id: str, claims: dict[str, Any]) -> datetime:
    """The tenant's creation time, if the claims are for its live incarnation; else 401."""
    created: datetime | None = await live_tenant_created_at(conn, tenant_id)
    if created is None or claims.get(INCARNATION) != incarnation(created):
        raise Unauthorized(f"tenant {tenant_id!r} no longer exists")
    return created


async def redeem_link(settings: Settings, conn: Any, token: str) -> tuple[str, datetime]:
    """The tenant a portal link was issued for, and its creation time (401 when the link
    expired, is forged, was opened before, or its tenant was deleted since). ``conn`` in
    a transaction: the link is spent when it commits."""
    claims = _decode(settings, token, b"link", LINK_AUDIENCE)
    tenant_id: str = claims["sub"]
    created = await _check_live(conn, tenant_id, claims)
    jti = claims.get("jti")
    if not isinstance(jti, str) or not jti:
        raise Unauthorized("this link or session is not valid")
    if not await web_db.use_link(conn, jti, int(claims["exp"])):
        raise Unauthorized(
            "this link has been opened already: a portal link works once, so ask your "
            "provider for a fresh one"
        )
    return tenant_id, created


def _session_token(
    settings: Settings, audience: str, subject: str, lifetime: int, extra: dict[str, Any]
) -> tuple[str, Session]:
    issued = int(time.time())
    nonce = secrets.token_urlsafe(16)
    claims = {
        "iss": ISSUER,
        "aud": audience,
        "sub": subject,
        "iat": issued,
        "exp": issued + lifetime,
        "nonce": nonce,
        **extra,
    }
    token = jwt.encode(claims, _key(settings, b"session"), algorithm=ALGORITHM)
    tenant = None if audience == CONSOLE_AUDIENCE else subject
    return token, Session(tenant, nonce, issued + lifetime)


def portal_session(settings: Settings, tenant_id: str, created_at: datetime) -> str:
    token, _ = _session_token(
        settings,
        PORTAL_AUDIENCE,
        tenant_id,
        PORTAL_SESSION_SECONDS,
        {INCARNATION: incarnation(created_at)},
    )
    return token


def _admin_fingerprint(settings: Settings) -> str:
    # A console session ends when the admin key changes, even with a fixed jwt_secret.
    key = settings.admin_api_key or ""
    return hashlib.sha256(b"relay console " + key.encode()).hexdigest()[:32]


def console_session(settings: Settings) -> str:
    token, _ = _session_token(
        settings,
        CONSOLE_AUDIENCE,
        "operator",
        CONSOLE_SESSION_SECONDS,
        {"key": _admin_fingerprint(settings)},
    )
    return token


def _session(claims: dict[str, Any], tenant_id: str | None) -> Session:
    nonce = claims.get("nonce")
    if not isinstance(nonce, str) or not nonce:
        raise Unauthorized("this session is not valid")
    return Session(tenant_id, nonce, int(claims["exp"]))


async def read_portal_session(settings: Settings, conn: Any, token: str) -> Session:
    claims = _decode(settings, token, b"session", PORTAL_AUDIENCE)
    tenant_id: str = claims["sub"]
    await _check_live(conn, tenant_id, claims)
    return _session(claims, tenant_id)


def read_console_session(settings: Settings, token: str) -> Session:
    claims = _decode(settings, token, b"session", CONSOLE_AUDIENCE)
    if not settings.admin_api_key or not hmac.compare_digest(
        str(claims.get("key", "")), _admin_fingerprint(settings)
    ):
        raise Unauthorized("the admin key has changed since this session began")
    return _session(claims, None)


def set_cookie(
    request: web.Request, response: web.StreamResponse, name: str, value: str, lifetime: int
) -> None:
    response.set_cookie(
        name,
        value,
        max_age=lifetime,
        path=_path(name),
        httponly=True,
        # Lax, not Strict: users arrive by a link on their application's site, and a
        # navigation that began on another site carries no Strict cookie, even after
        # relay's own redirect (the session would be missing on the first page). Posts
        # from other sites still carry none, and each needs the CSRF token anyway.
        samesite="Lax",
        secure=request.secure,
    )


def clear_cookie(response: web.StreamResponse, name: str) -> None:
    response.del_cookie(name, path=_path(name))


def _path(cookie: str) -> str:
    """Each area's cookies go to that area only: /portal or /console."""
    return "/portal" if cookie.startswith(PORTAL_COOKIE) else "/console"


def same_origin(request: web.Request) -> bool:
    """A browser's Origin (or Referer) on a state-changing request names this host."""
    origin = request.headers.get("Origin") or request.headers.get("Referer")
    if not origin:
        # Browsers send Origin on every cross-site POST; a client without one is no
        # browser carrying someone's cookie. The CSRF token is checked regardless.
        return True
    try:
        theirs = URL(origin).host
        ours = URL(f"//{request.host}").host
    except ValueError:
        return False
    # Host names only: behind a TLS proxy the scheme and port seen here differ.
    return theirs is not None and ours is not None and theirs.lower() == ours.lower()


def check_csrf(
    settings: Settings, request: web.Request, session: Session, sent: str | None
) -> None:
    """403 unless the request comes from this site with this session's token."""
    if not same_origin(request):
        raise Forbidden("cross-site request refused (Origin does not match this site)")
    if not sent or not hmac.compare_digest(sent, session.csrf(settings)):
        raise Forbidden("missing or invalid CSRF token; reload the page and try again")
