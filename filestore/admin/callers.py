"""What every route of the admin JSON API shares: who calls, and what it sends.

A caller is a `Principal` (`accounts.py`): the administrator, by the operator's token or the
admin page's session (a change made with the session also needs its CSRF token, `session.py`),
or an account, by one of its tokens. Most routes are the administrator's alone (`administrator`:
403 for an account's token); the accounts' routes and `sign` let an account act on what is its
own (`caller`, then `Principal.check_account` / `check_path`).
"""

from __future__ import annotations

import json
import re
from typing import Any

from starlette.requests import Request

from ..accounts import ADMIN, Principal
from ..errors import BadRequest
from ..service import service_of
from .session import BEARER, CSRF_HEADER, Session, authenticate, check_csrf

MAX_PAGE = 1000
MAX_BODY = 64 * 1024  # an admin request is a few keys
_DIGITS = re.compile(r"[0-9]{1,18}")


def _who(request: Request) -> tuple[Principal, Session]:
    header = request.headers.get("authorization")
    if header:  # the operator's token or an account's (401 wrong, 403 a suspended account's)
        return service_of(request.app.state).accounts.authenticate(header), BEARER
    return ADMIN, authenticate(request)  # the admin page's session (401 without one)


def caller(request: Request, *, change: bool = False) -> Principal:
    """Who calls; for a `change`, a session's CSRF token is checked too (403 without)."""
    principal, session = _who(request)
    if change:
        check_csrf(session, request.headers.get(CSRF_HEADER))
    return principal


def administrator(request: Request, *, change: bool = False) -> Principal:
    """The caller, who must be the administrator (403 for an account's token)."""
    principal = caller(request, change=change)
    principal.check_admin()
    return principal


async def json_body(request: Request) -> Any:
    """The request's JSON body (`{}` when empty); 400 when it is not JSON or over 64 KiB."""
    body = b""
    async for chunk in request.stream():
        body += chunk
        if len(body) > MAX_BODY:
            raise BadRequest(f"the body is larger than {MAX_BODY} bytes")
    if not body:
        return {}
    try:
        return json.loads(body)
    except (ValueError, UnicodeDecodeError, RecursionError):
        raise BadRequest("the body must be JSON") from None


def json_object(body: Any, allowed: tuple[str, ...], example: str) -> dict[str, Any]:
    """A JSON body that is an object of known keys (400 naming an unknown one)."""
    if not isinstance(body, dict):
        raise BadRequest(f"send a JSON object: {example}")
    unknown = sorted(set(body) - set(allowed))
    if unknown:
        raise BadRequest(f"unknown key {unknown[0]!r} (known: {', '.join(allowed)})")
    return body


def whole_number(value: str | None, name: str, default: int, high: int) -> int:
    """A query parameter from 1 to `high` (400 otherwise, never an overflow)."""
    if value is None:
        return default
    if not _DIGITS.fullmatch(value) or not 1 <= int(value) <= high:
        raise BadRequest(f"{name} must be a whole number from 1 to {high}")
    return int(value)
