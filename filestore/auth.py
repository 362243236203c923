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


def load_or_create_token(token_path: Path, configured: str) -> tuple[str, bool]:
    """The token and whether it was generated just now (so the caller can print it once)."""
    if configured:
        return configured, False
    try:
        stored = token_path.read_text().strip()
    except FileNotFoundError:
        stored = ""
    if stored:
        return stored, False
    # Missing, or empty after a crash: write a new one whole (temp file, fsync, rename). The
    # caller holds the data directory's start lock, so no other process races this.
    token = secrets.token_urlsafe(32)
    tmp = token_path.with_name(token_path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(token + "\n")
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, token_path)
    return token, True


def check_bearer(header: str | None, token: str) -> None:
    """Raise `Unauthorized` unless `header` is `Bearer <token>`."""
    if not header:
        raise Unauthorized("this request needs an Authorization: Bearer token")
    scheme, _, given = header.partition(" ")
    if scheme.lower() != "bearer" or not given.strip():
        raise Unauthorized("the Authorization header must be 'Bearer <token>'")
    if not hmac.compare_digest(given.strip().encode(), token.encode()):
        raise Unauthorized("the bearer token is wrong")
