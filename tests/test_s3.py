"""The S3 endpoint (`s3api/`) driven by boto3, a client no one here wrote, against a real uvicorn
that serves `/files/` and `s3.port` from one app: buckets, objects and listings with the bytes
then at `/files/` and, once uploaded, in the moto bucket; presigned URLs (SigV4 and SigV2);
every refusal as S3's XML with its code; an account's keys confined to its namespace."""

from __future__ import annotations

import hashlib
import os
import time
from typing import Any

import boto3
import botocore
import httpx
import pytest
from botocore.config import Config
from botocore.exceptions import ClientError
from conftest import LiveServer, Moto, counters, s3_overrides, uploaded, wait_for
from test_accounts import create

pytestmark = pytest.mark.timeout(120)


def s3_client(server: LiveServer, key_id: str, secret: str, **config: Any) -> Any:
    return boto3.client(
        "s3", endpoint_url=server.s3_url, region_name="us-east-1",
        aws_access_key_id=key_id, aws_secret_access_key=secret,
        config=Config(s3={"addressing_style": "path"}, signature_version="s3v4",
                      retries={"max_attempts": 1}, **config))


def admin_client(server: LiveServer, **config: Any) -> Any:
    pair, _ = server.service.s3_keys.admin_pair()
    return s3_client(server, pair.access_key_id, pair.secret_access_key, **config)


def code_of(call: Any, *args: Any, **kwargs: Any) -> tuple[str, int]:
    with pytest.raises(ClientError) as caught:
        call(*args, **kwargs)
    error = caught.value.response
    return str(error["Error"]["Code"]), int(error["ResponseMetadata"]["HTTPStatusCode"])


@pytest.fixture
def s3_server(make_server: Any, moto: Moto, bucket: str) -> LiveServer:
    server: LiveServer = make_server(s3=True, **s3_overrides(moto, bucket), upload__delay="0")
    return server


def test_objects_through_boto3_are_filestore_files(s3_server: LiveServer, moto: Moto,
                                                   bucket: str) -> None:
    s3 = admin_client(s3_server)
    s3.create_bucket(Bucket="media")
    assert [b["Name"] for b in s3.list_buckets()["Buckets"]] == ["media"]
    put = s3.put_object(Bucket="media", Key="2026/cat photo.jpg", Body=b"meow" * 1000,
                        ContentType="image/jpeg")
    assert put["ETag"] == f'"{hashlib.md5(b"meow" * 1000).hexdigest()}"'
    head = s3.head_object(Bucket="media", Key="2026/cat photo.jpg")
    assert head["ContentLength"] == 4000 and head["ContentType"] == "image/jpeg"
    got = s3.get_object(Bucket="media", Key="2026/cat photo.jpg")
    assert got["Body"].read() == b"meow" * 1000 and got["ETag"] == put["ETag"]
    part = s3.get_object(Bucket="media", Key="2026/cat photo.jpg", Range="bytes=4-7")
    assert part["Body"].read() == b"meow" and part["ContentRange"] == "bytes 4-7/4000"
    # The same file at /files/, and in the cloud once uploaded.
    with s3_server.client() as files:
        assert files.get("/files/media/2026/cat photo.jpg").content == b"meow" * 1000
        assert files.put("/files/media/2026/dog.txt", content=b"woof").status_code == 201
    assert s3.get_object(Bucket="media", Key="2026/dog.txt")["Body"].read() == b"woof"
    wait_for(lambda: uploaded(s3_server, "media/2026/cat photo.jpg"))
    stored = moto.client().get_object(Bucket=bucket, Key="fs/media/2026/cat photo.jpg")
    assert stored["Body"].read() == b"meow" * 1000
    # Deleting: one, several, and one that is not there (204 all the same).
    s3.delete_object(Bucket="media", Key="2026/dog.txt")
    s3.delete_object(Bucket="media", Key="never-was")
    with s3_server.client() as files:
        assert files.get("/files/media/2026/dog.txt").status_code == 404


