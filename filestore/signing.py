"""Signed URLs: `/files/PATH?expires=UNIX&sig=HEX` grants one method on one path until a time.

The signature is HMAC-SHA256, keyed with 32 random bytes kept (mode 0600) in `data_dir/signing.key`,
over the method, the file's normalised path and the expiry. Whoever holds such a URL may do
exactly that request, without the token and also when `auth.public_read = false`: a PUT URL lets
a browser upload one file straight to filestore, a GET URL shares one private file for an hour.
A GET URL also allows HEAD (the same answer without its body), nothing else.

Limits, all under the signature (a URL that names any of them is signed over all of them):
- `signing.max_expiry` (7 days by default) caps the expiry: `filestore sign` and the admin API
  refuse to mint more, and a URL whose expiry lies further from now than that (made by hand, or
  before the limit was lowered) is refused when used.
- `sha256=HEX` and `type=TYPE` (PUT only) bind the body and its Content-Type: the PUT handler
  asks `Grant.put_checksum` for the SHA-256 the body must have (400 `checksum_mismatch`
  otherwise, as with `X-Checksum-SHA256`) and another Content-Type is refused (403).
- `once=NONCE` makes the URL single-use: `single_use` claims the nonce in the registry (shared
  by every worker process) before the request runs; an answer in 2xx spends it, any other
  answer or an error gives it back. While it is spent, or claimed by a request still running,
  the URL is refused (403). A request cut short by a crash of its server counts as a use.
- `acct=ID.MADE` names the account that minted the URL (an account's token may sign only its
  own paths): its id and when it was made (`Account.created` in microseconds). Once the
  signature matched, `check` looks the account up (one primary-key seek, as a token's is
  looked up, see accounts.py) and refuses the URL while the account is suspended, once it is
  removed, and when the path is not under its prefix (the minting code never signs such a
  one: defence in depth). So a suspension applies from the next request on, in every process,
  and a resumed account's URLs work again until they expire. `MADE` keeps a URL of a removed
  account from working for an account made later under the same id. URLs the administrator
  mints name no account: they are the operator's grants, and an account's suspension leaves
  them working.

The key is its own file, apart from the API token: `filestore sign --rotate-key` (or `filestore
token --rotate --signing-key`) replaces it, which revokes every URL signed before, without signing
out API clients or admin sessions. Running servers look at the key file's identity at most once a
second, on a signed request, so a rotation takes effect within a second in every process.
Requests without a signature never touch any of this.

Every refusal is a 403 saying why: no or a repeated `sig`/`expires`, malformed values, a
signature that matches nothing (tampered, another path, or an older key), one signed for another
method, an expired one, one beyond `signing.max_expiry`, a used single-use one, one whose account
is suspended or was removed. The account is looked up only after the signature matched, so a
forged `acct=` learns nothing about any account. Signatures are compared in constant time.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import hmac
import json
import os
import re
import secrets
import time
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import parse_qsl, quote

import anyio

from .accounts import ACCOUNT_ID
from .config import SigningSettings
from .errors import BadRequest, ChecksumMismatch, Forbidden
from .fsutil import fsync_dir
from .values import parse_duration, value_text

if TYPE_CHECKING:
    from .registry import Account, Registry

KEY_FILE = "signing.key"
METHODS = ("GET", "HEAD", "PUT", "DELETE")
# The methods a signature for each method grants: HEAD is a GET without the body.
_GRANTS = {"GET": ("GET", "HEAD"), "HEAD": ("HEAD",), "PUT": ("PUT",), "DELETE": ("DELETE",)}
_DOMAIN = b"filestore signed URL v1\n"  # so this key's MACs can never mean anything else
_DOMAIN_LIMITS = b"filestore signed URL v2\n"  # a URL that names sha256, type, once or acct
MAX_EXPIRY = SigningSettings().max_expiry  # signing.max_expiry's default
_SIG_HEX = 64
_MAX_EXPIRES_DIGITS = 12  # Unix seconds up to the year 33658: any real expiry, no huge ints
_MAX_FIELDS = 32  # a signed URL has up to six; more is not a URL anybody minted
_FIELDS = ("expires", "acct", "sha256", "type", "once", "sig")  # in the order a URL carries them
# ASCII only ("²" is a digit to str.isdigit), bounded: never a huge int to convert.
_EXPIRES_RE = re.compile(rf"[0-9]{{1,{_MAX_EXPIRES_DIGITS}}}")
_SIG_RE = re.compile(rf"[0-9a-fA-F]{{{_SIG_HEX}}}")
_SHA256_RE = re.compile(r"[0-9a-fA-F]{64}")
_NONCE_RE = re.compile(r"[0-9a-f]{32}")
# An account id, "." and when the account was made, in microseconds (`account_field`).
_ACCT_RE = re.compile(rf"({ACCOUNT_ID.pattern})\.[0-9]{{1,20}}")
# A media type with optional parameters, printable ASCII, as a Content-Type header carries it.
_TOKEN = r"[A-Za-z0-9!#$%&'*+.^_`|~-]+"
_TYPE_RE = re.compile(rf"{_TOKEN}/{_TOKEN}(;[ -~]*)?")
_MAX_TYPE = 255
_RELOAD_EVERY = 1.0  # seconds between looks at the key file: a rotation applies within this


class SignatureRefused(Forbidden):
    code = "bad_signature"


class LifetimeTooLong(BadRequest):
    code = "expiry_too_long"


def normal_type(value: str) -> str:
    """A Content-Type as compared with a signed one: lower case, one space after each `;`."""
    return re.sub(r"\s*;\s*", "; ", value.strip()).lower()


def signature(key: bytes, method: str, path: str, expires: int, sha256: str | None = None,
              content_type: str | None = None, once: str | None = None,
              account: str | None = None) -> str:
    """The hex HMAC-SHA256 of `method` on the normalised `path` until `expires` (Unix time),
    and of the limits the URL names (a URL that names none is signed as before they existed);
    `account` is the `acct` value (`account_field`)."""
    if sha256 is None and content_type is None and once is None and account is None:
        message = b"%s%s\n%s\n%d" % (_DOMAIN, method.encode("ascii"), path.encode("utf-8"),
                                     expires)
    else:  # JSON: no value can be mistaken for another field, whatever characters it holds
        fields: list[str | int] = [method, path, expires, sha256 or "", content_type or "",
                                   once or ""]
        if account is not None:  # a seventh element: URLs minted before `acct` keep matching
            fields.append(account)
        message = _DOMAIN_LIMITS + json.dumps(fields, separators=(",", ":")).encode("ascii")
    return hmac.new(key, message, hashlib.sha256).hexdigest()


def account_field(account: Account) -> str:
    """The `acct` value naming `account`: its id and when it was made, in microseconds."""
    return f"{account.id}.{round(account.created * 1_000_000)}"


def signed_url(key: bytes, method: str, path: str, expires: int, base: str = "", *,
               sha256: str | None = None, content_type: str | None = None,
               once: str | None = None, account: str | None = None) -> str:
    """`base` + `/files/PATH?expires=...[&acct=...][&sha256=...][&type=...][&once=...]&sig=...`
    (path percent-encoded as the API's own Location header does)."""
    sig = signature(key, method, path, expires, sha256, content_type, once, account)
    query = f"expires={expires}"
    for name, value in (("acct", account), ("sha256", sha256), ("type", content_type),
                        ("once", once)):
        if value is not None:
            query += f"&{name}={quote(value, safe='')}"
    return f"{base.rstrip('/')}/files/{quote(path)}?{query}&sig={sig}"


def lifetime_refusal(seconds: float, max_expiry: float) -> str | None:
    """Why a URL valid for `seconds` may not be signed ("longer than signing.max_expiry (7d)"),
    or None if it may."""
    if seconds <= max_expiry:
        return None
    return f"longer than signing.max_expiry ({value_text(max_expiry, parse_duration)})"


@dataclasses.dataclass(frozen=True)
class Grant:
    """What a valid signed URL allows: `method` (the one it was signed for; a GET grant also
    allows HEAD) on `path` until `expires`, and the limits it names."""

    method: str
    path: str
    expires: int
    sha256: str | None = None  # lower-case hex: the one body a PUT may carry
    content_type: str | None = None  # normalised (`normal_type`): the PUT's Content-Type
    once: str | None = None  # the nonce of a single-use URL
    account: str | None = None  # the id of the account that minted it (active when checked)

    def put_checksum(self, content_type: str | None, sha256: str | None) -> str | None:
        """For a PUT under this grant with the request's Content-Type and X-Checksum-SHA256
        (None when absent): the SHA-256 the body must have (the signed one, else the header's).
        403 for another Content-Type than the signed one, 400 `checksum_mismatch` for an
        X-Checksum-SHA256 other than the signed SHA-256."""
        if self.content_type is not None and (
                content_type is None or normal_type(content_type) != self.content_type):
            given = f"Content-Type {content_type}" if content_type else "no Content-Type"
            raise SignatureRefused(f"this URL was signed for Content-Type {self.content_type}, "
                                   f"not {given}")
        if self.sha256 is None:
            return sha256
        if sha256 is not None and sha256.lower() != self.sha256:
            raise ChecksumMismatch("X-Checksum-SHA256 is not the SHA-256 this URL was signed "
                                   f"for ({self.sha256})")
        return self.sha256


class Use:
    """One request under a grant, as `single_use` follows it: `answered(status)` tells it the
    response's status when that is not 2xx without an exception (a 304, a 416)."""

    def __init__(self) -> None:
        self.status: int | None = None

    def answered(self, status: int) -> None:
        self.status = status

    @property
    def succeeded(self) -> bool:
        return self.status is None or 200 <= self.status < 300


@contextlib.asynccontextmanager
async def single_use(grant: Grant | None, registry: Registry) -> AsyncIterator[Use]:
    """Around the work of a request under `grant`: for a single-use URL, claim its nonce first
    (403 while it is spent or claimed), then spend it if the request succeeded (no exception,
    and any status given to `Use.answered` in 2xx) or give it back. Other grants: nothing."""
    use = Use()
    if grant is None or grant.once is None:
        yield use
        return
    nonce, expires = grant.once, grant.expires

    def claim() -> str | None:
        with registry.transaction() as tx:
            return tx.grants.claim(nonce, expires, time.time())

    refused = await anyio.to_thread.run_sync(claim)
    if refused == "spent":
        raise SignatureRefused("this single-use URL was already used")
    if refused is not None:
        raise SignatureRefused("this single-use URL is being used by another request (or was "
                               "cut short by a server crash)")
    spent = False
    try:
        yield use
        spent = use.succeeded
    finally:
        def settle() -> None:
            with registry.transaction() as tx:
                if spent:
                    tx.grants.spend(nonce, time.time())
                else:
                    tx.grants.release(nonce)

        with anyio.CancelScope(shield=True):
            await anyio.to_thread.run_sync(settle)


# -- the key file -------------------------------------------------------------------------------

def _write_key_file(target: Path, *, replace: bool) -> bool:
    """Write a new key whole (temp, fsync, then rename or link): a reader sees the old key or
    the new one, never a torn one. With `replace` false an existing key wins (link refuses to
    overwrite), so processes creating it at once agree on one. Whether this one was installed."""
    tmp = target.with_name(f"{target.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
    try:
        with os.fdopen(fd, "w") as fh:
            fh.write(secrets.token_hex(32) + "\n")
            fh.flush()
            os.fsync(fh.fileno())
        if replace:
            os.replace(tmp, target)
            installed = True
        else:
            try:
                os.link(tmp, target)
                installed = True
            except FileExistsError:
                installed = False
    finally:
        tmp.unlink(missing_ok=True)
    fsync_dir(target.parent)
    return installed


def rotate_key(data_dir: Path) -> None:
    """Replace the key: every URL signed before stops working, in every running process."""
    _write_key_file(data_dir / KEY_FILE, replace=True)


def _parse_key(text: str, path: Path) -> bytes:
    try:
        key = bytes.fromhex(text.strip())
    except ValueError:
        key = b""
    if len(key) < 16:
        raise Forbidden(f"{path} does not hold a signing key; `filestore sign --rotate-key` "
                        "writes a new one")
    return key


class SigningKey:
    """The data directory's signing key, created on first use and re-read when rotated.
    `max_expiry`: how far off an expiry `check` takes (signing.max_expiry)."""

    def __init__(self, data_dir: Path, max_expiry: float = MAX_EXPIRY) -> None:
        self.path = data_dir / KEY_FILE
        self.max_expiry = max_expiry
        self._key = b""
        self._identity: tuple[int, int, int] | None = None
        self._next_look = 0.0

    def key(self) -> bytes:
        """The current key; at most once a second, a `stat` to see whether it was rotated."""
        now = time.monotonic()
        if self._key and now < self._next_look:
            return self._key
        self._next_look = now + _RELOAD_EVERY
        try:
            stat = os.stat(self.path)
        except FileNotFoundError:
            _write_key_file(self.path, replace=False)
            stat = os.stat(self.path)
        identity = (stat.st_ino, stat.st_mtime_ns, stat.st_size)
        if identity != self._identity:
            self._key = _parse_key(self.path.read_text(), self.path)
            self._identity = identity
        return self._key

    def rotate(self) -> None:
        """Replace the key: every URL signed before stops working, in every running process."""
        rotate_key(self.path.parent)
        self._next_look = 0.0

    def sign(self, method: str, path: str, expires: int, base: str = "", *,
             sha256: str | None = None, content_type: str | None = None,
             once: bool = False, account: Account | None = None) -> str:
        """A signed URL; `sha256` and `content_type` bind a PUT's body and its type, `once`
        makes it single-use, `account` (the minting account; None: the administrator) makes it
        work only while that account is active. `ValueError` saying what is wrong with an
        argument."""
        if method not in METHODS:
            raise ValueError(f"method must be one of {', '.join(METHODS)}")
        if account is not None and not path.startswith(account.prefix):
            raise ValueError(f"the account {account.id!r} may sign only paths under "
                             f"{account.prefix!r}")
        if (sha256 is not None or content_type is not None) and method != "PUT":
            raise ValueError("a SHA-256 and a type bind the body of a PUT: sign a PUT")
        if sha256 is not None:
            if not _SHA256_RE.fullmatch(sha256.strip()):
                raise ValueError("the SHA-256 must be 64 hexadecimal digits")
            sha256 = sha256.strip().lower()
        if content_type is not None:
            content_type = normal_type(content_type)
            if len(content_type) > _MAX_TYPE or not _TYPE_RE.fullmatch(content_type):
                raise ValueError("the type must be a media type such as text/plain or "
                                 "image/png (printable ASCII, at most 255 characters)")
        nonce = secrets.token_hex(16) if once else None
        return signed_url(self.key(), method, path, expires, base, sha256=sha256,
                          content_type=content_type, once=nonce,
                          account=None if account is None else account_field(account))

    def check(self, query: bytes, method: str, path: str, *, max_expiry: float | None = None,
              now: float | None = None,
              accounts: Callable[[str], Account | None] | None = None) -> Grant | None:
        """The grant `query` (the raw query string) carries, or None if it carries no signature
        at all; `SignatureRefused` unless it grants `method` on `path` now, with an expiry no
        further off than `max_expiry` (default: this key's), and, for a URL that names an
        account, unless `accounts` (an account by id as it is now, or None: `Accounts.find`)
        gives that account, active and owning `path`. The caller still enforces what the
        grant names: `Grant.put_checksum`, `single_use`."""
        if b"sig" not in query and b"expires" not in query and b"%" not in query:
            return None  # nothing signed here (the common case for a query like ?v=3)
        try:
            fields = parse_qsl(query.decode("latin-1"), keep_blank_values=True,
                               max_num_fields=_MAX_FIELDS)
        except ValueError:
            raise SignatureRefused("the query string has too many fields") from None
        found: dict[str, list[str]] = {}
        for name, value in fields:
            if name in _FIELDS:
                found.setdefault(name, []).append(value)
        if "sig" not in found and "expires" not in found:
            return None  # other fields alone (a `type=` of the application's own) sign nothing
        for name in _FIELDS:
            if len(found.get(name, ())) > 1:
                raise SignatureRefused(f"{name} is given more than once")
        for name in ("expires", "sig"):
            if name not in found:
                raise SignatureRefused(f"a signed URL needs both expires and sig; {name} is "
                                       "missing")
        field = {name: values[0] for name, values in found.items()}
        raw_expires, sig = field["expires"], field["sig"]
        if not _EXPIRES_RE.fullmatch(raw_expires):
            raise SignatureRefused("expires must be a Unix time in whole seconds")
        if not _SIG_RE.fullmatch(sig):
            raise SignatureRefused(f"sig must be {_SIG_HEX} hexadecimal digits")
        sha256, content_type, once = field.get("sha256"), field.get("type"), field.get("once")
        account = field.get("acct")
        named = _ACCT_RE.fullmatch(account) if account is not None else None
        if account is not None and named is None:
            raise SignatureRefused("acct must be an account id, '.' and a whole number")
        if sha256 is not None and not _SHA256_RE.fullmatch(sha256):
            raise SignatureRefused("sha256 must be 64 hexadecimal digits")
        if content_type is not None and (len(content_type) > _MAX_TYPE
                                         or not _TYPE_RE.fullmatch(content_type)):
            raise SignatureRefused("type must be a media type such as text/plain")
        if once is not None and not _NONCE_RE.fullmatch(once):
            raise SignatureRefused("once must be 32 lower-case hexadecimal digits")
        expires = int(raw_expires)
        key = self.key()
        given = sig.lower().encode("ascii")
        signed_for = next(
            (m for m in METHODS
             if hmac.compare_digest(given, signature(key, m, path, expires, sha256,
                                                     content_type, once, account
                                                     ).encode("ascii"))),
            None)
        if signed_for is None:
            raise SignatureRefused("the signature does not match this path and expiry (altered, "
                                   "signed for another path, or with a key since rotated)")
        if method not in _GRANTS[signed_for]:
            raise SignatureRefused(f"this URL was signed for {signed_for}, not {method}")
        now = time.time() if now is None else now
        if now >= expires:
            raise SignatureRefused(f"this signed URL expired at {_when(expires)}")
        limit = self.max_expiry if max_expiry is None else max_expiry
        if expires - now > limit:
            raise SignatureRefused(
                f"this signed URL runs until {_when(expires)}, further off than "
                f"signing.max_expiry ({value_text(limit, parse_duration)}) allows")
        signer = None
        if named is not None:  # looked up only now that the signature matched: a forged
            signer = named[1]  # acct= learns nothing about any account
            _check_signer(signer, named[0], path, accounts)
        return Grant(signed_for, path, expires, sha256.lower() if sha256 else None,
                     content_type, once, signer)


def _check_signer(account_id: str, field: str, path: str,
                  accounts: Callable[[str], Account | None] | None) -> None:
    """Refuse (403) a URL minted by `account_id` (`field`: its `acct` value) unless that account
    is still there (the one made then, not a later one of the same id), active, and owns
    `path`."""
    if not path.startswith(f"{account_id}/"):  # never minted so (SigningKey.sign refuses it)
        raise SignatureRefused(f"the account {account_id!r} that signed this URL may grant "
                               f"only paths under {account_id + '/'!r}")
    if accounts is None:  # a caller that cannot look accounts up must not grant their URLs
        raise SignatureRefused("this server cannot check the account that signed this URL")
    account = accounts(account_id)
    if account is None or account_field(account) != field:
        raise SignatureRefused(f"the account {account_id!r} that signed this URL was removed")
    if not account.active:
        raise SignatureRefused(f"the account {account_id!r} that signed this URL is suspended")


def _when(expires: int) -> str:
    return datetime.fromtimestamp(expires, UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
