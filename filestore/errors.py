"""Domain errors, raised inside filestore and translated at the edges.

`app.py`'s exception handler turns a `FilestoreError` into a JSON error response with its
`status` (for `/files/` and the admin API alike); `cli/base.py` turns it into one line on stderr.
Nothing below the edges knows about HTTP or terminals.
"""

from __future__ import annotations


class FilestoreError(Exception):
    """Base class: `status` is the HTTP status the edge answers with, `code` a stable name."""

    status = 500
    code = "internal_error"

    def __init__(self, detail: str = "") -> None:
        super().__init__(detail)
        self.detail = detail


class ConfigError(FilestoreError):
    """A setting is missing, unknown or malformed; the message names key, value and expectation."""

    status = 500
    code = "config_error"


class BadRequest(FilestoreError):
    status = 400
    code = "bad_request"


class BadPath(BadRequest):
    code = "bad_path"


class ChecksumMismatch(BadRequest):
    code = "checksum_mismatch"

    def __init__(self, detail: str = "", digest: str = "sha256") -> None:
        super().__init__(detail)
        self.digest = digest  # which one the body failed: "sha256", "md5", ...


class Unauthorized(FilestoreError):
    status = 401
    code = "unauthorized"


class Forbidden(FilestoreError):
    status = 403
    code = "forbidden"


class NotFound(FilestoreError):
    status = 404
    code = "not_found"


class Conflict(FilestoreError):
    status = 409
    code = "conflict"


class InUse(Conflict):
    code = "in_use"


class PreconditionFailed(FilestoreError):
    status = 412
    code = "precondition_failed"


class TooLarge(FilestoreError):
    status = 413
    code = "too_large"


class InsufficientStorage(FilestoreError):
    status = 507
    code = "insufficient_storage"


class QuotaExceeded(InsufficientStorage):
    """A PUT would take its account past its quota (nothing of it is kept)."""

    code = "quota_exceeded"


class RegistryUnavailable(FilestoreError):
    """The registry's database server cannot be talked to now (PostgreSQL stopped, restarting,
    out of connection slots, the network cut): worth trying again in a few seconds, and work
    resumes by itself once it is back. The detail names the server by its redacted URL, never
    its password. A transaction cut off at its COMMIT may have landed or not: what it recorded
    is read again, never assumed."""

    status = 503
    code = "registry_unavailable"


class RemoteError(FilestoreError):
    """A remote store failed. `retryable`: worth trying again later (network, 5xx, throttling);
    otherwise permanent until someone fixes something (credentials, bucket, permissions)."""

    status = 502
    code = "remote_error"
    retryable = False


class RemoteUnavailable(RemoteError):
    status = 503
    code = "remote_unavailable"
    retryable = True


class RemoteNotFound(RemoteError):
    status = 404
    code = "remote_not_found"


class RemoteIntegrityError(RemoteError):
    """What the remote holds is not what was sent (size or checksum differ)."""

    code = "remote_integrity"
    retryable = True
