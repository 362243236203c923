"""The Remote protocol (remote/base.py), one suite run against both remotes.

`file`: FileRemote on a temp directory. `s3`: S3Remote on moto's real HTTP server, through
aioboto3, under the prefix "pre". S3-only and file-only behaviour (multipart, the on-disk layout)
follows the shared suite.
"""

from __future__ import annotations

import base64
import hashlib
import random
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any, BinaryIO

import aioboto3
import pytest
from aiobotocore.session import AioSession
from faults import FaultProxy

from filestore.config import RemoteSettings
from filestore.errors import RemoteError, RemoteIntegrityError, RemoteNotFound
from filestore.queue.retry import is_retryable
from filestore.remote import Remote, RemoteObject, open_remote

pytestmark = pytest.mark.anyio

MiB = 1024 * 1024
SECRET = "SUPERSECRET123"
CONTENT_TYPE = "application/octet-stream"


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture(scope="module")
def botocore_loader() -> Any:
    return AioSession().get_component("data_loader")


@pytest.fixture(autouse=True)
def warm_botocore(monkeypatch: pytest.MonkeyPatch, botocore_loader: Any) -> None:
    """Speed only. S3Remote.open() makes a fresh `aioboto3.Session()`, and each fresh session
    parses botocore's JSON service models again (~0.5 s): once per server start in production,
    but once per test here. Give each fresh session a model loader whose cache is warm; the
    session, client, config and credentials are still S3Remote.open()'s own."""
    real = aioboto3.Session

    def session(**kwargs: Any) -> aioboto3.Session:
        botocore_session = AioSession()
        botocore_session.register_component("data_loader", botocore_loader)
        return real(botocore_session=botocore_session, **kwargs)

    monkeypatch.setattr(aioboto3, "Session", session)


def s3_settings(endpoint_url: str, bucket: str, **extra: Any) -> RemoteSettings:
    return RemoteSettings(url=f"s3://{bucket}/pre", endpoint_url=endpoint_url, region="us-east-1",
                          access_key_id="test", secret_access_key="test", **extra)


