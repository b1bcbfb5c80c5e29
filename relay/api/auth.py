"""Who is calling: the admin key, or a tenant's JWT (``Authorization: Bearer <token>``).

Tenant tokens are what Outpost issues: HS256, ``iss`` "outpost", ``sub`` the tenant id,
valid for 24 hours. They are signed with ``server.jwt_secret``, or with a key derived
from the admin key when that is unset (rotating the admin key then revokes them all).
relay adds one claim, ``relay_tenant``: when the tenant was created, in microseconds, so
that a token never outlives its tenant, even one deleted and re-created within the
second it was issued in.
"""

from __future__ import annotations

import functools
import hashlib
import hmac
import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import jwt
from aiohttp import web

from relay.appkeys import ENGINE, SETTINGS
from relay.config import Settings
from relay.db.admin import live_tenant_created_at
from relay.errors import Forbidden, Unauthorized

ISSUER = "outpost"
TOKEN_LIFETIME_SECONDS = 24 * 3600
ALGORITHM = "HS256"


@dataclass(frozen=True, slots=True)
class Caller:
    """The admin (``tenant_id`` None) or one tenant."""

    tenant_id: str | None = None

    @property
    def is_admin(self) -> bool:
        return self.tenant_id is None

    def check_tenant(self, tenant_id: str) -> None:
        """A tenant token reaches only its own tenant."""
        if self.tenant_id is not None and tenant_id != self.tenant_id:
            raise Forbidden(f"this token is scoped to tenant {self.tenant_id!r}")

    def tenant_filter(self, requested: Sequence[str]) -> list[str]:
        """The tenants a listing may show: the token's own, whatever was asked for."""
        if self.tenant_id is not None:
            return [self.tenant_id]
        return list(requested)


# Set by routes that serve the admin as one tenant (relay/api/operator_events.py, after
# require_admin): authenticate answers this caller.
SCOPED_CALLER: web.RequestKey[Caller] = web.RequestKey("scoped_caller", Caller)


def bearer_token(request: web.Request) -> str | None:
    header = request.headers.get("Authorization", "")
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        return None
    try:
        # aiohttp keeps undecodable header bytes as surrogates: not a key we ever issued.
        token.encode()
    except UnicodeEncodeError:
        return None
    return token.strip()


def _same(token: str, key: str) -> bool:
    # Compare digests: constant time, and the key's length does not leak either.
    return hmac.compare_digest(hashlib.sha256(token.encode()).digest(), _key_digest(key))


@functools.lru_cache(maxsize=8)
def _key_digest(key: str) -> bytes:
    # The configured key's digest, computed once rather than on every request.
    return hashlib.sha256(key.encode()).digest()


def jwt_key(settings: Settings) -> bytes | None:
    if settings.server.jwt_secret:
        return settings.server.jwt_secret.encode()
    if settings.admin_api_key:
        return hmac.new(
            settings.admin_api_key.encode(), b"relay tenant jwt", hashlib.sha256
        ).digest()
    return None


# The claim naming the tenant's incarnation (its created_at, microseconds since 1970).
INCARNATION = "relay_tenant"
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def incarnation(created_at: datetime) -> int:
    """A tenant's creation time as exact integer microseconds (no float rounding)."""
    return (created_at - _EPOCH) // timedelta(microseconds=1)


def issue_tenant_token(
    settings: Settings, tenant_id: str, created_at: datetime, now: float | None = None
) -> str:
    """A token for the tenant created at ``created_at`` (its current incarnation)."""
    key = jwt_key(settings)
    if key is None:
        raise Unauthorized("no admin API key or jwt_secret is configured")
    issued = int(time.time() if now is None else now)
    claims = {
        "iss": ISSUER,
        "sub": tenant_id,
        "iat": issued,
        "exp": issued + TOKEN_LIFETIME_SECONDS,
        INCARNATION: incarnation(created_at),
    }
    return jwt.encode(claims, key, algorithm=ALGORITHM)


@dataclass(frozen=True, slots=True)
class _TokenClaims:
    tenant_id: str
    issued: int
    # None in tokens from relay versions before the claim existed.
    incarnation: int | None

    def fits(self, created_at: datetime) -> bool:
        """Was this token issued for the tenant incarnation created at ``created_at``?"""
        if self.incarnation is not None:
            return self.incarnation == incarnation(created_at)
        # Older tokens: issued no earlier than the incarnation's second.
        return self.issued >= int(created_at.timestamp())


def _tenant_from_token(settings: Settings, token: str) -> _TokenClaims | None:
    key = jwt_key(settings)
    if key is None or token.count(".") != 2:
        return None
    try:
        claims = jwt.decode(
            token,
            key,
            algorithms=[ALGORITHM],
            issuer=ISSUER,
            options={"require": ["iss", "sub", "exp", "iat"]},
        )
    except jwt.PyJWTError:
        return None
    subject, issued, created = claims.get("sub"), claims.get("iat"), claims.get(INCARNATION)
    if not isinstance(subject, str) or not subject or not isinstance(issued, int):
        return None
    if created is not None and not isinstance(created, int):
        return None
    return _TokenClaims(subject, issued, created)


async def authenticate(request: web.Request) -> Caller:
    """The admin or a live tenant; anything else is a 401.

    A tenant token is refused once its tenant is deleted, and when it was issued before
    the tenant's current incarnation was created: a deleted and re-created id must not
    be reachable with a token from before.
    """
    if SCOPED_CALLER in request:  # the admin, acting as relay's own tenant
        return request[SCOPED_CALLER]
    token = bearer_token(request)
    if token is None:
        raise Unauthorized("missing API key or tenant token (Authorization: Bearer ...)")
    settings = request.app[SETTINGS]
    key = settings.admin_api_key
    if key is not None and _same(token, key):
        return Caller()
    decoded = _tenant_from_token(settings, token)
    if decoded is None:
        raise Unauthorized("invalid API key or tenant token")
    async with request.app[ENGINE].connect() as conn:
        created = await live_tenant_created_at(conn, decoded.tenant_id)
    if created is None or not decoded.fits(created):
        raise Unauthorized("this tenant token is no longer valid: its tenant was deleted")
    return Caller(decoded.tenant_id)


def require_admin(request: web.Request) -> None:
    """The admin key, else 401; a valid tenant token is a 403, as in Outpost (known, but
    not allowed here), whether or not its tenant still exists."""
    token = bearer_token(request)
    settings = request.app[SETTINGS]
    key = settings.admin_api_key
    if token is not None and key is not None and _same(token, key):
        return
    if token is not None and _tenant_from_token(settings, token) is not None:
        raise Forbidden("a tenant token cannot use this endpoint; it needs the admin API key")
    raise Unauthorized("missing or invalid API key (this endpoint needs the admin key)")
