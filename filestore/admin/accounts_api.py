"""The accounts' JSON API under `/admin/api/accounts` (see `accounts.py`).

The administrator (the operator's token, or the admin page's session with its CSRF token for a
change) may do everything here. An account's token may read its own account and mint, list and
revoke its own tokens, and read and change its own storage (remotes and plan rules,
`account_storage.py`); nothing else (not its name, quota or state, not another account, not the
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
    while it holds files; `?purge=true` suspends it and starts the job that deletes them, cloud
    copies included, and then the account: 202 with the job)."""
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
            job = await service_of(request.app.state).purge_account(account_id)
            return JSONResponse(job.public(), status_code=202,
                                headers={"location": f"/admin/api/jobs/{job.id}"})
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


async def s3_keys(request: Request) -> Response:
    """`GET`: the account's S3 key ids (never a secret); `POST`: a new pair, its secret shown
    this once (`s3api/keys.py`). The account's own token may do both."""
    account_id = _id(request)
    keys = service_of(request.app.state).s3_keys
    if request.method == "GET":
        caller(request).check_account(account_id)
        return JSONResponse({"items": keys.listing(account_id)})
    caller(request, change=True).check_account(account_id)
    pair = await anyio.to_thread.run_sync(keys.add, account_id)
    return JSONResponse(pair.public(), status_code=201)


async def s3_key(request: Request) -> Response:
    """`DELETE`: revoke a pair, refused from the next request on in every process."""
    account_id = _id(request)
    caller(request, change=True).check_account(account_id)
    await anyio.to_thread.run_sync(service_of(request.app.state).s3_keys.revoke, account_id,
                                   str(request.path_params["key"]))
    return Response(status_code=204)


async def storage(request: Request) -> Response:
    """`GET`: the account's own remotes (never a secret: `secret_access_key_set` says whether
    one is stored) and plan rules; `PUT` replaces them, `PATCH` merges (`account_storage.py`).
    Each new or changed remote is tested first: a failed step is a 422 naming it, and nothing
    is saved. The account's own token may do all three."""
    account_id = _id(request)
    service = service_of(request.app.state)
    if request.method == "GET":
        return JSONResponse(service.account_storage(caller(request), account_id))
    principal = caller(request, change=True)
    result = await service.save_account_storage(principal, account_id, await json_body(request),
                                                replace=request.method == "PUT")
    if not result.ok:
        return JSONResponse(
            {"error": "storage_test_failed", "step": result.step,
             "detail": f"{result.step} failed: {result.detail}", "remote": result.remote},
            status_code=422)
    return JSONResponse({"saved": True, "tested": result.tested, "remote": result.remote,
                         **service.account_storage(principal, account_id)})


routes = [
    Route("/admin/api/accounts", accounts, methods=["GET", "POST"]),
    Route("/admin/api/accounts/{id}", account, methods=["GET", "PATCH", "DELETE"]),
    Route("/admin/api/accounts/{id}/tokens", tokens, methods=["GET", "POST"]),
    Route("/admin/api/accounts/{id}/tokens/{name}", token, methods=["DELETE"]),
    Route("/admin/api/accounts/{id}/storage", storage, methods=["GET", "PUT", "PATCH"]),
    Route("/admin/api/accounts/{id}/s3-keys", s3_keys, methods=["GET", "POST"]),
    Route("/admin/api/accounts/{id}/s3-keys/{key}", s3_key, methods=["DELETE"]),
]