def test_listings_page_and_group_by_delimiter(s3_server: LiveServer) -> None:
    s3 = admin_client(s3_server)
    s3.create_bucket(Bucket="logs")
    keys = [f"{day}/{n:03}.log" for day in ("a", "b", "c") for n in range(5)] + ["top.txt"]
    for key in keys:
        s3.put_object(Bucket="logs", Key=key, Body=key.encode())
    # Paged through a paginator: every key once, in order.
    pages = s3.get_paginator("list_objects_v2").paginate(Bucket="logs",
                                                         PaginationConfig={"PageSize": 4})
    listed = [o["Key"] for page in pages for o in page.get("Contents", [])]
    assert listed == sorted(keys)
    grouped = s3.list_objects_v2(Bucket="logs", Delimiter="/")
    assert [p["Prefix"] for p in grouped["CommonPrefixes"]] == ["a/", "b/", "c/"]
    assert [o["Key"] for o in grouped["Contents"]] == ["top.txt"]
    # Delimited pages: common prefixes count toward max-keys, and a token resumes after one.
    first = s3.list_objects_v2(Bucket="logs", Delimiter="/", MaxKeys=2)
    assert first["IsTruncated"] and [p["Prefix"] for p in first["CommonPrefixes"]] == ["a/", "b/"]
    rest = s3.list_objects_v2(Bucket="logs", Delimiter="/", MaxKeys=2,
                              ContinuationToken=first["NextContinuationToken"])
    assert [p["Prefix"] for p in rest["CommonPrefixes"]] == ["c/"]
    assert [o["Key"] for o in rest["Contents"]] == ["top.txt"] and not rest["IsTruncated"]
    under = s3.list_objects_v2(Bucket="logs", Prefix="b/", StartAfter="b/001.log")
    assert [o["Key"] for o in under["Contents"]] == ["b/002.log", "b/003.log", "b/004.log"]
    v1 = s3.list_objects(Bucket="logs", Prefix="c/", Marker="c/002.log")
    assert [o["Key"] for o in v1["Contents"]] == ["c/003.log", "c/004.log"]
    assert s3.get_bucket_location(Bucket="logs")["LocationConstraint"] is None
    assert code_of(s3.delete_bucket, Bucket="logs") == ("BucketNotEmpty", 409)
    result = s3.delete_objects(Bucket="logs", Delete={"Objects": [{"Key": k} for k in keys]})
    assert sorted(d["Key"] for d in result["Deleted"]) == sorted(keys)
    s3.delete_bucket(Bucket="logs")
    assert code_of(s3.head_bucket, Bucket="logs") == ("404", 404)


def test_refusals_are_s3_errors(s3_server: LiveServer) -> None:
    s3 = admin_client(s3_server)
    s3.create_bucket(Bucket="media")
    assert code_of(s3.get_object, Bucket="media", Key="nope") == ("NoSuchKey", 404)
    assert code_of(s3.get_object, Bucket="nobucket", Key="x") == ("NoSuchBucket", 404)
    assert code_of(s3.create_bucket, Bucket="Bad_Name") == ("InvalidBucketName", 400)
    s3.put_object(Bucket="media", Key="a.txt", Body=b"abc")
    assert code_of(s3.get_object, Bucket="media", Key="a.txt", Range="bytes=10-20") == (
        "InvalidRange", 416)
    assert code_of(s3.get_object, Bucket="media", Key="a.txt", IfMatch='"nope"') == (
        "PreconditionFailed", 412)
    etag = s3.head_object(Bucket="media", Key="a.txt")["ETag"]
    assert code_of(s3.get_object, Bucket="media", Key="a.txt", IfNoneMatch=etag) == (
        "304", 304)
    for key in ("../escape", "a/../../b", "a//b", "dir/"):
        code, status = code_of(s3.put_object, Bucket="media", Key=key, Body=b"x")
        assert (code, status) == ("InvalidArgument", 400), key
    pair, _ = s3_server.service.s3_keys.admin_pair()
    bad = s3_client(s3_server, pair.access_key_id, "wrong-secret")
    assert code_of(bad.list_buckets) == ("SignatureDoesNotMatch", 403)
    unknown = s3_client(s3_server, "FSNOSUCHKEY000000000", "x" * 40)
    assert code_of(unknown.list_buckets) == ("InvalidAccessKeyId", 403)
    anonymous = boto3.client("s3", endpoint_url=s3_server.s3_url, region_name="us-east-1",
                             config=Config(signature_version=botocore.UNSIGNED,
                                           s3={"addressing_style": "path"}))
    assert code_of(anonymous.list_objects_v2, Bucket="media") == ("AccessDenied", 403)
    other_region = boto3.client(
        "s3", endpoint_url=s3_server.s3_url, region_name="eu-west-1",
        aws_access_key_id=pair.access_key_id, aws_secret_access_key=pair.secret_access_key,
        config=Config(s3={"addressing_style": "path"}, retries={"max_attempts": 1}))
    assert code_of(other_region.list_buckets)[1] == 400
    # A raw request: the XML itself.
    answer = httpx.get(f"{s3_server.s3_url}/media/a.txt")
    assert answer.status_code == 403 and b"<Code>AccessDenied</Code>" in answer.content
    assert answer.headers["content-type"] == "application/xml"