@pytest.fixture(params=["file", "s3"])
def kind(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def settings(kind: str, tmp_path: Path, request: pytest.FixtureRequest) -> RemoteSettings:
    if kind == "file":
        return RemoteSettings(url=f"file://{tmp_path}/r")
    # Only the s3 variant starts moto and makes a bucket.
    moto = request.getfixturevalue("moto")
    return s3_settings(moto.url, request.getfixturevalue("bucket"))


async def connected(settings: RemoteSettings, data_dir: Path) -> Remote:
    remote = open_remote("default", settings, data_dir)
    await remote.open()
    return remote


@pytest.fixture
async def remote(settings: RemoteSettings, tmp_path: Path) -> AsyncIterator[Remote]:
    remote = await connected(settings, tmp_path)
    yield remote
    await remote.close()


@pytest.fixture
def proxy(moto: Any) -> Iterator[FaultProxy]:
    fault = FaultProxy(moto.port)
    yield fault
    fault.close()


# -- helpers ----------------------------------------------------------------------------------


def payload(size: int, seed: int = 0) -> bytes:
    """Position-dependent bytes, so a wrong offset can never go unnoticed."""
    return random.Random(seed).randbytes(size)


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


class Sources:
    """Local files to upload from (put takes an open binary file)."""

    def __init__(self, where: Path) -> None:
        self.where = where
        self.where.mkdir()
        self.count = 0

    def write(self, data: bytes) -> Path:
        self.count += 1
        path = self.where / f"src-{self.count}"
        path.write_bytes(data)
        return path


@pytest.fixture
def sources(tmp_path: Path) -> Sources:
    return Sources(tmp_path / "sources")


async def put(remote: Remote, sources: Sources, path: str, data: bytes,
              digest: str | None = None) -> RemoteObject:
    source: BinaryIO
    with open(sources.write(data), "rb") as source:
        return await remote.put(path, source, len(data), digest or sha(data), CONTENT_TYPE)


async def read(remote: Remote, path: str, start: int = 0, end: int | None = None) -> bytes:
    return b"".join([chunk async for chunk in remote.get(path, start, end)])


async def listing(remote: Remote, prefix: str = "") -> list[RemoteObject]:
    return [item async for item in remote.list_objects(prefix)]


# -- the shared protocol suite ----------------------------------------------------------------


async def test_put_then_head_and_get(remote: Remote, sources: Sources) -> None:
    data = payload(2 * MiB + 333)
    stored = await put(remote, sources, "docs/report.bin", data)
    assert (stored.path, stored.size, stored.sha256) == ("docs/report.bin", len(data), sha(data))

    head = await remote.head("docs/report.bin")
    assert head is not None
    assert (head.path, head.size) == ("docs/report.bin", len(data))
    assert await read(remote, "docs/report.bin") == data


async def test_put_overwrites(remote: Remote, sources: Sources) -> None:
    await put(remote, sources, "a.txt", b"first version, longer")
    await put(remote, sources, "a.txt", b"second")
    assert await read(remote, "a.txt") == b"second"
    head = await remote.head("a.txt")
    assert head is not None and head.size == len(b"second")


DATA_SIZE = 2 * MiB + 123
RANGES = {  # (start, end inclusive | None)
    "whole": (0, None),
    "start-only": (7, None),
    "start-only-past-first-chunk": (MiB + 5, None),
    "start-end-inclusive": (10, 99),
    "first-byte": (0, 0),
    "zero-start-with-end": (0, 9),
    "last-byte": (DATA_SIZE - 1, DATA_SIZE - 1),
    "across-1MiB-chunk-boundary": (MiB - 10, MiB + 9),
    "across-two-chunk-boundaries": (MiB - 1, 2 * MiB),
    "explicit-whole": (0, DATA_SIZE - 1),
}


async def test_get_ranges(remote: Remote, sources: Sources) -> None:
    # One upload, every range read from it (an upload per range would cost a client each).
    data = payload(DATA_SIZE, seed=1)
    await put(remote, sources, "big.bin", data)
    wrong = {}
    for name, (start, end) in RANGES.items():
        expected = data[start:] if end is None else data[start:end + 1]
        got = await read(remote, "big.bin", start, end)
        if got != expected:
            wrong[name] = f"got {len(got)} bytes, expected {len(expected)}"
    assert wrong == {}


async def test_list_by_prefix_is_relative_and_sorted(remote: Remote, sources: Sources) -> None:
    contents = {"b/c": b"12345", "a/2": b"22", "ab": b"333", "a/sub/3": b"4444", "a/1": b"1"}
    for path, data in contents.items():  # deliberately not in sorted order
        await put(remote, sources, path, data)

    everything = await listing(remote)
    assert [item.path for item in everything] == ["a/1", "a/2", "a/sub/3", "ab", "b/c"]
    assert {item.path: item.size for item in everything} == {
        path: len(data) for path, data in contents.items()}

    assert [item.path for item in await listing(remote, "a/")] == ["a/1", "a/2", "a/sub/3"]
    # A prefix is a string prefix, not a directory: "a" also matches "ab".
    assert [item.path for item in await listing(remote, "a")] == ["a/1", "a/2", "a/sub/3", "ab"]
    assert [item.path for item in await listing(remote, "a/sub/")] == ["a/sub/3"]
    assert await listing(remote, "nothing/") == []


async def test_delete(remote: Remote, sources: Sources) -> None:
    await put(remote, sources, "x/y/gone.txt", b"bye")
    await put(remote, sources, "x/kept.txt", b"stay")

    await remote.delete("x/y/gone.txt")

    assert await remote.head("x/y/gone.txt") is None
    with pytest.raises(RemoteNotFound) as caught:
        await read(remote, "x/y/gone.txt")
    assert caught.value.retryable is False
    assert [item.path for item in await listing(remote)] == ["x/kept.txt"]
    assert await read(remote, "x/kept.txt") == b"stay"

    # Deleting what is not there is not an error (twice, and a path that never existed).
    await remote.delete("x/y/gone.txt")
    await remote.delete("never/was/here.txt")
    assert await read(remote, "x/kept.txt") == b"stay"


async def test_missing_object(remote: Remote) -> None:
    assert await remote.head("no/such.txt") is None
    with pytest.raises(RemoteNotFound) as caught:
        await read(remote, "no/such.txt")
    assert caught.value.retryable is False and is_retryable(caught.value) is False
    with pytest.raises(RemoteNotFound):
        await read(remote, "no/such.txt", 5, 10)


async def test_keys_are_prefix_slash_path(remote: Remote, sources: Sources, kind: str,
                                          settings: RemoteSettings, tmp_path: Path,
                                          request: pytest.FixtureRequest) -> None:
    data = b"where does it land?"
    await put(remote, sources, "dir/sub/file.txt", data)
    if kind == "s3":
        moto = request.getfixturevalue("moto")
        bucket = request.getfixturevalue("bucket")
        assert remote.key_for("dir/sub/file.txt") == "pre/dir/sub/file.txt"
        listed = moto.client().list_objects_v2(Bucket=bucket)
        assert [item["Key"] for item in listed.get("Contents", [])] == ["pre/dir/sub/file.txt"]
        body = moto.client().get_object(Bucket=bucket, Key="pre/dir/sub/file.txt")["Body"]
        assert body.read() == data
    else:
        root = tmp_path / "r"
        assert remote.key_for("dir/sub/file.txt") == str(root / "dir/sub/file.txt")
        assert (root / "dir/sub/file.txt").read_bytes() == data
        # Nothing else landed, not even a temp file.
        files = sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file())
        assert files == ["dir/sub/file.txt"]


