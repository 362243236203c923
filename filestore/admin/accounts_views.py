"""The admin page's accounts: the list, creating one, one account's usage, settings, tokens and
storage (its own remotes, tested on save, and plan rules: `account_storage.py`).

Like the rest of the page, every action is a form that POSTs with the session's CSRF token and
works without JavaScript. A change redirects back with a one-shot message; a refused one (a bad
id, a duplicate, an unknown account or token, removing an account that holds files) answers the
page again with the reason and the error's 4xx status.

A new token is a secret shown once: only the page answering its creation holds it (never a
redirect, so never the flash cookie), sent `no-store` like every page; later pages list tokens by
name, never the token.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any, TypeVar
from urllib.parse import quote

import anyio
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from .. import plan
from ..accounts import ADMIN
from ..config import PlanRule, parse_section
from ..errors import BadRequest, FilestoreError, NotFound
from ..service import service_of
from ..stats import size_text
from ..values import parse_size
from .session import Session
from .views import PAGE_SIZE, _back, _field, _form, _render, signed_in

T = TypeVar("T")
_BINARY_UNITS = (("TiB", 1024**4), ("GiB", 1024**3), ("MiB", 1024**2), ("KiB", 1024))


def quota_text(quota: int) -> str:
    """A quota as the form takes it back exactly: "10GiB", "1500" (bytes), "" for none."""
    if not quota:
        return ""
    for unit, size in _BINARY_UNITS:
        if quota % size == 0:
            return f"{quota // size}{unit}"
    return str(quota)


def parse_quota_field(raw: str) -> int:
    """The quota field: a size like "10GiB" (values.parse_size); empty or 0 for no limit."""
    if not raw.strip():
        return 0
    try:
        return parse_size(raw.strip())
    except ValueError as exc:
        raise BadRequest(f"quota: {exc}; leave it empty for no limit") from None


def _url(account: str) -> str:
    return f"/admin/accounts/{quote(account, safe='')}"


async def _off_loop(call: Callable[..., T], *args: Any, **kwargs: Any) -> T:
    """A write (a registry transaction) in a worker thread, never on the event loop."""
    return await anyio.to_thread.run_sync(functools.partial(call, *args, **kwargs))


def _list_page(request: Request, session: Session, *, status: int = 200,
               error: str | None = None, submitted: dict[str, str] | None = None) -> Response:
    accounts = service_of(request.app.state).accounts
    after = request.query_params.get("after", "") if request.method == "GET" else ""
    found = accounts.page(after, PAGE_SIZE + 1)
    following = found[PAGE_SIZE - 1].id if len(found) > PAGE_SIZE else None
    rows = [(account, accounts.usage(account.id)) for account in found[:PAGE_SIZE]]
    return _render(request, "accounts.html", session, status=status, rows=rows, after=after,
                   following=following, error=error, submitted=submitted or {})


def _account_page(request: Request, session: Session, account_id: str, *, status: int = 200,
                  error: str | None = None, new_token: dict[str, str] | None = None,
                  submitted: dict[str, str] | None = None,
                  new_s3_key: dict[str, str] | None = None) -> Response:
    accounts = service_of(request.app.state).accounts
    try:
        account = accounts.get(account_id)
    except NotFound as exc:
        return _list_page(request, session, status=404, error=exc.detail)
    service = service_of(request.app.state)
    storage = service.account_storage(ADMIN, account.id)
    return _render(request, "account.html", session, status=status, account=account,
                   usage=accounts.usage(account.id), tokens=accounts.tokens(account.id),
                   quota_value=quota_text(account.quota), error=error, new_token=new_token,
                   submitted=submitted or {}, url=_url(account.id), storage=storage,
                   rule_texts=[plan.describe(rule) for rule in _rules(storage["plan"])],
                   remote_choices=[*storage["remotes"], *service.settings.remotes, "default"],
                   s3_keys=service.s3_keys.listing(account.id), new_s3_key=new_s3_key,
                   s3_port=service.settings.s3.port)


# -- pages ---------------------------------------------------------------------------------------

@signed_in
async def accounts_page(request: Request, session: Session) -> Response:
    """GET: the list, a page of 50, and the form to create one. POST: create it, and answer
    with its page holding its first token, this once."""
    if request.method == "GET":
        return _list_page(request, session)
    form = await _form(request, session)
    submitted = {key: _field(form, key) for key in ("id", "name", "quota")}
    accounts = service_of(request.app.state).accounts
    try:
        quota = parse_quota_field(submitted["quota"])
        account, token = await _off_loop(accounts.create, submitted["id"].strip(),
                                         submitted["name"], quota)
    except FilestoreError as exc:
        return _list_page(request, session, status=exc.status, error=exc.detail,
                          submitted=submitted)
    return _account_page(request, session, account.id, status=201,
                         new_token={"name": "default", "value": token})


@signed_in
async def account_page(request: Request, session: Session) -> Response:
    return _account_page(request, session, request.path_params["id"])


# -- actions on one account ----------------------------------------------------------------------

@signed_in
async def account_state(request: Request, session: Session) -> Response:
    """Suspend (its tokens are refused from the next request on) or resume."""
    form = await _form(request, session)
    account_id, state = request.path_params["id"], _field(form, "state")
    try:
        await _off_loop(service_of(request.app.state).accounts.update, account_id, state=state)
    except FilestoreError as exc:
        return _account_page(request, session, account_id, status=exc.status, error=exc.detail)
    return _back(_url(account_id), f"Suspended {account_id}: its tokens are refused from now on."
                 if state == "suspended" else f"Resumed {account_id}: its tokens work again.")


@signed_in
async def account_edit(request: Request, session: Session) -> Response:
    """Change the name and the quota."""
    form = await _form(request, session)
    account_id = request.path_params["id"]
    submitted = {key: _field(form, key) for key in ("name", "quota")}
    try:
        quota = parse_quota_field(submitted["quota"])
        changed = await _off_loop(service_of(request.app.state).accounts.update, account_id,
                                  name=submitted["name"], quota=quota)
    except FilestoreError as exc:
        return _account_page(request, session, account_id, status=exc.status, error=exc.detail,
                             submitted=submitted)
    limit = size_text(changed.quota) if changed.quota else "none"
    return _back(_url(account_id), f"Saved {account_id}: name {changed.name!r}, quota {limit}.")


@signed_in
async def add_token(request: Request, session: Session) -> Response:
    """A new token, on the page answering this request only."""
    form = await _form(request, session)
    account_id, name = request.path_params["id"], _field(form, "name").strip()
    try:
        token = await _off_loop(service_of(request.app.state).accounts.add_token, account_id,
                                name)
    except FilestoreError as exc:
        return _account_page(request, session, account_id, status=exc.status, error=exc.detail,
                             submitted={"token_name": name})
    return _account_page(request, session, account_id, status=201,
                         new_token={"name": name, "value": token})


@signed_in
async def revoke_token(request: Request, session: Session) -> Response:
    form = await _form(request, session)
    account_id, name = request.path_params["id"], _field(form, "name")
    try:
        await _off_loop(service_of(request.app.state).accounts.revoke, account_id, name)
    except FilestoreError as exc:
        return _account_page(request, session, account_id, status=exc.status, error=exc.detail)
    return _back(_url(account_id), f"Revoked the token {name!r} of {account_id}: it is refused "
                 "from the next request on.")


# -- the account's own storage ------------------------------------------------------------------

_REMOTE_FIELDS = ("name", "url", "endpoint_url", "region", "access_key_id", "secret_access_key")
_RULE_FIELDS = ("prefix", "content_type", "remote", "upload_delay", "keep_local")


async def _save_storage(request: Request, session: Session, change: dict[str, Any], done: str,
                        submitted: dict[str, str] | None = None) -> Response:
    """PATCH the account's storage as the administrator; the page again with the reason (and
    the failed test's step) when it is refused."""
    account_id = request.path_params["id"]
    try:
        result = await service_of(request.app.state).save_account_storage(
            ADMIN, account_id, change, replace=False)
    except FilestoreError as exc:
        return _account_page(request, session, account_id, status=exc.status, error=exc.detail,
                             submitted=submitted)
    if not result.ok:
        return _account_page(request, session, account_id, status=422, submitted=submitted,
                             error=f"Not saved: the test failed at {result.step}: "
                                   f"{result.detail}")
    tested = f" (tested: put, read, compare, delete on {result.remote})" if result.tested else ""
    return _back(_url(account_id), done + tested + ".")