def test_presigned_urls_v4_and_v2(s3_server: LiveServer) -> None:
    s3 = admin_client(s3_server)
    s3.create_bucket(Bucket="share")
    s3.put_object(Bucket="share", Key="report.pdf", Body=b"%PDF-1.7", ContentType="text/plain")
    v4 = s3.generate_presigned_url("get_object", ExpiresIn=60, Params={
        "Bucket": "share", "Key": "report.pdf", "ResponseContentType": "application/pdf"})
    answer = httpx.get(v4)
    assert answer.status_code == 200 and answer.content == b"%PDF-1.7"
    assert answer.headers["content-type"] == "application/pdf"
    assert answer.headers["content-security-policy"]  # sandboxed as at /files/
    assert httpx.get(v4.replace("report.pdf", "other.pdf")).status_code == 403
    pair, _ = s3_server.service.s3_keys.admin_pair()
    default = boto3.client("s3", endpoint_url=s3_server.s3_url, region_name="us-east-1",
                           aws_access_key_id=pair.access_key_id,
                           aws_secret_access_key=pair.secret_access_key,
                           config=Config(s3={"addressing_style": "path"}))
    v2 = default.generate_presigned_url("get_object", ExpiresIn=60,
                                        Params={"Bucket": "share", "Key": "report.pdf"})
    assert "AWSAccessKeyId=" in v2 and "Signature=" in v2  # boto3's default: SigV2
    assert httpx.get(v2).content == b"%PDF-1.7"
    expired = s3.generate_presigned_url("get_object", ExpiresIn=1,
                                        Params={"Bucket": "share", "Key": "report.pdf"})
    wait_for(lambda: httpx.get(expired).status_code == 403, timeout=5)
    assert b"<Code>AccessDenied</Code>" in httpx.get(expired).content
    # A presigned PUT stores what it carries.
    put_url = s3.generate_presigned_url("put_object", ExpiresIn=60,
                                        Params={"Bucket": "share", "Key": "up.bin"})
    assert httpx.put(put_url, content=b"uploaded").status_code == 200
    assert s3.get_object(Bucket="share", Key="up.bin")["Body"].read() == b"uploaded"


def test_an_accounts_keys_see_its_own_namespace(s3_server: LiveServer) -> None:
    with s3_server.client() as owner:
        token = create(owner, "acme")
        create(owner, "bob")
    with httpx.Client(base_url=s3_server.url, timeout=30,
                      headers={"authorization": f"Bearer {token}"}) as acme:
        made = acme.post("/admin/api/accounts/acme/s3-keys")
        assert made.status_code == 201, made.text
        pair = made.json()
        listed = acme.get("/admin/api/accounts/acme/s3-keys").json()["items"]
        assert [k["access_key_id"] for k in listed] == [pair["access_key_id"]]
        assert pair["secret_access_key"] not in acme.get("/admin/api/accounts/acme/s3-keys").text
        assert acme.post("/admin/api/accounts/bob/s3-keys").status_code == 403
    s3 = s3_client(s3_server, pair["access_key_id"], pair["secret_access_key"])
    s3.create_bucket(Bucket="media")
    s3.put_object(Bucket="media", Key="x.txt", Body=b"acme's")
    with s3_server.client() as files:
        assert files.get("/files/acme/media/x.txt").content == b"acme's"
    admin = admin_client(s3_server)
    assert [b["Name"] for b in admin.list_buckets()["Buckets"]] == []  # the account's own
    assert code_of(s3.list_objects_v2, Bucket="acme") == ("NoSuchBucket", 404)
    # Suspended: refused; revoked: unknown.
    with s3_server.client() as owner:
        assert owner.patch("/admin/api/accounts/acme",
                           json={"state": "suspended"}).status_code == 200
        assert code_of(s3.list_buckets) == ("AccessDenied", 403)
        owner.patch("/admin/api/accounts/acme", json={"state": "active"})
        assert owner.delete(f"/admin/api/accounts/acme/s3-keys/{pair['access_key_id']}"
                            ).status_code == 204
    assert code_of(s3.list_buckets) == ("InvalidAccessKeyId", 403)


def signed_headers(server: LiveServer, method: str, path: str, body: bytes,
                   key: tuple[str, str] | None = None, **headers: str) -> dict[str, str]:
    """The headers botocore's SigV4 signer gives a request for `body`, signed with `key`
    (access key id, secret; the administrator's by default)."""
    from botocore.auth import S3SigV4Auth
    from botocore.awsrequest import AWSRequest
    from botocore.credentials import Credentials

    if key is None:
        pair, _ = server.service.s3_keys.admin_pair()
        key = (pair.access_key_id, pair.secret_access_key)
    request = AWSRequest(method=method, url=server.s3_url + path, data=body, headers=headers)
    S3SigV4Auth(Credentials(*key), "s3", "us-east-1").add_auth(request)
    return {name: value.decode() if isinstance(value, bytes) else value
            for name, value in request.headers.items()}


def test_a_signed_payload_must_match_what_arrives(s3_server: LiveServer) -> None:
    """boto3 over http signs the body's SHA-256: a body changed on the way is refused and
    nothing is kept; so is one that fails its Content-MD5."""
    s3 = admin_client(s3_server)
    s3.create_bucket(Bucket="media")
    headers = signed_headers(s3_server, "PUT", "/media/t.txt", b"good data")
    answer = httpx.put(f"{s3_server.s3_url}/media/t.txt", content=b"evil data", headers=headers)
    assert answer.status_code == 400, answer.text
    assert b"<Code>XAmzContentSHA256Mismatch</Code>" in answer.content
    good = httpx.put(f"{s3_server.s3_url}/media/t.txt", content=b"good data", headers=headers)
    assert good.status_code == 200, good.text
    assert code_of(s3.put_object, Bucket="media", Key="m.txt", Body=b"data",
                   ContentMD5="AAAAAAAAAAAAAAAAAAAAAA==") == ("BadDigest", 400)
    with s3_server.client() as files:
        assert files.get("/files/media/t.txt").content == b"good data"
        assert files.get("/files/media/m.txt").status_code == 404


