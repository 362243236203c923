"""What a remote failure means (remote/s3.py `translate`) and when to try again (queue/retry.py).

`translate` is the one place a botocore/aiohttp failure becomes a `RemoteError` (permanent: a
person must fix something) or a retryable `RemoteUnavailable` / `RemoteIntegrityError`; the
upload queue then only asks `is_retryable` and waits `next_delay`.
"""

from __future__ import annotations

import asyncio
import random

import aiohttp
import botocore.exceptions
import pytest

from filestore.errors import (
    FilestoreError,
    RemoteError,
    RemoteIntegrityError,
    RemoteNotFound,
    RemoteUnavailable,
)
from filestore.queue import retry
from filestore.queue.retry import is_retryable, next_delay
from filestore.remote.s3 import translate


def client_error(code: str, status: int, operation: str = "PutObject") -> BaseException:
    return botocore.exceptions.ClientError(
        {"Error": {"Code": code, "Message": "m"}, "ResponseMetadata": {"HTTPStatusCode": status}},
        operation,
    )


# (code, HTTP status) -> expected class (exactly), retryable
CLIENT_ERRORS = [
    pytest.param("AccessDenied", 403, RemoteError, False, id="AccessDenied-403"),
    pytest.param("InvalidAccessKeyId", 403, RemoteError, False, id="InvalidAccessKeyId-403"),
    pytest.param("SignatureDoesNotMatch", 403, RemoteError, False,
                 id="SignatureDoesNotMatch-403"),
    pytest.param("NoSuchBucket", 404, RemoteError, False, id="NoSuchBucket-404"),
    pytest.param("NoSuchKey", 404, RemoteNotFound, False, id="NoSuchKey-404"),
    pytest.param("SlowDown", 503, RemoteUnavailable, True, id="SlowDown-503"),
    pytest.param("InternalError", 500, RemoteUnavailable, True, id="InternalError-500"),
    pytest.param("ServiceUnavailable", 503, RemoteUnavailable, True,
                 id="ServiceUnavailable-503"),
    pytest.param("RequestTimeout", 400, RemoteUnavailable, True, id="RequestTimeout-400"),
    pytest.param("Throttling", 400, RemoteUnavailable, True, id="Throttling-400"),
    pytest.param("BadDigest", 400, RemoteIntegrityError, True, id="BadDigest-400"),
    pytest.param("ThrottlingException", 400, RemoteUnavailable, True,
                 id="ThrottlingException-400"),
    # A few more the same rules must cover:
    pytest.param("XAmzContentSHA256Mismatch", 400, RemoteIntegrityError, True,
                 id="XAmzContentSHA256Mismatch-400"),
    pytest.param("404", 404, RemoteNotFound, False, id="HEAD-bare-404"),  # HEAD has no body
    pytest.param("403", 403, RemoteError, False, id="HEAD-bare-403"),
    pytest.param("503", 503, RemoteUnavailable, True, id="HEAD-bare-503"),
    pytest.param("", 429, RemoteUnavailable, True, id="no-code-429"),
    pytest.param("", 408, RemoteUnavailable, True, id="no-code-408"),
    pytest.param("ExpiredToken", 400, RemoteError, False, id="ExpiredToken-400"),
    pytest.param("InternalError", 502, RemoteUnavailable, True, id="InternalError-502"),
]


@pytest.mark.parametrize(("code", "status", "expected", "retryable"), CLIENT_ERRORS)
def test_translate_client_error(code: str, status: int, expected: type[RemoteError],
                                retryable: bool) -> None:
    result = translate(client_error(code, status), "upload of 'a/b.txt'")
    assert type(result) is expected, f"{code} {status} -> {type(result).__name__}"
    assert result.retryable is retryable
    assert is_retryable(result) is retryable
    assert result.detail.startswith("upload of 'a/b.txt'")
    if expected is RemoteError:
        assert code in result.detail  # the operator sees which S3 error it was


TRANSPORT_ERRORS = [
    pytest.param(botocore.exceptions.EndpointConnectionError(endpoint_url="http://s3.test"),
                 RemoteUnavailable, True, id="EndpointConnectionError"),
    pytest.param(botocore.exceptions.ConnectionClosedError(endpoint_url="http://s3.test"),
                 RemoteUnavailable, True, id="ConnectionClosedError"),
    pytest.param(botocore.exceptions.ReadTimeoutError(endpoint_url="http://s3.test"),
                 RemoteUnavailable, True, id="ReadTimeoutError"),
    pytest.param(botocore.exceptions.ConnectTimeoutError(endpoint_url="http://s3.test"),
                 RemoteUnavailable, True, id="ConnectTimeoutError"),
    pytest.param(botocore.exceptions.NoCredentialsError(), RemoteError, False,
                 id="NoCredentialsError"),
    # asyncio.TimeoutError is builtins.TimeoutError since Python 3.11; spelled as aiohttp sees it.
    pytest.param(asyncio.TimeoutError(), RemoteUnavailable, True,  # noqa: UP041
                 id="asyncio.TimeoutError"),
    pytest.param(aiohttp.ClientConnectionError("connection reset"), RemoteUnavailable, True,
                 id="aiohttp.ClientConnectionError"),
    pytest.param(aiohttp.ServerDisconnectedError(), RemoteUnavailable, True,
                 id="aiohttp.ServerDisconnectedError"),
    pytest.param(ConnectionResetError(104, "Connection reset by peer"), RemoteUnavailable, True,
                 id="ConnectionResetError"),
]