async def test_put_empty_file(remote: Remote, sources: Sources) -> None:
    stored = await put(remote, sources, "empty", b"")
    assert stored.size == 0 and stored.sha256 == sha(b"")
    head = await remote.head("empty")
    assert head is not None and head.size == 0
    assert await read(remote, "empty") == b""
    assert [(item.path, item.size) for item in await listing(remote)] == [("empty", 0)]


async def test_put_with_wrong_sha256(remote: Remote, sources: Sources, kind: str,
                                     settings: RemoteSettings,
                                     request: pytest.FixtureRequest) -> None:
    data = b"the bytes actually sent"
    wrong = sha(b"something else")
    if kind == "file":
        with pytest.raises(RemoteIntegrityError) as caught:
            await put(remote, sources, "bad.bin", data, digest=wrong)
        assert caught.value.retryable is True
        assert is_retryable(caught.value)
        # Nothing landed: neither the object nor a temp file.
        assert await remote.head("bad.bin") is None
        assert await listing(remote) == []
        assert list(Path(settings.url.removeprefix("file://"), ".filestore-tmp").iterdir()) == []
        # A failed overwrite leaves the previous version in place.
        await put(remote, sources, "bad.bin", b"previous")
        with pytest.raises(RemoteIntegrityError):
            await put(remote, sources, "bad.bin", data, digest=wrong)
        assert await read(remote, "bad.bin") == b"previous"
        return
    # moto accepts a wrong x-amz-checksum-sha256 and stores the checksum it was sent (real S3
    # answers BadDigest), so the mismatch case needs the fault layer (or a client double, see
    # test_s3_put_verification_catches_a_store_that_differs). Here: a correct upload passes our
    # post-upload verification, and the store holds exactly the checksum we sent.
    stored = await put(remote, sources, "good.bin", data)
    assert stored.sha256 == sha(data)
    moto = request.getfixturevalue("moto")
    head = moto.client().head_object(Bucket=request.getfixturevalue("bucket"),
                                     Key="pre/good.bin", ChecksumMode="ENABLED")
    assert head["ChecksumSHA256"] == base64.b64encode(hashlib.sha256(data).digest()).decode()
    assert head["ContentLength"] == len(data)


async def test_a_path_holding_objects_is_not_an_object(remote: Remote, sources: Sources,
                                                       kind: str,
                                                       request: pytest.FixtureRequest) -> None:
    await put(remote, sources, "d/f", b"inside")
    assert await remote.head("d") is None
    with pytest.raises(RemoteNotFound):
        await read(remote, "d")
    await remote.delete("d")  # no such object: not an error
    assert await read(remote, "d/f") == b"inside"


async def test_a_path_below_an_object_is_missing(remote: Remote, sources: Sources, kind: str,
                                                 request: pytest.FixtureRequest) -> None:
    await put(remote, sources, "d/f", b"inside")
    assert await remote.head("d/f/g") is None
    with pytest.raises(RemoteNotFound):
        await read(remote, "d/f/g")
    await remote.delete("d/f/g")  # no such object: not an error
    assert await read(remote, "d/f") == b"inside"


# -- cleanup ----------------------------------------------------------------------------------


async def test_cleanup_file_removes_temp_leftovers(sources: Sources, tmp_path: Path) -> None:
    remote = await connected(RemoteSettings(url=f"file://{tmp_path}/r"), tmp_path)
    try:
        await put(remote, sources, "real.txt", b"keep me")
        tmp = tmp_path / "r" / ".filestore-tmp"
        (tmp / "0123abcd").write_bytes(b"half an upload")
        (tmp / "4567efgh").write_bytes(b"")
        # Leftovers are not objects.
        assert [item.path for item in await listing(remote)] == ["real.txt"]

        assert await remote.cleanup() == 2
        assert list(tmp.iterdir()) == []
        assert await read(remote, "real.txt") == b"keep me"
        assert await remote.cleanup() == 0
    finally:
        await remote.close()