# -- multipart -------------------------------------------------------------------------------


def test_boto3_uploads_in_parts_and_the_object_is_one_file(s3_server: LiveServer,
                                                           tmp_path: Any) -> None:
    from boto3.s3.transfer import TransferConfig

    s3 = admin_client(s3_server)
    s3.create_bucket(Bucket="big")
    source = tmp_path / "big.bin"
    data = bytes(range(256)) * (12 * 4096 + 7)  # 12 MiB and a bit: three parts
    source.write_bytes(data)
    config = TransferConfig(multipart_threshold=5 * 1024**2, multipart_chunksize=5 * 1024**2,
                            max_concurrency=3)
    s3.upload_file(str(source), "big", "data/big.bin", Config=config)
    head = s3.head_object(Bucket="big", Key="data/big.bin")
    parts = [data[i:i + 5 * 1024**2] for i in range(0, len(data), 5 * 1024**2)]
    expected = hashlib.md5(b"".join(hashlib.md5(p).digest() for p in parts)).hexdigest()
    assert head["ETag"] == f'"{expected}-3"' and head["ContentLength"] == len(data)
    listed = s3.list_objects_v2(Bucket="big")["Contents"]
    assert [(o["Key"], o["ETag"]) for o in listed] == [("data/big.bin", f'"{expected}-3"')]
    with s3_server.client() as files:
        assert hashlib.sha256(files.get("/files/big/data/big.bin").content).hexdigest() == \
            hashlib.sha256(data).hexdigest()
    target = tmp_path / "back.bin"
    s3.download_file("big", "data/big.bin", str(target), Config=config)
    assert target.read_bytes() == data
    uploads = s3_server.settings.data_dir / "s3-uploads"
    assert not uploads.exists() or not list(uploads.iterdir())  # the parts went


def test_multipart_refusals_and_abort(s3_server: LiveServer) -> None:
    s3 = admin_client(s3_server)
    s3.create_bucket(Bucket="mpu")
    upload = s3.create_multipart_upload(Bucket="mpu", Key="x.bin")["UploadId"]
    small = s3.upload_part(Bucket="mpu", Key="x.bin", UploadId=upload, PartNumber=1,
                           Body=b"a" * 1000)
    last = s3.upload_part(Bucket="mpu", Key="x.bin", UploadId=upload, PartNumber=2, Body=b"b")
    listed = s3.list_parts(Bucket="mpu", Key="x.bin", UploadId=upload)["Parts"]
    assert [(p["PartNumber"], p["Size"]) for p in listed] == [(1, 1000), (2, 1)]
    ongoing = s3.list_multipart_uploads(Bucket="mpu")["Uploads"]
    assert [(u["Key"], u["UploadId"]) for u in ongoing] == [("x.bin", upload)]

    def complete(*parts: tuple[int, str]) -> tuple[str, int]:
        return code_of(s3.complete_multipart_upload, Bucket="mpu", Key="x.bin", UploadId=upload,
                       MultipartUpload={"Parts": [{"PartNumber": n, "ETag": e}
                                                  for n, e in parts]})

    assert complete((2, last["ETag"]), (1, small["ETag"])) == ("InvalidPartOrder", 400)
    assert complete((1, '"0000"'), (2, last["ETag"])) == ("InvalidPart", 400)
    assert complete((1, small["ETag"]), (3, last["ETag"])) == ("InvalidPart", 400)
    assert complete((1, small["ETag"]), (2, last["ETag"])) == ("EntityTooSmall", 400)
    assert code_of(s3.upload_part, Bucket="mpu", Key="x.bin", UploadId="nope", PartNumber=1,
                   Body=b"x") == ("NoSuchUpload", 404)
    assert code_of(s3.upload_part, Bucket="mpu", Key="other.bin", UploadId=upload,
                   PartNumber=1, Body=b"x") == ("NoSuchUpload", 404)  # another key's upload
    s3.abort_multipart_upload(Bucket="mpu", Key="x.bin", UploadId=upload)
    assert s3.list_multipart_uploads(Bucket="mpu").get("Uploads", []) == []
    assert code_of(s3.list_parts, Bucket="mpu", Key="x.bin", UploadId=upload) == (
        "NoSuchUpload", 404)
    with s3_server.client() as files:
        assert files.get("/files/mpu/x.bin").status_code == 404
    # A part whose body is not what the signature says keeps nothing.
    upload = s3.create_multipart_upload(Bucket="mpu", Key="y.bin")["UploadId"]
    path = f"/mpu/y.bin?partNumber=1&uploadId={upload}"
    headers = signed_headers(s3_server, "PUT", path, b"good part")
    answer = httpx.put(f"{s3_server.s3_url}{path}", content=b"evil part", headers=headers)
    assert answer.status_code == 400 and b"XAmzContentSHA256Mismatch" in answer.content
    assert s3.list_parts(Bucket="mpu", Key="y.bin", UploadId=upload).get("Parts", []) == []


