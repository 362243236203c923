"""Who may use the admin page and its API: a bearer token, or a signed session cookie plus CSRF.

Signing in takes the API token in a form and answers with a session cookie: a timestamped payload
signed (itsdangerous) with a key derived from the API token, so changing the token signs every
browser out. The cookie is HttpOnly (scripts cannot read it), SameSite=Strict (other sites cannot
make the browser send it) and limited to `/admin`; it expires after `SESSION_SECONDS`.

Every state-changing request authenticated by the cookie must also carry the session's CSRF token,
as the hidden `csrf` field of a form or the `X-CSRF-Token` header the page's script sends; it is
compared in constant time. A bearer token needs no CSRF token: no browser sends it unasked.
"""

from __future__ import annotations

import dataclasses
import hashlib
import hmac
import secrets
import time

from itsdangerous import BadSignature, URLSafeTimedSerializer
from starlette.requests import Request
from starlette.responses import Response

from ..auth import check_bearer
from ..errors import Forbidden, Unauthorized

COOKIE = "filestore_admin"
SESSION_SECONDS = 12 * 3600
CSRF_HEADER = "x-csrf-token"
CSRF_FIELD = "csrf"


@dataclasses.dataclass(frozen=True)
class Session:
    csrf: str  # empty for a request authenticated by a bearer token
    issued: float

    @property
    def by_bearer(self) -> bool:
        return not self.csrf


BEARER = Session("", 0.0)


def _serializer(token: str) -> URLSafeTimedSerializer:
    key = hmac.new(token.encode(), b"filestore admin session", hashlib.sha256).digest()
    return URLSafeTimedSerializer(key, salt="filestore-admin")


def sign_in(response: Response, token: str, given: str, secure: bool) -> bool:
    """Set the session cookie on `response` if `given` is the token; whether it was."""
    if not hmac.compare_digest(given.strip().encode(), token.encode()):
        return False
    payload = {"csrf": secrets.token_urlsafe(24), "issued": time.time()}
    response.set_cookie(COOKIE, _serializer(token).dumps(payload), max_age=SESSION_SECONDS,
                        path="/admin", httponly=True, samesite="strict", secure=secure)
    return True


def sign_out(response: Response) -> None:
    response.delete_cookie(COOKIE, path="/admin", httponly=True, samesite="strict")


def from_cookie(request: Request, token: str) -> Session | None:
    value = request.cookies.get(COOKIE)
    if not value:
        return None
    try:
        payload = _serializer(token).loads(value, max_age=SESSION_SECONDS)
    except BadSignature:  # also expired (SignatureExpired is a BadSignature)
        return None
    if not isinstance(payload, dict) or not isinstance(payload.get("csrf"), str):
        return None
    return Session(payload["csrf"], float(payload.get("issued", 0)))


def authenticate(request: Request, token: str) -> Session:
    """The caller's session (`BEARER` for a bearer token); 401 when there is neither."""
    header = request.headers.get("authorization")
    if header:
        check_bearer(header, token)
        return BEARER
    session = from_cookie(request, token)
    if session is None:
        raise Unauthorized("sign in at /admin/login, or send an Authorization: Bearer token")
    return session


def check_csrf(session: Session, given: str | None) -> None:
    """403 unless a cookie-authenticated change carries its session's CSRF token."""
    if session.by_bearer:
        return
    if not given or not hmac.compare_digest(given.encode(), session.csrf.encode()):
        raise Forbidden("this change needs the page's CSRF token (reload the page and try again)")
