"""S3 access key pairs: the administrator's one pair, and any number per account.

A SigV4 signature is an HMAC keyed with the secret, so the server must hold the secret itself,
not a hash of it (as it does for tokens): it is stored encrypted (`secrets.py`, the data
directory's `secrets.key`), shown once when made (or by `filestore s3 keys` for the
administrator's, whose job is to hand it to a client), never returned again, never logged.
A key is looked up in the registry on every request, so a revoked one (or a suspended account's)
is refused from the next request on, in every worker process.
"""

from __future__ import annotations

import dataclasses
import logging
import secrets
import string
import time
from typing import Any

from .. import logs
from ..errors import Conflict, NotFound
from ..registry import Registry
from ..secrets import SecretBox

log = logging.getLogger("filestore.s3")

ADMIN = ""  # the administrator's keys have no account
MAX_KEYS = 10  # per account
_ID_ALPHABET = string.ascii_uppercase + string.digits
_SECRET_ALPHABET = string.ascii_letters + string.digits + "+/"


@dataclasses.dataclass(frozen=True)
class KeyPair:
    access_key_id: str
    secret_access_key: str

    def public(self) -> dict[str, str]:
        """As it is shown the once it is shown."""
        return {"access_key_id": self.access_key_id,
                "secret_access_key": self.secret_access_key}


def _new_pair() -> KeyPair:
    """20 characters of id (as AWS's, "FS" and 18 random), 40 of secret."""
    key_id = "FS" + "".join(secrets.choice(_ID_ALPHABET) for _ in range(18))
    return KeyPair(key_id, "".join(secrets.choice(_SECRET_ALPHABET) for _ in range(40)))


class S3Keys:
    """The key pairs' operations (the application layer's, see service.py)."""

    def __init__(self, registry: Registry, box: SecretBox) -> None:
        self.registry = registry
        self.box = box
        self._opened: dict[str, str] = {}  # sealed secret -> secret (a Fernet open per key)

    def lookup(self, access_key_id: str) -> tuple[str, str] | None:
        """(account, "" for the administrator; the secret) of a key that exists."""
        found = self.registry.read.s3_keys.get(access_key_id)
        if found is None:
            return None
        account, sealed, _ = found
        secret = self._opened.get(sealed)
        if secret is None:
            secret = self.box.decrypt(sealed, f"the S3 key {access_key_id}")
            if len(self._opened) > 10_000:
                self._opened.clear()
            self._opened[sealed] = secret
        return account, secret

    def admin_pair(self, *, rotate: bool = False) -> tuple[KeyPair, bool]:
        """The administrator's pair (made on first use; a new one with `rotate`, the old one
        refused from then on), and whether it is new."""
        with self.registry.transaction() as tx:
            held = tx.s3_keys.listing(ADMIN)
            if held and not rotate:
                key_id = held[-1][0]
                found = tx.s3_keys.get(key_id)
                assert found is not None
                return KeyPair(key_id, self.box.decrypt(found[1], "the S3 key")), False
            for key_id, _ in held:
                tx.s3_keys.revoke(ADMIN, key_id)
            pair = _new_pair()
            tx.s3_keys.add(pair.access_key_id, ADMIN, self.box.encrypt(pair.secret_access_key),
                           time.time())
        logs.event(log, "s3_key.created", "the administrator's S3 key {key} was made" + (
            ", the old one revoked" if held else ""), key=pair.access_key_id, rotated=bool(held))
        return pair, True

    def add(self, account: str) -> KeyPair:
        """A new pair for the account, shown this once."""
        pair = _new_pair()
        with self.registry.transaction() as tx:
            if tx.accounts.get(account) is None:
                raise NotFound(f"no account {account!r}")
            if len(tx.s3_keys.listing(account)) >= MAX_KEYS:
                raise Conflict(f"the account {account!r} has {MAX_KEYS} S3 keys, the most it "
                               "may have: revoke one first")
            tx.s3_keys.add(pair.access_key_id, account,
                           self.box.encrypt(pair.secret_access_key), time.time())
        logs.event(log, "s3_key.created", "S3 key {key} of account {account!r} made",
                   key=pair.access_key_id, account=account)
        return pair

    def listing(self, account: str) -> list[dict[str, Any]]:
        """The account's keys by id and creation time: never a secret."""
        if self.registry.read.accounts.get(account) is None:
            raise NotFound(f"no account {account!r}")
        return [{"access_key_id": key_id, "created": created}
                for key_id, created in self.registry.read.s3_keys.listing(account)]

    def revoke(self, account: str, access_key_id: str) -> None:
        with self.registry.transaction() as tx:
            if not tx.s3_keys.revoke(account, access_key_id):
                raise NotFound(f"the account {account!r} has no S3 key {access_key_id!r}")
        logs.event(log, "s3_key.revoked", "S3 key {key} of account {account!r} revoked",
                   key=access_key_id, account=account)