def test_unfinished_uploads_expire_and_crash_leftovers_go(s3_server: LiveServer) -> None:
    from filestore.s3api import multipart

    s3 = admin_client(s3_server)
    s3.create_bucket(Bucket="mpu")
    upload = s3.create_multipart_upload(Bucket="mpu", Key="x.bin")["UploadId"]
    s3.upload_part(Bucket="mpu", Key="x.bin", UploadId=upload, PartNumber=1, Body=b"a" * 100)
    directory = s3_server.settings.data_dir / multipart.UPLOADS / upload
    assert len(list(directory.iterdir())) == 1
    # What a crash leaves: a part file no row names, a directory no upload has (both old).
    stray, orphan = directory / "7-deadbeef", directory.parent / ("f" * 32)
    stray.write_bytes(b"x")
    orphan.mkdir()
    for leftover in (stray, orphan):
        os.utime(leftover, (time.time() - 7200, time.time() - 7200))
    assert multipart.sweep(s3_server.service, expiry=3600) == 0
    assert not stray.exists() and not orphan.exists() and len(list(directory.iterdir())) == 1
    assert multipart.sweep(s3_server.service, expiry=0) == 1
    assert not directory.exists()
    assert code_of(s3.list_parts, Bucket="mpu", Key="x.bin", UploadId=upload) == (
        "NoSuchUpload", 404)


def test_metadata_is_stored_copied_and_returned(s3_server: LiveServer) -> None:
    s3 = admin_client(s3_server)
    s3.create_bucket(Bucket="meta")
    s3.put_object(Bucket="meta", Key="a.txt", Body=b"a", ContentType="text/plain",
                  Metadata={"owner": "alice", "Project": "x"})
    head = s3.head_object(Bucket="meta", Key="a.txt")
    assert head["Metadata"] == {"owner": "alice", "project": "x"}
    assert s3.get_object(Bucket="meta", Key="a.txt")["Metadata"] == head["Metadata"]
    s3.copy_object(Bucket="meta", Key="b.txt", CopySource={"Bucket": "meta", "Key": "a.txt"})
    copied = s3.head_object(Bucket="meta", Key="b.txt")
    assert copied["Metadata"] == head["Metadata"] and copied["ContentType"] == "text/plain"
    s3.copy_object(Bucket="meta", Key="c.txt", CopySource={"Bucket": "meta", "Key": "a.txt"},
                   MetadataDirective="REPLACE", Metadata={"owner": "bob"},
                   ContentType="text/markdown")
    replaced = s3.head_object(Bucket="meta", Key="c.txt")
    assert replaced["Metadata"] == {"owner": "bob"} and replaced["ContentType"] == "text/markdown"
    upload = s3.create_multipart_upload(Bucket="meta", Key="m.bin", Metadata={"kind": "parts"})
    etag = s3.upload_part(Bucket="meta", Key="m.bin", UploadId=upload["UploadId"], PartNumber=1,
                          Body=b"only part")["ETag"]
    s3.complete_multipart_upload(Bucket="meta", Key="m.bin", UploadId=upload["UploadId"],
                                 MultipartUpload={"Parts": [{"PartNumber": 1, "ETag": etag}]})
    assert s3.head_object(Bucket="meta", Key="m.bin")["Metadata"] == {"kind": "parts"}
    # Replaced through /files/: the bytes are new, and what S3 kept of the old ones goes.
    with s3_server.client() as files:
        assert files.put("/files/meta/a.txt", content=b"new").status_code == 200
    assert s3.head_object(Bucket="meta", Key="a.txt")["Metadata"] == {}
    assert code_of(s3.put_object, Bucket="meta", Key="big-meta", Body=b"x",
                   Metadata={"k": "v" * 3000}) == ("MetadataTooLarge", 400)