async def test_cleanup_s3_aborts_open_multipart_uploads(moto: Any, bucket: str,
                                                        tmp_path: Path) -> None:
    s3 = moto.client()
    ours = s3.create_multipart_upload(Bucket=bucket, Key="pre/x")["UploadId"]
    theirs = s3.create_multipart_upload(Bucket=bucket, Key="other/y")["UploadId"]
    remote = await connected(s3_settings(moto.url, bucket), tmp_path)
    try:
        aborted = await remote.cleanup()
    finally:
        await remote.close()
    assert aborted >= 1
    left = {u["UploadId"]: u["Key"] for u in s3.list_multipart_uploads(Bucket=bucket)
            .get("Uploads", [])}
    assert ours not in left
    # Only uploads under the remote's own prefix are touched.
    assert left == {theirs: "other/y"}
    assert aborted == 1


# -- S3 only: multipart, verification, failures, secrets --------------------------------------


async def test_s3_multipart_upload(moto: Any, bucket: str, sources: Sources,
                                   tmp_path: Path) -> None:
    settings = s3_settings(moto.url, bucket, multipart_threshold=5 * MiB, part_size=5 * MiB)
    remote = await connected(settings, tmp_path)
    data = payload(11 * MiB, seed=3)
    try:
        stored = await put(remote, sources, "big/multi.bin", data)
        assert (stored.size, stored.sha256) == (len(data), sha(data))
        head = await remote.head("big/multi.bin")
        assert head is not None and head.size == len(data)
        assert await read(remote, "big/multi.bin", 5 * MiB - 3, 10 * MiB + 2) == \
            data[5 * MiB - 3:10 * MiB + 3]
    finally:
        await remote.close()
    s3 = moto.client()
    obj = s3.get_object(Bucket=bucket, Key="pre/big/multi.bin")
    assert obj["Body"].read() == data
    assert obj["ETag"].strip('"').endswith("-3")  # 5 + 5 + 1 MiB: really multipart
    assert s3.list_multipart_uploads(Bucket=bucket).get("Uploads", []) == []