@signed_in
async def save_remote(request: Request, session: Session) -> Response:
    """Add or change one of the account's remotes; an empty secret keeps the stored one."""
    form = await _form(request, session)
    submitted = {key: _field(form, key).strip() for key in _REMOTE_FIELDS}
    name = submitted.pop("name")
    change = {"remotes": {name: {key: value for key, value in submitted.items()}}}
    submitted.pop("secret_access_key")  # never sent back into the page
    return await _save_storage(request, session, change, f"Saved the remote {name!r}",
                               {"remote_name": name, **submitted})


@signed_in
async def remove_remote(request: Request, session: Session) -> Response:
    form = await _form(request, session)
    name = _field(form, "name")
    return await _save_storage(request, session, {"remotes": {name: None}},
                               f"Removed the remote {name!r}")


@signed_in
async def add_rule(request: Request, session: Session) -> Response:
    """Append a rule to the account's plan (matched in order, before the global plan)."""
    form = await _form(request, session)
    submitted = {key: _field(form, key).strip() for key in _RULE_FIELDS}
    rule: dict[str, Any] = {key: value for key, value in submitted.items() if value}
    if rule.get("remote") == "(stay local)":
        rule.pop("remote")
        rule["upload"] = False
    plan = service_of(request.app.state).account_storage(ADMIN, request.path_params["id"])
    return await _save_storage(request, session, {"plan": [*plan["plan"], rule]},
                               "Added the rule", {f"rule_{k}": v for k, v in submitted.items()})