def test_limits_quota_and_methods(make_server: Any, moto: Moto, bucket: str) -> None:
    server: LiveServer = make_server(s3=True, **s3_overrides(moto, bucket),
                                     storage__max_upload_size="64KiB")
    with server.client() as owner:
        token = create(owner, "acme", quota="10KiB")
    with httpx.Client(base_url=server.url, headers={"authorization": f"Bearer {token}"}) as acme:
        pair = acme.post("/admin/api/accounts/acme/s3-keys").json()
    s3 = s3_client(server, pair["access_key_id"], pair["secret_access_key"])
    s3.create_bucket(Bucket="box")
    s3.put_object(Bucket="box", Key="fits.bin", Body=b"x" * 8000)
    assert code_of(s3.put_object, Bucket="box", Key="over.bin", Body=b"x" * 4000) == (
        "QuotaExceeded", 403)
    upload = s3.create_multipart_upload(Bucket="box", Key="parts.bin")["UploadId"]
    assert code_of(s3.upload_part, Bucket="box", Key="parts.bin", UploadId=upload,
                   PartNumber=1, Body=b"x" * 4000) == ("QuotaExceeded", 403)
    admin = admin_client(server)
    admin.create_bucket(Bucket="wide")
    assert code_of(admin.put_object, Bucket="wide", Key="huge.bin", Body=b"x" * 70000) == (
        "EntityTooLarge", 400)
    with server.client() as files:
        assert files.get("/files/acme/box/over.bin").status_code == 404
        assert files.get("/files/wide/huge.bin").status_code == 404
    pair_admin, _ = server.service.s3_keys.admin_pair()
    headers = signed_headers(server, "PATCH", "/wide/x", b"")
    answer = httpx.request("PATCH", f"{server.s3_url}/wide/x", headers=headers)
    assert answer.status_code == 405 and b"<Code>MethodNotAllowed</Code>" in answer.content
    assert pair_admin.access_key_id not in answer.text


def test_a_client_that_disconnects_mid_part_leaves_nothing(s3_server: LiveServer) -> None:
    import socket

    s3 = admin_client(s3_server)
    s3.create_bucket(Bucket="cut")
    upload = s3.create_multipart_upload(Bucket="cut", Key="x.bin")["UploadId"]
    path = f"/cut/x.bin?partNumber=1&uploadId={upload}"
    body = b"y" * (6 * 1024 * 1024)
    headers = signed_headers(s3_server, "PUT", path, body)
    host, port = s3_server.s3_url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port))) as conn:
        head = "".join(f"{name}: {value}\r\n" for name, value in headers.items())
        conn.sendall(f"PUT {path} HTTP/1.1\r\nHost: {host}:{port}\r\n{head}"
                     f"Content-Length: {len(body)}\r\n\r\n".encode() + body[:1024 * 1024])
        temp = s3_server.settings.data_dir / "tmp"
        wait_for(lambda: list(temp.iterdir()), timeout=10)  # the part is being received
    wait_for(lambda: not list(temp.iterdir()), timeout=10)  # cut off: its temp file went
    assert s3.list_parts(Bucket="cut", Key="x.bin", UploadId=upload).get("Parts", []) == []
    uploads = s3_server.settings.data_dir / "s3-uploads" / upload
    assert not uploads.exists() or not list(uploads.iterdir())


def test_virtual_hosted_addressing(make_server: Any) -> None:
    from botocore.auth import S3SigV4Auth
    from botocore.awsrequest import AWSRequest
    from botocore.credentials import Credentials

    server: LiveServer = make_server(s3=True, s3__domain="s3.test")
    s3 = admin_client(server)
    s3.create_bucket(Bucket="media")
    s3.put_object(Bucket="media", Key="dir/a.txt", Body=b"virtual")
    port = server.s3_url.rsplit(":", 1)[1]
    pair, _ = server.service.s3_keys.admin_pair()
    # As a client configured for virtual-hosted addressing signs and sends it (the name need
    # not resolve here: the request goes to 127.0.0.1 with that Host).
    request = AWSRequest(method="GET", url=f"http://media.s3.test:{port}/dir/a.txt")
    S3SigV4Auth(Credentials(pair.access_key_id, pair.secret_access_key), "s3",
                "us-east-1").add_auth(request)
    headers = {k: v.decode() if isinstance(v, bytes) else v for k, v in request.headers.items()}
    answer = httpx.get(f"{server.s3_url}/dir/a.txt",
                       headers={**headers, "host": f"media.s3.test:{port}"})
    assert answer.status_code == 200 and answer.content == b"virtual"
    # Path-style still works beside it.
    assert s3.get_object(Bucket="media", Key="dir/a.txt")["Body"].read() == b"virtual"


def test_a_large_copy_goes_part_by_part_within_filestore(s3_server: LiveServer) -> None:
    from boto3.s3.transfer import TransferConfig

    s3 = admin_client(s3_server)
    s3.create_bucket(Bucket="src")
    data = os.urandom(11 * 1024**2 + 5)
    s3.put_object(Bucket="src", Key="big.bin", Body=data, Metadata={"kind": "big"})
    calls: list[str] = []
    s3.meta.events.register("before-send.s3.*", lambda request, **_: calls.append(
        f"{request.method} {request.url.split('?', 1)[-1]}"
        + (" copy" if "x-amz-copy-source" in request.headers else "")))
    s3.copy({"Bucket": "src", "Key": "big.bin"}, "src", "copy.bin", Config=TransferConfig(
        multipart_threshold=5 * 1024**2, multipart_chunksize=5 * 1024**2))
    copies = [c for c in calls if c.startswith("PUT") and "partNumber" in c and "copy" in c]
    assert len(copies) == 3, calls  # UploadPartCopy, each part
    assert s3.get_object(Bucket="src", Key="copy.bin")["Body"].read() == data
    assert code_of(s3.upload_part_copy, Bucket="src", Key="x", UploadId="nope", PartNumber=1,
                   CopySource={"Bucket": "src", "Key": "big.bin"}) == ("NoSuchUpload", 404)
    upload = s3.create_multipart_upload(Bucket="src", Key="x")["UploadId"]
    assert code_of(s3.upload_part_copy, Bucket="src", Key="x", UploadId=upload, PartNumber=1,
                   CopySource={"Bucket": "src", "Key": "big.bin"},
                   CopySourceRange=f"bytes=0-{len(data)}") == ("InvalidRange", 416)


