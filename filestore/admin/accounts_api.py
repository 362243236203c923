"""The accounts' JSON API under `/admin/api/accounts` (see `accounts.py`).

The administrator (the operator's token, or the admin page's session with its CSRF token for a
change) may do everything here. An account's token may read its own account and mint, list and
revoke its own tokens; nothing else (not its name, quota or state, not another account, not the
list). Another account's id is refused with 403 whether it exists or not, so a token learns
nothing about the others.

A token is in an answer once, when it is made (`POST .../accounts` and `POST .../tokens`);
listings name tokens, never show them or their hashes.
"""

from __future__ import annotations

import functools

import anyio
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from ..accounts import Accounts
from ..errors import BadRequest
from ..service import service_of
from ..values import parse_bool
from .callers import MAX_PAGE, administrator, caller, json_body, json_object, whole_number

_CREATE = ("id", "name", "quota")
_CHANGE = ("name", "quota", "state")


def _accounts(request: Request) -> Accounts:
    return service_of(request.app.state).accounts


def _id(request: Request) -> str:
    return str(request.path_params["id"])


async def accounts(request: Request) -> Response:
    """`GET`: a page of accounts in id order (`?after=ID&limit=N`); `POST`: a new account and
    its first token (named "default"), shown this once."""
    if request.method == "GET":
        administrator(request)
        params = request.query_params
        limit = whole_number(params.get("limit"), "limit", 100, MAX_PAGE)
        found = _accounts(request).page(params.get("after", ""), limit + 1)
        items = [_accounts(request).describe(account) for account in found[:limit]]
        return JSONResponse({"items": items,
                             "next": found[limit - 1].id if len(found) > limit else None})
    administrator(request, change=True)
    body = json_object(await json_body(request), _CREATE,
                       '{"id": "acme", "name": "Acme Inc", "quota": "10GiB"}')
    create = functools.partial(_accounts(request).create, body.get("id", ""), body.get("name", ""),
                               0 if body.get("quota") is None else body["quota"])
    created, token = await anyio.to_thread.run_sync(create)
    return JSONResponse({**_accounts(request).describe(created), "token": token},
                        status_code=201, headers={"location": f"/admin/api/accounts/{created.id}"})


async def account(request: Request) -> Response:
    """`GET` (the account itself may), `PATCH` (name, quota, state) and `DELETE` (refused
    while it holds files; `?purge=true` is not available yet)."""
    service = _accounts(request)
    account_id = _id(request)
    if request.method == "GET":
        caller(request).check_account(account_id)
        return JSONResponse(service.describe(service.get(account_id)))
    administrator(request, change=True)
    if request.method == "PATCH":
        body = json_object(await json_body(request), _CHANGE,
                           '{"name": "...", "quota": "10GiB", "state": "suspended"}')
        if all(body.get(key) is None for key in _CHANGE):
            raise BadRequest(f"send what to change: {', '.join(_CHANGE)}")
        update = functools.partial(service.update, account_id, name=body.get("name"),
                                   quota=body.get("quota"), state=body.get("state"))
        return JSONResponse(service.describe(await anyio.to_thread.run_sync(update)))
    purge = request.query_params.get("purge")
    if purge is not None:
        try:
            wanted = parse_bool(purge)
        except ValueError:
            raise BadRequest("purge must be true or false") from None
        if wanted:
            raise BadRequest("purge is not available yet: delete the account's files first, "
                             "then the account")
    await anyio.to_thread.run_sync(service.remove, account_id)
    return Response(status_code=204)


async def tokens(request: Request) -> Response:
    """`GET`: the account's tokens by name (created, last used; never a token); `POST`
    `{"name"}`: a new token, shown this once. The account's own token may do both."""
    service = _accounts(request)
    account_id = _id(request)
    if request.method == "GET":
        caller(request).check_account(account_id)
        return JSONResponse({"items": [t.public() for t in service.tokens(account_id)]})
    caller(request, change=True).check_account(account_id)
    body = json_object(await json_body(request), ("name",), '{"name": "laptop"}')
    name = body.get("name", "")
    token = await anyio.to_thread.run_sync(service.add_token, account_id, name)
    return JSONResponse({"name": name, "token": token}, status_code=201)


async def token(request: Request) -> Response:
    """`DELETE`: revoke a token, refused from the next request on in every process."""
    account_id = _id(request)
    caller(request, change=True).check_account(account_id)
    await anyio.to_thread.run_sync(_accounts(request).revoke, account_id,
                                   str(request.path_params["name"]))
    return Response(status_code=204)


routes = [
    Route("/admin/api/accounts", accounts, methods=["GET", "POST"]),
    Route("/admin/api/accounts/{id}", account, methods=["GET", "PATCH", "DELETE"]),
    Route("/admin/api/accounts/{id}/tokens", tokens, methods=["GET", "POST"]),
    Route("/admin/api/accounts/{id}/tokens/{name}", token, methods=["DELETE"]),
]
