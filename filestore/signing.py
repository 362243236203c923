"""Signed URLs: `/files/PATH?expires=UNIX&sig=HEX` grants one method on one path until a time.

The signature is HMAC-SHA256, keyed with 32 random bytes kept (mode 0600) in `data_dir/signing.key`,
over the method, the file's normalised path and the expiry. Whoever holds such a URL may do
exactly that request, without the token and also when `auth.public_read = false`: a PUT URL lets
a browser upload one file straight to filestore, a GET URL shares one private file for an hour.
A GET URL also allows HEAD (the same answer without its body), nothing else.

The key is its own file, apart from the API token: `filestore sign --rotate-key` replaces it,
which revokes every URL signed before, without signing out API clients or admin sessions (and
rotating the token leaves signed URLs working). Running servers look at the key file's identity
at most once a second, on a signed request, so a rotation takes effect within a second in every
process. Requests without a
signature never touch any of this.

Every refusal is a 403 saying why: no or a repeated `sig`/`expires`, malformed values, a
signature that matches nothing (tampered, another path, or an older key), one signed for another
method, or an expired one. Signatures are compared in constant time.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import re
import secrets
import time
from datetime import UTC, datetime
from pathlib import Path
from urllib.parse import parse_qsl, quote

from .errors import Forbidden
from .fsutil import fsync_dir

KEY_FILE = "signing.key"
METHODS = ("GET", "HEAD", "PUT", "DELETE")
# The methods a signature for each method grants: HEAD is a GET without the body.
_GRANTS = {"GET": ("GET", "HEAD"), "HEAD": ("HEAD",), "PUT": ("PUT",), "DELETE": ("DELETE",)}
_DOMAIN = b"filestore signed URL v1\n"  # so this key's MACs can never mean anything else
_SIG_HEX = 64
_MAX_EXPIRES_DIGITS = 12  # Unix seconds up to the year 33658: any real expiry, no huge ints
_MAX_FIELDS = 32  # a signed URL has two; more is not a URL anybody minted
# ASCII only ("²" is a digit to str.isdigit), bounded: never a huge int to convert.
_EXPIRES_RE = re.compile(rf"[0-9]{{1,{_MAX_EXPIRES_DIGITS}}}")
_SIG_RE = re.compile(rf"[0-9a-fA-F]{{{_SIG_HEX}}}")
_RELOAD_EVERY = 1.0  # seconds between looks at the key file: a rotation applies within this


class SignatureRefused(Forbidden):
    code = "bad_signature"


def signature(key: bytes, method: str, path: str, expires: int) -> str:
    """The hex HMAC-SHA256 of `method` on the normalised `path` until `expires` (Unix time)."""
    message = b"%s%s\n%s\n%d" % (_DOMAIN, method.encode("ascii"), path.encode("utf-8"), expires)
    return hmac.new(key, message, hashlib.sha256).hexdigest()


def signed_url(key: bytes, method: str, path: str, expires: int, base: str = "") -> str:
    """`base` + `/files/PATH?expires=...&sig=...` (path percent-encoded as the API's own
    Location header does)."""
    sig = signature(key, method, path, expires)
    return f"{base.rstrip('/')}/files/{quote(path)}?expires={expires}&sig={sig}"


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
    """The data directory's signing key, created on first use and re-read when rotated."""

    def __init__(self, data_dir: Path) -> None:
        self.path = data_dir / KEY_FILE
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

    def sign(self, method: str, path: str, expires: int, base: str = "") -> str:
        if method not in METHODS:
            raise ValueError(f"method must be one of {', '.join(METHODS)}")
        return signed_url(self.key(), method, path, expires, base)

    def check(self, query: bytes, method: str, path: str, now: float | None = None) -> bool:
        """Whether `query` (the raw query string) carries a signature at all; if it does, raise
        `SignatureRefused` unless it grants `method` on `path` now."""
        if b"sig" not in query and b"expires" not in query and b"%" not in query:
            return False  # nothing signed here (the common case for a query like ?v=3)
        try:
            fields = parse_qsl(query.decode("latin-1"), keep_blank_values=True,
                               max_num_fields=_MAX_FIELDS)
        except ValueError:
            raise SignatureRefused("the query string has too many fields") from None
        found: dict[str, list[str]] = {}
        for name, value in fields:
            if name in ("sig", "expires"):
                found.setdefault(name, []).append(value)
        if not found:
            return False
        for name in ("expires", "sig"):
            values = found.get(name, [])
            if not values:
                raise SignatureRefused(f"a signed URL needs both expires and sig; {name} is "
                                       "missing")
            if len(values) > 1:
                raise SignatureRefused(f"{name} is given more than once")
        raw_expires, sig = found["expires"][0], found["sig"][0]
        if not _EXPIRES_RE.fullmatch(raw_expires):
            raise SignatureRefused("expires must be a Unix time in whole seconds")
        if not _SIG_RE.fullmatch(sig):
            raise SignatureRefused(f"sig must be {_SIG_HEX} hexadecimal digits")
        expires = int(raw_expires)
        key = self.key()
        given = sig.lower().encode("ascii")
        signed_for = next(
            (m for m in METHODS
             if hmac.compare_digest(given, signature(key, m, path, expires).encode("ascii"))),
            None)
        if signed_for is None:
            raise SignatureRefused("the signature does not match this path and expiry (altered, "
                                   "signed for another path, or with a key since rotated)")
        if method not in _GRANTS[signed_for]:
            raise SignatureRefused(f"this URL was signed for {signed_for}, not {method}")
        if (time.time() if now is None else now) >= expires:
            when = datetime.fromtimestamp(expires, UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
            raise SignatureRefused(f"this signed URL expired at {when}")
        return True