# -- reads: /files/'s own, answered as S3 ------------------------------------------------------


def test_a_get_is_read_as_files_reads_it(s3_server: LiveServer) -> None:
    """GetObject and HeadObject go through `/files/`'s read (`api.serve_read`): a cloud-only
    object is read through the cache, a cached one counts its hit; Range and the conditions on
    S3's ETag; S3's headers (metadata, `response-*`), but none of them on a 304."""
    s3 = admin_client(s3_server)
    s3.create_bucket(Bucket="read")
    data = os.urandom(200_000)
    put = s3.put_object(Bucket="read", Key="r.bin", Body=data, Metadata={"k": "v"})
    wait_for(lambda: uploaded(s3_server, "read/r.bin"))
    with s3_server.client() as files:  # only the cloud has it now
        assert files.post("/admin/api/files/read/r.bin/evict").status_code == 200
    misses = counters(s3_server).get("cache.misses", 0)
    got = s3.get_object(Bucket="read", Key="r.bin")
    assert got["Body"].read() == data and got["ETag"] == put["ETag"]
    assert got["Metadata"] == {"k": "v"} and got["ContentLength"] == len(data)
    wait_for(lambda: counters(s3_server).get("cache.misses", 0) == misses + 1)
    wait_for(lambda: counters(s3_server).get("cache.entries") == 1)  # filled as it was read
    hits = counters(s3_server).get("cache.hits", 0)
    part = s3.get_object(Bucket="read", Key="r.bin", Range="bytes=1000-1999",
                         ResponseContentType="application/x-test")
    assert part["Body"].read() == data[1000:2000]
    assert part["ContentRange"] == "bytes 1000-1999/200000"
    assert part["ContentType"] == "application/x-test" and part["Metadata"] == {"k": "v"}
    wait_for(lambda: counters(s3_server).get("cache.hits", 0) == hits + 1)
    head = s3.head_object(Bucket="read", Key="r.bin")
    assert head["ContentLength"] == len(data) and head["Metadata"] == {"k": "v"}
    headers = signed_headers(s3_server, "GET", "/read/r.bin", b"",
                             **{"if-none-match": put["ETag"]})
    answer = httpx.get(f"{s3_server.s3_url}/read/r.bin", headers=headers)
    assert answer.status_code == 304 and answer.headers["etag"] == put["ETag"]
    assert "content-type" not in answer.headers and "x-amz-meta-k" not in answer.headers
    assert answer.headers["x-content-type-options"] == "nosniff"
    assert code_of(s3.get_object, Bucket="read", Key="r.bin", Range="bytes=300000-") == (
        "InvalidRange", 416)
    with s3_server.client() as files:  # the same file, /files/'s answers
        assert files.get("/files/read/r.bin", headers={"range": "bytes=0-1"}).content == data[:2]
        missed = files.get("/files/read/r.bin", headers={"range": "bytes=300000-"})
        assert missed.status_code == 416 and missed.json()["error"] == "range_not_satisfiable"


# -- whole numbers: one parser --------------------------------------------------------------


def test_whole_numbers_are_ascii_digits_only() -> None:
    from filestore.s3api.errors import S3Error
    from filestore.s3api.whole import count, whole_number

    assert whole_number("0") == 0 and whole_number("0042") == 42
    assert whole_number("9" * 18) == int("9" * 18) and whole_number("9" * 19) is None
    for bad in (None, "", "-1", "+1", " 1", "1.0", "1e3", "²", "٣", "0x10"):
        assert whole_number(bad) is None, bad
    assert whole_number("12345", 4) is None and whole_number("1234", 4) == 1234
    assert count(None, "max-keys", 1000) == 1000 and count("5000", "max-keys", 1000) == 1000
    assert count("0", "max-keys", 1000, low=0) == 0
    for bad in ("0", "abc", "²", "1" * 10):
        with pytest.raises(S3Error) as caught:
            count(bad, "max-parts", 1000)
        assert caught.value.code == "InvalidArgument", bad


