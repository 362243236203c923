"""Accounts: who a request acts for, and what an account may do.

An account owns the path prefix `ID/`: its files are ordinary files under that prefix (the same
queue, cache, verify, moves and metrics), so the bucket stays readable as files. It has tokens of
its own, several at once, each shown once when made and kept only as its SHA-256; a token may
PUT, GET, HEAD, DELETE and list only under its account's prefix. The operator's token stays the
administrator's, and may do everything.

A request's token is looked up in the registry on every request (one primary-key seek on the
reader), so a revoked token or a suspended account is refused at once, in every process. When a
token was last used is noted in memory and written at most once a minute. A signed URL an account
minted names it (`acct=`, under the signature) and is looked up the same way (`find`): it stops
working while the account is suspended and once it is removed.
"""

from __future__ import annotations

import dataclasses
import hashlib
import hmac
import logging
import re
import secrets
import time
from typing import Any

import anyio

from . import logs
from .auth import bearer_token
from .errors import BadRequest, Conflict, Forbidden, NotFound, Unauthorized
from .registry import Account, AccountToken, Registry
from .values import parse_size

ACCOUNT_ID = re.compile(r"[a-z0-9][a-z0-9-]{0,62}")
TOKEN_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
TOKEN_PREFIX = "fsa_"  # an account token, told from the operator's at a glance (and in logs)
USED_FLUSH_SECONDS = 60.0
STATES = ("active", "suspended")
MAX_NAME = 200
MAX_TOKENS = 100  # per account: an account's token may mint its own, but not without end

log = logging.getLogger("filestore.accounts")


@dataclasses.dataclass(frozen=True)
class Principal:
    """Who a request acts for: the administrator (`account` None) or one account."""

    account: Account | None = None
    token_name: str | None = None

    @property
    def admin(self) -> bool:
        return self.account is None

    def check_path(self, path: str) -> None:
        """Refuse (403) a path outside the account's prefix; the administrator may use any."""
        if self.account is not None and not path.startswith(self.account.prefix):
            raise Forbidden(f"this token may use only paths under {self.account.prefix!r}")

    def listing_prefix(self, prefix: str) -> str:
        """The prefix a listing may scan: an account's own (its prefix when none is given)."""
        if self.account is None:
            return prefix
        if not prefix:
            return self.account.prefix
        if not prefix.startswith(self.account.prefix):
            raise Forbidden(f"this token may list only under {self.account.prefix!r}")
        return prefix

    def check_account(self, account: str) -> None:
        """Refuse (403) another account's settings; the administrator may use any."""
        if self.account is not None and self.account.id != account:
            raise Forbidden("this token may manage only its own account")

    def check_admin(self) -> None:
        if self.account is not None:
            raise Forbidden("only the administrator's token may do this")


ADMIN = Principal()


def digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def parse_id(raw: Any) -> str:
    if not isinstance(raw, str) or not ACCOUNT_ID.fullmatch(raw):
        raise BadRequest("an account id is 1 to 63 lower-case letters, digits and '-', "
                         "starting with a letter or digit")
    return raw


def parse_token_name(raw: Any) -> str:
    if not isinstance(raw, str) or not TOKEN_NAME.fullmatch(raw):
        raise BadRequest("a token name is 1 to 64 letters, digits, '.', '_' and '-', "
                         "starting with a letter or digit")
    return raw


def parse_quota(raw: Any) -> int:
    """Bytes, or a size as the config writes one ("10GiB"); 0: no limit."""
    if isinstance(raw, str):
        try:
            return parse_size(raw)
        except ValueError as exc:
            raise BadRequest(f"quota must be {exc} (0: no limit)") from None
    if isinstance(raw, bool) or not isinstance(raw, int) or not 0 <= raw <= 2**60:
        raise BadRequest("quota is a whole number of bytes or a size like \"10GiB\" "
                         "(0: no limit)")
    return raw


def parse_name(raw: Any) -> str:
    if not isinstance(raw, str) or not raw.strip() or len(raw) > MAX_NAME \
            or any(ord(c) < 32 for c in raw):
        raise BadRequest(f"name is 1 to {MAX_NAME} printable characters")
    return raw.strip()