class _LyingStore:
    """Wraps the S3 client so the store's answers describe a stored copy that differs from what
    was sent: what a real store that corrupted or truncated the upload would answer (moto never
    does). `put` overrides PutObject's answer (None values remove a field), `head` HEAD's."""

    def __init__(self, client: Any, put: dict[str, Any], head: dict[str, Any]) -> None:
        self._client, self._put, self._head = client, put, head

    def __getattr__(self, name: str) -> Any:
        return getattr(self._client, name)

    @staticmethod
    def _apply(answer: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
        changed = {**answer, **override}
        return {k: v for k, v in changed.items() if v is not None}

    async def put_object(self, **kwargs: Any) -> dict[str, Any]:
        return self._apply(await self._client.put_object(**kwargs), self._put)

    async def head_object(self, **kwargs: Any) -> dict[str, Any]:
        return self._apply(await self._client.head_object(**kwargs), self._head)


WRONG_SHA256 = base64.b64encode(b"\0" * 32).decode()


@pytest.mark.parametrize(("put_answer", "head_answer"), [
    # the store's answer to the PUT reports another checksum: no HEAD needed to catch it
    pytest.param({"ChecksumSHA256": WRONG_SHA256}, {}, id="answer-checksum"),
    # an ETag that is not the MD5 of what was sent (a store that stored other bytes, or whose
    # ETags are no MD5s, as with SSE-KMS), with no checksum in the answer: the HEAD is the check
    pytest.param({"ChecksumSHA256": None, "ETag": '"opaque"'}, {"ContentLength": 3},
                 id="head-size"),
    pytest.param({"ChecksumSHA256": None, "ETag": '"opaque"'},
                 {"ChecksumSHA256": WRONG_SHA256}, id="head-checksum"),
    pytest.param({"ChecksumSHA256": None, "ETag": '"opaque"'},
                 {"ChecksumSHA256": None, "ETag": '"other"'}, id="head-etag"),
    # our checksum echoed, but the ETag is the MD5 of an empty body (moto, for a body it took
    # for a form): the HEAD finds the size differs
    pytest.param({"ETag": '"d41d8cd98f00b204e9800998ecf8427e"'}, {"ContentLength": 0},
                 id="echoed-checksum-empty-object"),
])
async def test_s3_put_verification_catches_a_store_that_differs(
        moto: Any, bucket: str, sources: Sources, tmp_path: Path,
        put_answer: dict[str, Any], head_answer: dict[str, Any]) -> None:
    remote = await connected(s3_settings(moto.url, bucket), tmp_path)
    real = remote._client  # type: ignore[attr-defined]
    try:
        remote._client = _LyingStore(real, put_answer, head_answer)  # type: ignore[attr-defined]
        with pytest.raises(RemoteIntegrityError) as caught:
            await put(remote, sources, "v.bin", b"twelve bytes")
        assert caught.value.retryable is True
    finally:
        remote._client = real  # type: ignore[attr-defined]
        await remote.close()


async def failures(remote: Remote, sources: Sources,
                   ops: tuple[str, ...]) -> dict[str, Exception | None]:
    """Run each operation once: what it raised (None: it succeeded). Tests compare summaries of
    the whole table, so a failing assertion names every operation that misbehaved."""
    raised: dict[str, Exception | None] = {}
    for op in ops:
        try:
            if op == "head":
                await remote.head("a.txt")
            elif op == "put":
                await put(remote, sources, "a.txt", b"payload")
            elif op == "get":
                await read(remote, "a.txt")
            elif op == "list":
                await listing(remote)
            elif op == "delete":
                await remote.delete("a.txt")
            else:
                await remote.cleanup()
        except Exception as exc:
            raised[op] = exc
        else:
            raised[op] = None
    return raised


def summary(raised: dict[str, Exception | None]) -> dict[str, tuple[str, Any, bool]]:
    """op -> (error class, its `retryable`, what the queue's `is_retryable` says)."""
    return {op: ("no error", None, False) if exc is None else
            (type(exc).__name__, getattr(exc, "retryable", None), is_retryable(exc))
            for op, exc in raised.items()}


async def test_s3_unreachable_is_retryable(moto: Any, bucket: str, proxy: FaultProxy,
                                           sources: Sources, tmp_path: Path) -> None:
    remote = await connected(s3_settings(proxy.url, bucket), tmp_path)
    try:
        proxy.down()
        ops = ("head", "put", "get", "list", "delete", "cleanup")
        raised = await failures(remote, sources, ops)
        assert summary(raised) == {op: ("RemoteUnavailable", True, True) for op in ops}
        assert all(isinstance(exc, RemoteError) and exc.status == 503 for exc in raised.values())

        # It recovers once the store is back, on the same client.
        proxy.up()
        await put(remote, sources, "a.txt", b"payload")
        assert await read(remote, "a.txt") == b"payload"
    finally:
        await remote.close()


async def test_s3_missing_bucket_is_permanent(moto: Any, sources: Sources,
                                              tmp_path: Path) -> None:
    remote = await connected(s3_settings(moto.url, "no-such-bucket-for-filestore"), tmp_path)
    try:
        ops = ("put", "get", "list", "delete", "cleanup")
        raised = await failures(remote, sources, ops)
    finally:
        await remote.close()
    # Exactly RemoteError: not RemoteUnavailable (retryable) nor RemoteNotFound (object missing).
    assert summary(raised) == {op: ("RemoteError", False, False) for op in ops}
    assert {op: "NoSuchBucket" in getattr(exc, "detail", "") for op, exc in raised.items()} == \
        dict.fromkeys(ops, True)


async def test_s3_head_on_missing_bucket_is_an_error(moto: Any, tmp_path: Path) -> None:
    remote = await connected(s3_settings(moto.url, "no-such-bucket-for-filestore"), tmp_path)
    try:
        with pytest.raises(RemoteError) as caught:
            await remote.head("a.txt")
    finally:
        await remote.close()
    assert caught.value.retryable is False
    assert "NoSuchBucket" in caught.value.detail


async def test_s3_secret_never_shown(moto: Any, bucket: str, tmp_path: Path) -> None:
    settings = RemoteSettings(url=f"s3://{bucket}/pre", endpoint_url=moto.url,
                              region="us-east-1", access_key_id="AKIDEXAMPLE",
                              secret_access_key=SECRET)
    remote = open_remote("default", settings, tmp_path)
    assert SECRET not in remote.display_url
    assert SECRET not in repr(remote)
    await remote.open()
    try:
        assert SECRET not in remote.display_url
        assert SECRET not in repr(remote)
        assert SECRET not in str(remote)
        assert bucket in remote.display_url and moto.url in remote.display_url
    finally:
        await remote.close()