def test_numbers_in_requests_are_checked_alike(s3_server: LiveServer) -> None:
    s3 = admin_client(s3_server)
    s3.create_bucket(Bucket="nums")
    upload = s3.create_multipart_upload(Bucket="nums", Key="x")["UploadId"]
    refused = ["/nums?list-type=2&max-keys=%C2%B2", "/nums?max-keys=-1",
               f"/nums/x?uploadId={upload}&max-parts=1.5", "/nums?uploads&max-uploads=0"]
    for path in refused:
        answer = httpx.get(s3_server.s3_url + path,
                           headers=signed_headers(s3_server, "GET", path, b""))
        assert answer.status_code == 400 and b"<Code>InvalidArgument</Code>" in answer.content, (
            path, answer.text)
    for number in ("0", "10001", "%D9%A3", ""):
        path = f"/nums/x?partNumber={number}&uploadId={upload}"
        answer = httpx.put(s3_server.s3_url + path, content=b"p",
                           headers=signed_headers(s3_server, "PUT", path, b"p"))
        assert answer.status_code == 400 and b"Part number must be" in answer.content, number
    empty = s3.list_objects_v2(Bucket="nums", MaxKeys=0)
    assert empty["KeyCount"] == 0 and empty["MaxKeys"] == 0


# -- an account's quota over all its open uploads ------------------------------------------------


def test_concurrent_uploads_cannot_together_pass_the_quota(make_server: Any) -> None:
    """The parts of every open upload of an account count against its quota: each of two
    uploads fits alone, not both; and a part still arriving when another upload's part is
    recorded is refused where it is recorded (nothing of it kept)."""
    import socket

    server: LiveServer = make_server(s3=True)
    with server.client() as owner:
        token = create(owner, "acme", quota="10KiB")  # 10240 bytes
    with httpx.Client(base_url=server.url, headers={"authorization": f"Bearer {token}"}) as acme:
        pair = acme.post("/admin/api/accounts/acme/s3-keys").json()
    key = (pair["access_key_id"], pair["secret_access_key"])
    s3 = s3_client(server, *key)
    s3.create_bucket(Bucket="box")
    first, second, third = (s3.create_multipart_upload(Bucket="box", Key=name)["UploadId"]
                            for name in ("a.bin", "b.bin", "c.bin"))

    def part(upload: str, name: str, number: int, size: int) -> Any:
        return s3.upload_part(Bucket="box", Key=name, UploadId=upload, PartNumber=number,
                              Body=b"p" * size)

    part(first, "a.bin", 1, 6000)
    assert code_of(part, second, "b.bin", 1, 6000) == ("QuotaExceeded", 403)  # fits alone
    part(first, "a.bin", 1, 6000)  # sent again: it replaces its bytes, not adds to them
    part(second, "b.bin", 1, 4000)  # 10000 of 10240
    assert code_of(part, third, "c.bin", 1, 300) == ("QuotaExceeded", 403)
    s3.abort_multipart_upload(Bucket="box", Key="b.bin", UploadId=second)  # its room is back

    # Two parts at once: the first passes the check made before its bytes, then, while it is
    # still arriving, another upload's part takes the room; the first is refused at recording.
    body = b"q" * 4000
    path = f"/box/a.bin?partNumber=2&uploadId={first}"
    headers = signed_headers(server, "PUT", path, body, key)
    host, port = server.s3_url.removeprefix("http://").split(":")
    temp = server.settings.data_dir / "tmp"
    with socket.create_connection((host, int(port)), timeout=10) as conn:
        head = "".join(f"{name}: {value}\r\n" for name, value in headers.items())
        conn.sendall(f"PUT {path} HTTP/1.1\r\nHost: {host}:{port}\r\n{head}"
                     f"Content-Length: {len(body)}\r\n\r\n".encode() + body[:1000])
        wait_for(lambda: list(temp.iterdir()), timeout=10)  # being received
        part(third, "c.bin", 1, 4000)  # 6000 + 4000 of 10240: fits
        conn.sendall(body[1000:])
        answer = b""
        while b"</Error>" not in answer and (chunk := conn.recv(65536)):
            answer += chunk
    assert answer.startswith(b"HTTP/1.1 403") and b"<Code>QuotaExceeded</Code>" in answer
    assert [p["PartNumber"] for p in s3.list_parts(Bucket="box", Key="a.bin",
                                                   UploadId=first)["Parts"]] == [1]
    assert len(list((server.settings.data_dir / "s3-uploads" / first).iterdir())) == 1
    wait_for(lambda: not list(temp.iterdir()), timeout=10)
    assert code_of(part, first, "a.bin", 2, 300) == ("QuotaExceeded", 403)  # 10300 of 10240
    path = f"/box/a.bin?partNumber=2&uploadId={first}"  # no length said: cut off at the room
    cut = httpx.put(server.s3_url + path, content=iter([b"r" * 300]),
                    headers=signed_headers(server, "PUT", path, b"r" * 300, key))
    assert cut.status_code == 403 and b"<Code>QuotaExceeded</Code>" in cut.content, cut.text
    s3.abort_multipart_upload(Bucket="box", Key="c.bin", UploadId=third)
    part(first, "a.bin", 2, 4000)  # the aborted upload's room is the account's again
