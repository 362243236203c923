"""The API token: configured, or generated once and kept 0600 in the data directory.

Writes, listing and admin calls carry `Authorization: Bearer TOKEN`; tokens are compared in
constant time so a timing side channel does not leak a prefix.
"""

from __future__ import annotations

import hmac
import os
import secrets
from pathlib import Path

from .errors import Unauthorized
from .fsutil import fsync_dir


def load_or_create_token(token_path: Path, configured: str) -> tuple[str, bool]:
    """The token and whether it was generated just now (so the caller can print it once)."""
    if configured:
        return configured, False
    stored = read_token(token_path)
    if stored:
        return stored, False
    # Missing, or empty after a crash. The caller holds the data directory's start lock, so no
    # other process races this.
    return write_new_token(token_path), True


def read_token(token_path: Path) -> str:
    """The stored token, or "" when there is none yet."""
    try:
        return token_path.read_text().strip()
    except FileNotFoundError:
        return ""


def write_new_token(token_path: Path) -> str:
    """Generate a token and store it whole (temp file, fsync, rename): a reader sees the old
    token or the new one, never a torn one. Running servers take it up within a second."""
    token = secrets.token_urlsafe(32)
    tmp = token_path.with_name(f"{token_path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(token + "\n")
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, token_path)
    fsync_dir(token_path.parent)
    return token


def bearer_token(header: str | None) -> str:
    """The token of an `Authorization: Bearer <token>` header (`Unauthorized` otherwise)."""
    if not header:
        raise Unauthorized("this request needs an Authorization: Bearer token")
    scheme, _, given = header.partition(" ")
    if scheme.lower() != "bearer" or not given.strip():
        raise Unauthorized("the Authorization header must be 'Bearer <token>'")
    return given.strip()


def check_bearer(header: str | None, token: str) -> None:
    """Raise `Unauthorized` unless `header` is `Bearer <token>`."""
    if not hmac.compare_digest(bearer_token(header).encode(), token.encode()):
        raise Unauthorized("the bearer token is wrong")