class Accounts:
    """The accounts' operations (the application layer's, see service.py)."""

    def __init__(self, registry: Registry, admin_token: Any) -> None:
        self.registry = registry
        # A callable giving the operator's token as it is now (it may be rotated).
        self._admin_token = admin_token
        self._used: dict[str, float] = {}  # token SHA-256 -> last use, not yet written

    # -- who a request is ------------------------------------------------------------------------

    def authenticate(self, header: str | None) -> Principal:
        """The principal an `Authorization: Bearer` header names: 401 without a valid token,
        403 for a suspended account's."""
        token = bearer_token(header)
        if hmac.compare_digest(token.encode(), str(self._admin_token()).encode()):
            return ADMIN
        if not token.startswith(TOKEN_PREFIX):
            raise Unauthorized("the bearer token is wrong")
        key = digest(token)
        found = self.registry.read.tokens.holder(key)
        if found is None:
            raise Unauthorized("the bearer token is wrong")
        account, name = found
        if not account.active:
            raise Forbidden(f"the account {account.id!r} is suspended")
        self._used[key] = time.time()
        return Principal(account, name)

    def find(self, account: str) -> Account | None:
        """The account as it is now, or None: one primary-key seek on the reader, as
        `authenticate`'s, so a signed URL an account minted (`signing.py`, `acct=`) is refused
        from the next request on, in every process, once the account is suspended or removed."""
        return self.registry.read.accounts.get(account)

    async def flush_every(self) -> None:
        """Write when tokens were last used, once a minute (a server's background task). A
        write that fails (the registry's server away) is said once and tried again next minute
        with what came since: it never ends the task, which would stop the server."""
        writes = logs.Failing(log, "accounts: writing when tokens were last used")
        try:
            while True:
                await anyio.sleep(USED_FLUSH_SECONDS)
                try:
                    await anyio.to_thread.run_sync(self.flush)
                except Exception as exc:
                    writes.failed(exc)
                else:
                    writes.ok()
        finally:
            with anyio.CancelScope(shield=True):
                try:
                    await anyio.to_thread.run_sync(self.flush)
                except Exception as exc:  # stopping: the times are lost, nothing else
                    log.warning("accounts: when tokens were last used is not written at "
                                "shutdown: %s: %s", type(exc).__name__,
                                getattr(exc, "detail", "") or exc)

    def flush(self) -> None:
        used, self._used = self._used, {}
        if used:
            try:
                with self.registry.transaction() as tx:
                    tx.tokens.used(used)
            except BaseException:
                # Not written: the batch waits for the next flush (newer uses noted meanwhile
                # win). Written again if it landed after all, which changes nothing.
                self._used = {**used, **self._used}
                raise

    # -- accounts --------------------------------------------------------------------------------

    def get(self, account: str) -> Account:
        found = self.registry.read.accounts.get(account)
        if found is None:
            raise NotFound(f"no account {account!r}")
        return found

    def page(self, after: str, limit: int) -> list[Account]:
        return self.registry.read.accounts.page(after, limit)

    def describe(self, account: Account) -> dict[str, Any]:
        """The account as the API and the command show it: its fields and its `usage`."""
        return {**account.public(), "usage": self.usage(account.id)}

    def usage(self, account: str) -> dict[str, Any]:
        """Files, bytes, local-only bytes, bytes in the cloud per remote, and uploads: from
        counters, never a scan."""
        counters = self.registry.read.accounts.usage(account)
        remotes = {name[len("remote."):-len(".bytes")]: value for name, value in counters.items()
                   if name.startswith("remote.") and name.endswith(".bytes")
                   and name != "remote.bytes"}
        return {"files": counters.get("files", 0), "bytes": counters.get("bytes", 0),
                "local_bytes": counters.get("local.bytes", 0),
                "remote_bytes": counters.get("remote.bytes", 0), "remotes": remotes,
                "uploads": counters.get("uploads", 0)}

    def create(self, account: str, name: str, quota: int = 0) -> tuple[Account, str]:
        """A new account and its first token (named "default"), shown this once."""
        account, name, quota = parse_id(account), parse_name(name), parse_quota(quota)
        token = _new_token()
        now = time.time()
        with self.registry.transaction() as tx:
            if tx.accounts.get(account) is not None:
                raise Conflict(f"the account {account!r} exists already")
            created = tx.accounts.create(account, name, quota, now)
            tx.tokens.add(account, "default", digest(token), now)
        logs.event(log, "account.created", "account {account!r} created" + (
            ", quota {quota:,} bytes" if quota else ", no quota"), account=account, quota=quota)
        logs.event(log, "token.created", "token {name!r} of account {account!r} created",
                   account=account, name="default")
        return created, token

    def update(self, account: str, *, name: Any = None, state: Any = None,
               quota: Any = None) -> Account:
        if state is not None and state not in STATES:
            raise BadRequest(f"state is one of {', '.join(STATES)}")
        with self.registry.transaction() as tx:
            changed = tx.accounts.update(
                account, name=None if name is None else parse_name(name), state=state,
                quota=None if quota is None else parse_quota(quota))
        if changed is None:
            raise NotFound(f"no account {account!r}")
        logs.event(log, "account.updated", "account {account!r} updated: {state}" + (
            ", quota {quota:,} bytes" if changed.quota else ", no quota"), account=account,
            state=changed.state, quota=changed.quota, renamed=name is not None)
        return changed

    def remove(self, account: str) -> None:
        """Forget an account that holds no files (409 while it does: its files stay files, and
        would count for an account made later under the same id)."""
        with self.registry.transaction() as tx:
            if tx.accounts.get(account) is None:
                raise NotFound(f"no account {account!r}")
            held = tx.accounts.usage(account).get("files", 0)
            if held:
                raise Conflict(f"the account {account!r} holds {held:,} files: delete them "
                               "first")
            tx.accounts.delete(account)
        logs.event(log, "account.removed", "account {account!r} removed", account=account)

    # -- tokens ----------------------------------------------------------------------------------

    def add_token(self, account: str, name: str) -> str:
        """A new token for the account, shown this once."""
        name = parse_token_name(name)
        token = _new_token()
        with self.registry.transaction() as tx:
            if tx.accounts.get(account) is None:
                raise NotFound(f"no account {account!r}")
            if tx.tokens.named(account, name) is not None:
                raise Conflict(f"the account {account!r} has a token named {name!r}")
            if len(tx.tokens.listing(account)) >= MAX_TOKENS:
                raise Conflict(f"the account {account!r} has {MAX_TOKENS} tokens, the most it "
                               "may have: revoke one first")
            tx.tokens.add(account, name, digest(token), time.time())
        logs.event(log, "token.created", "token {name!r} of account {account!r} created",
                   account=account, name=name)
        return token

    def tokens(self, account: str) -> list[AccountToken]:
        self.get(account)
        return self.registry.read.tokens.listing(account)

    def revoke(self, account: str, name: str) -> None:
        """Revoke a token: refused from the next request on, in every process."""
        with self.registry.transaction() as tx:
            if not tx.tokens.revoke(account, name):
                raise NotFound(f"the account {account!r} has no token named {name!r}")
        logs.event(log, "token.revoked", "token {name!r} of account {account!r} revoked",
                   account=account, name=name)


def _new_token() -> str:
    return TOKEN_PREFIX + secrets.token_urlsafe(32)