@pytest.mark.parametrize(("exc", "expected", "retryable"), TRANSPORT_ERRORS)
def test_translate_transport_error(exc: BaseException, expected: type[RemoteError],
                                   retryable: bool) -> None:
    result = translate(exc, "HEAD of 'x'")
    assert type(result) is expected, f"{type(exc).__name__} -> {type(result).__name__}"
    assert result.retryable is retryable
    assert is_retryable(result) is retryable
    assert result.detail.startswith("HEAD of 'x'")


@pytest.mark.parametrize(("exc", "retryable"), [
    pytest.param(RemoteError("bucket gone"), False, id="RemoteError"),
    pytest.param(RemoteNotFound("no key"), False, id="RemoteNotFound"),
    pytest.param(RemoteUnavailable("5xx"), True, id="RemoteUnavailable"),
    pytest.param(RemoteIntegrityError("checksum"), True, id="RemoteIntegrityError"),
    # Anything unexpected is retried (max_attempts bounds it).
    pytest.param(ValueError("surprise"), True, id="unexpected-ValueError"),
    pytest.param(OSError(5, "EIO"), True, id="unexpected-OSError"),
    pytest.param(FilestoreError("not a remote error"), True, id="FilestoreError"),
])
def test_is_retryable(exc: BaseException, retryable: bool) -> None:
    assert is_retryable(exc) is retryable


# -- next_delay ---------------------------------------------------------------------------------


def bounds(attempt: int, base: float, cap: float) -> tuple[float, float]:
    d = min(cap, base * 2 ** (attempt - 1))
    return d / 2, d


def extremes(monkeypatch: pytest.MonkeyPatch, attempt: int, base: float,
             cap: float) -> tuple[float, float]:
    """next_delay with its jitter pinned to the lowest, then the highest value it can draw."""
    with monkeypatch.context() as patch:
        patch.setattr(retry.random, "uniform", lambda low, high: low)
        low = next_delay(attempt, base, cap)
        patch.setattr(retry.random, "uniform", lambda low, high: high)
        high = next_delay(attempt, base, cap)
    return low, high


POLICIES = [(1.0, 300.0), (0.05, 0.2), (2.5, 60.0), (10.0, 5.0), (0.0, 10.0)]


@pytest.mark.parametrize(("base", "cap"), POLICIES)
def test_next_delay_extremes_are_exactly_the_bounds(monkeypatch: pytest.MonkeyPatch,
                                                     base: float, cap: float) -> None:
    for attempt in range(1, 40):
        low, high = extremes(monkeypatch, attempt, base, cap)
        assert (low, high) == pytest.approx(bounds(attempt, base, cap)), attempt


@pytest.mark.parametrize(("base", "cap"), POLICIES)
def test_next_delay_stays_within_bounds(base: float, cap: float) -> None:
    state = random.getstate()
    random.seed(1234)
    try:
        for attempt in range(1, 40):
            low, high = bounds(attempt, base, cap)
            for _ in range(50):
                delay = next_delay(attempt, base, cap)
                assert low <= delay <= high, (attempt, delay)
                assert delay <= cap
    finally:
        random.setstate(state)


@pytest.mark.parametrize(("base", "cap"), POLICIES)
def test_next_delay_bounds_never_decrease(monkeypatch: pytest.MonkeyPatch,
                                          base: float, cap: float) -> None:
    previous = (0.0, 0.0)
    for attempt in range(1, 60):
        low, high = extremes(monkeypatch, attempt, base, cap)
        assert low >= previous[0] and high >= previous[1], attempt
        previous = (low, high)
    # ...and, past the cap, they sit at [cap/2, cap].
    assert previous == pytest.approx((min(cap, base * 2**58) / 2, min(cap, base * 2**58)))


def test_next_delay_first_attempt() -> None:
    delays = [next_delay(1, 1.0, 300.0) for _ in range(200)]
    assert all(0.5 <= d <= 1.0 for d in delays)
    assert len(set(delays)) > 1  # jittered, so entries that failed together spread out


def test_next_delay_never_above_cap_up_to_max_attempts() -> None:
    # upload.max_attempts is at most 1000 (config.py), so these are all the attempts there are.
    for attempt in range(1, 1001):
        delay = next_delay(attempt, 1.0, 300.0)
        assert delay <= 300.0
        if attempt >= 10:  # 2**9 > 300: saturated
            assert delay >= 150.0


def test_next_delay_far_past_the_cap() -> None:
    assert 150.0 <= next_delay(1100, 1.0, 300.0) <= 300.0
