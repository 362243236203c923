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
        return token_path.read_text().strip(), False
    except FileNotFoundError:
        pass
    token = secrets.token_urlsafe(32)
    # O_EXCL: two processes starting at once agree on the token the first one wrote.
    try:
        fd = os.open(token_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
    except FileExistsError:
        return token_path.read_text().strip(), False
    with os.fdopen(fd, "w") as fh:
        fh.write(token + "\n")
        fh.flush()
        os.fsync(fh.fileno())
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