@signed_in
async def remove_rule(request: Request, session: Session) -> Response:
    form = await _form(request, session)
    rules = service_of(request.app.state).account_storage(ADMIN, request.path_params["id"])["plan"]
    number = _field(form, "number")
    if not number.isdigit() or not 1 <= int(number) <= len(rules):
        return _account_page(request, session, request.path_params["id"], status=400,
                             error=f"no rule {number!r}")
    kept = [rule for n, rule in enumerate(rules, 1) if n != int(number)]
    return await _save_storage(request, session, {"plan": kept}, f"Removed rule {number}")


def _rules(texts: list[dict[str, Any]]) -> list[PlanRule]:
    """The stored rules as `PlanRule`s, to describe them as the config would."""
    return [parse_section(PlanRule, rule, "plan", "account") for rule in texts]


@signed_in
async def remove_account(request: Request, session: Session) -> Response:
    """Forget the account and its tokens; refused (409, with the reason) while it holds files."""
    await _form(request, session)
    account_id = request.path_params["id"]
    try:
        await _off_loop(service_of(request.app.state).accounts.remove, account_id)
    except FilestoreError as exc:
        return _account_page(request, session, account_id, status=exc.status, error=exc.detail)
    return _back("/admin/accounts", f"Removed the account {account_id} and its tokens.")


@signed_in
async def add_s3_key(request: Request, session: Session) -> Response:
    """A new S3 key pair, its secret on the page answering this request only."""
    await _form(request, session)
    account_id = request.path_params["id"]
    try:
        pair = await _off_loop(service_of(request.app.state).s3_keys.add, account_id)
    except FilestoreError as exc:
        return _account_page(request, session, account_id, status=exc.status, error=exc.detail)
    return _account_page(request, session, account_id, status=201, new_s3_key=pair.public())


@signed_in
async def revoke_s3_key(request: Request, session: Session) -> Response:
    form = await _form(request, session)
    account_id, key = request.path_params["id"], _field(form, "key")
    try:
        await _off_loop(service_of(request.app.state).s3_keys.revoke, account_id, key)
    except FilestoreError as exc:
        return _account_page(request, session, account_id, status=exc.status, error=exc.detail)
    return _back(_url(account_id), f"Revoked the S3 key {key} of {account_id}: it is refused "
                 "from the next request on.")


@signed_in
async def purge_account(request: Request, session: Session) -> Response:
    """Suspend the account and start the job that deletes its files (cloud copies too), then
    the account."""
    await _form(request, session)
    account_id = request.path_params["id"]
    try:
        job = await service_of(request.app.state).purge_account(account_id)
    except FilestoreError as exc:
        return _account_page(request, session, account_id, status=exc.status, error=exc.detail)
    return _back(_url(account_id), f"Purging {account_id}: suspended, and job {job.id} deletes "
                 f"its {job.total:,} files, then the account (progress on Statistics).")


routes = [
    Route("/admin/accounts", accounts_page, methods=["GET", "POST"]),
    Route("/admin/accounts/{id}", account_page, methods=["GET"]),
    Route("/admin/accounts/{id}/state", account_state, methods=["POST"]),
    Route("/admin/accounts/{id}/edit", account_edit, methods=["POST"]),
    Route("/admin/accounts/{id}/tokens", add_token, methods=["POST"]),
    Route("/admin/accounts/{id}/tokens/revoke", revoke_token, methods=["POST"]),
    Route("/admin/accounts/{id}/remove", remove_account, methods=["POST"]),
    Route("/admin/accounts/{id}/purge", purge_account, methods=["POST"]),
    Route("/admin/accounts/{id}/s3-keys", add_s3_key, methods=["POST"]),
    Route("/admin/accounts/{id}/s3-keys/revoke", revoke_s3_key, methods=["POST"]),
    Route("/admin/accounts/{id}/storage/remote", save_remote, methods=["POST"]),
    Route("/admin/accounts/{id}/storage/remote/remove", remove_remote, methods=["POST"]),
    Route("/admin/accounts/{id}/storage/rule", add_rule, methods=["POST"]),
    Route("/admin/accounts/{id}/storage/rule/remove", remove_rule, methods=["POST"]),
]
