"""Secrets the registry keeps, encrypted with a key file of the data directory.

What the admin page saves is stored in the registry's settings table; the secrets among it
(`overrides.SECRET_KEYS`: a remote's `secret_access_key`) are stored as `enc:v1:` followed by a
Fernet token (AES-128-CBC and HMAC-SHA256, from `cryptography`), keyed with `data_dir/secrets.key`
(mode 0600, created the first time a secret is saved). The key never enters the registry, so a
copy of the registry (`filestore backup`, whose file is 0600 too) reveals no secret without it.

A value that cannot be decrypted (the key file is missing, or holds another key) is a one-line
`ConfigError` naming the key file and the way out; it never carries the value.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

from cryptography.fernet import Fernet, InvalidToken

from .errors import ConfigError
from .fsutil import fsync_dir

KEY_FILE = "secrets.key"
PREFIX = "enc:v1:"
_SEALED = "enc:"  # any version: a value starting so is never taken for plain text
_WAY_OUT = ("put back the key file the secret was saved with (mode 0600), or forget what the "
            "admin page saved with `filestore settings reset` and enter the secret again")


class SecretError(ConfigError):
    """A stored secret cannot be decrypted; the message names the key file, never the value."""

    code = "secret_unreadable"


def is_sealed(value: str) -> bool:
    """Whether `value` is an encrypted secret (else: plain text an older filestore saved)."""
    return value.startswith(_SEALED)


class SecretBox:
    """Encrypts and decrypts the registry's secrets with `data_dir/secrets.key`."""

    def __init__(self, data_dir: Path) -> None:
        self.path = data_dir / KEY_FILE

    def encrypt(self, text: str) -> str:
        """`enc:v1:` and a Fernet token of `text`; creates the key file on first use."""
        return PREFIX + self._fernet(create=True).encrypt(text.encode("utf-8")).decode("ascii")

    def decrypt(self, value: str, name: str = "a saved secret") -> str:
        """The text `encrypt` sealed into `value`; `name` says which setting in an error."""
        if not is_sealed(value):
            raise ValueError("not an encrypted secret")
        if not value.startswith(PREFIX):  # a later format: its version is not shown (nor it)
            raise SecretError(f"{name} is stored in a format this filestore does not know "
                              f"(newer than {PREFIX[:-1]}); upgrade filestore, or {_WAY_OUT}")
        fernet = self._fernet(create=False, name=name)
        try:
            return fernet.decrypt(value[len(PREFIX):].encode("ascii")).decode("utf-8")
        except (InvalidToken, UnicodeError):
            raise SecretError(f"{name} cannot be decrypted with the key file {self.path} (it "
                              f"holds another key); {_WAY_OUT}") from None

    def _fernet(self, *, create: bool, name: str = "a saved secret") -> Fernet:
        try:
            text = self.path.read_bytes()
        except FileNotFoundError:
            if not create:
                raise SecretError(f"{name} cannot be decrypted: the key file {self.path} is "
                                  f"missing; {_WAY_OUT}") from None
            _write_key_file(self.path)
            text = self.path.read_bytes()
        except OSError as exc:
            raise SecretError(f"cannot read the key file {self.path} ({exc.strerror})") from None
        try:
            return Fernet(text.strip())
        except ValueError:
            raise SecretError(f"{self.path} does not hold a secrets key; {_WAY_OUT}") from None


def _write_key_file(target: Path) -> None:
    """Write a new key whole (temp file 0600, fsync, then link into place): a reader sees no key
    or the whole key. An existing key wins (link never overwrites), so processes creating it at
    once agree on one, and no secret is ever sealed with a key that was then replaced."""
    tmp = target.with_name(f"{target.name}.{os.getpid()}.{os.urandom(4).hex()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(Fernet.generate_key() + b"\n")
            fh.flush()
            os.fsync(fh.fileno())
        with contextlib.suppress(FileExistsError):  # another process made one first: it wins
            os.link(tmp, target)
    finally:
        tmp.unlink(missing_ok=True)
    fsync_dir(target.parent)
