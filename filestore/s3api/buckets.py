"""Buckets: a top-level namespace of the caller's, over ordinary filestore paths.

For the administrator's key, bucket `x` is the path prefix `x/`; for an account's key, bucket `x`
is `ACCOUNT/x/`. Bucket names are the owner's own: two accounts may each have a bucket `media`,
and neither can name the other's (an unknown bucket is 404 `NoSuchBucket`, whoever holds it, so
a key learns nothing about other accounts). A bucket exists once created (CreateBucket); its
objects are the files under its prefix, so files PUT at `/files/x/...` are objects of the
administrator's bucket `x` and the reverse.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import re
import time
from typing import TYPE_CHECKING

from ..registry import Tables
from .errors import S3Error, no_such_bucket

if TYPE_CHECKING:
    from ..service import Service

_NAME = re.compile(r"[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]")


@dataclasses.dataclass(frozen=True)
class Caller:
    """Whose key signed the request: the administrator's ("") or an account's."""

    account: str
    access_key_id: str

    @property
    def admin(self) -> bool:
        return not self.account

    def prefix(self, bucket: str) -> str:
        """The path prefix bucket `bucket` of this caller's is."""
        return f"{bucket}/" if self.admin else f"{self.account}/{bucket}/"


def check_name(name: str) -> None:
    """S3's bucket naming rules (3 to 63 lower-case letters, digits, "." and "-", starting and
    ending with a letter or digit, no "..", not an IP address): 400 `InvalidBucketName`."""
    bad = (not _NAME.fullmatch(name) or ".." in name or ".-" in name or "-." in name
           or name.startswith("xn--") or name.endswith("-s3alias"))
    if not bad:
        try:
            ipaddress.IPv4Address(name)
            bad = True
        except ValueError:
            pass
    if bad:
        raise S3Error("InvalidBucketName", f"The specified bucket is not valid: {name[:80]}",
                      400)


def require(tx: Tables, caller: Caller, bucket: str) -> str:
    """The path prefix of the caller's bucket; 404 `NoSuchBucket` if it has none so named."""
    if tx.buckets.get(caller.account, bucket) is None:
        raise no_such_bucket(bucket)
    return caller.prefix(bucket)


def listing(service: Service, caller: Caller) -> list[tuple[str, float]]:
    return service.store.registry.read.buckets.listing(caller.account)


def create(service: Service, caller: Caller, bucket: str) -> None:
    """Create the bucket (again: nothing to do, as S3 answers in us-east-1)."""
    check_name(bucket)
    with service.store.registry.transaction() as tx:
        if not caller.admin and tx.accounts.get(caller.account) is None:
            raise S3Error("AccessDenied", "the account is gone", 403)
        tx.buckets.add(caller.account, bucket, time.time())


def delete(service: Service, caller: Caller, bucket: str) -> None:
    """Forget an empty bucket: 409 `BucketNotEmpty` while it holds objects."""
    with service.store.registry.transaction() as tx:
        prefix = require(tx, caller, bucket)
        if tx.files.listing(prefix, "", 1):
            raise S3Error("BucketNotEmpty", "The bucket you tried to delete is not empty", 409)
        tx.buckets.delete(caller.account, bucket)
