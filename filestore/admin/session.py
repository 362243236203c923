"""Who may use the admin page and its API: a bearer token, or a session cookie plus CSRF.

Signing in takes the API token in a form, records a session in the registry (`sessions` table:
the SHA-256 of a random session id, its generation and its expiry) and answers with a cookie
holding the id: a timestamped payload signed (itsdangerous) with a key derived from the API
token, so changing the token signs every browser out. Every request with the cookie looks the
session up (a primary-key read on the event loop's reader connection), so a session ends in every
worker process at once: signing out deletes its row, "sign out everywhere" moves the generation
(`end_all`); a copied cookie is then worth nothing. Sessions last `SESSION_SECONDS` at most.

The cookie is HttpOnly (scripts cannot read it), SameSite=Strict (other sites cannot make the
browser send it) and limited to `/admin`. It is marked Secure when `admin.cookie_secure` is set,
or when the request came over https: the scheme uvicorn reports, which takes X-Forwarded-Proto
only from the addresses in its `forwarded_allow_ips` (127.0.0.1 by default); filestore reads no
forwarding header itself.

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

import anyio
from itsdangerous import BadSignature, URLSafeTimedSerializer
from starlette.requests import Request
from starlette.responses import Response

from ..errors import Forbidden, Unauthorized
from ..service import service_of

COOKIE = "filestore_admin"
SESSION_SECONDS = 12 * 3600
CSRF_HEADER = "x-csrf-token"
CSRF_FIELD = "csrf"


@dataclasses.dataclass(frozen=True)
class Session:
    csrf: str  # empty for a request authenticated by a bearer token
    issued: float
    sid: str = ""  # the session's id (the registry keeps its hash); empty for a bearer token

    @property
    def by_bearer(self) -> bool:
        return not self.csrf


BEARER = Session("", 0.0)


def _serializer(token: str) -> URLSafeTimedSerializer:
    key = hmac.new(token.encode(), b"filestore admin session", hashlib.sha256).digest()
    return URLSafeTimedSerializer(key, salt="filestore-admin")


def _key(sid: str) -> str:
    """What the registry keeps of a session id: its hash (a copy of the registry opens none)."""
    return hashlib.sha256(sid.encode()).hexdigest()


def secure(request: Request) -> bool:
    """Whether the session cookie gets the Secure flag: always with `admin.cookie_secure`, else
    when the request came over https (as uvicorn's proxy headers report it)."""
    return bool(service_of(request.app.state).settings.admin.cookie_secure
                or request.url.scheme == "https")


async def sign_in(request: Request, response: Response, given: str) -> bool:
    """Start a session and set its cookie on `response` if `given` is the token; whether it
    was."""
    store = service_of(request.app.state).store
    token = store.token
    if not hmac.compare_digest(given.strip().encode(), token.encode()):
        return False
    sid, now = secrets.token_urlsafe(24), time.time()

    def start() -> None:
        with store.registry.transaction() as tx:
            tx.sessions.start(_key(sid), now, now + SESSION_SECONDS)

    await anyio.to_thread.run_sync(start)
    payload = {"sid": sid, "csrf": secrets.token_urlsafe(24), "issued": now}
    response.set_cookie(COOKIE, _serializer(token).dumps(payload), max_age=SESSION_SECONDS,
                        path="/admin", httponly=True, samesite="strict", secure=secure(request))
    return True


async def sign_out(request: Request, response: Response, session: Session | None) -> None:
    """End `session` (in every process) and delete the cookie."""
    if session is not None and session.sid:
        store = service_of(request.app.state).store

        def end() -> None:
            with store.registry.transaction() as tx:
                tx.sessions.end(_key(session.sid))

        await anyio.to_thread.run_sync(end)
    response.delete_cookie(COOKIE, path="/admin", httponly=True, samesite="strict",
                           secure=secure(request))


async def sign_out_everywhere(request: Request) -> int:
    """End every session, this one included; how many there were."""
    store = service_of(request.app.state).store

    def end_all() -> int:
        with store.registry.transaction() as tx:
            return tx.sessions.end_all(time.time())

    return await anyio.to_thread.run_sync(end_all)


def from_cookie(request: Request) -> Session | None:
    """The session the request's cookie names, if it is genuine and still counts."""
    value = request.cookies.get(COOKIE)
    if not value:
        return None
    store = service_of(request.app.state).store
    try:
        payload = _serializer(store.token).loads(value, max_age=SESSION_SECONDS)
    except BadSignature:  # also expired (SignatureExpired is a BadSignature)
        return None
    if not isinstance(payload, dict):
        return None
    sid, csrf = payload.get("sid"), payload.get("csrf")
    if not isinstance(sid, str) or not isinstance(csrf, str) or not sid or not csrf:
        return None  # also a cookie from before sessions were kept
    if not store.registry.read.sessions.active(_key(sid), time.time()):
        return None  # signed out, here or everywhere
    return Session(csrf, float(payload.get("issued", 0)), sid)


def authenticate(request: Request) -> Session:
    """The admin page's session of a caller without a bearer token (`callers.py` looks at
    tokens first); 401 when there is none."""
    session = from_cookie(request)
    if session is None:
        raise Unauthorized("sign in at /admin/login, or send an Authorization: Bearer token")
    return session


def check_csrf(session: Session, given: str | None) -> None:
    """403 unless a cookie-authenticated change carries its session's CSRF token."""
    if session.by_bearer:
        return
    if not given or not hmac.compare_digest(given.encode(), session.csrf.encode()):
        raise Forbidden("this change needs the page's CSRF token (reload the page and try again)")
