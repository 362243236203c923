"""sigv4.py: requests signed by botocore itself (its signers, and boto3 clients whose requests
are caught before they leave), and AWS's published examples, parsed and verified offline.

A request reaches `parse()` as a server sees it: the path and query exactly as on the wire, the
headers with the Host the HTTP client adds.
"""

from __future__ import annotations

import calendar
import dataclasses
import hashlib
import io
import time
from collections.abc import Callable, Iterator
from email.utils import formatdate
from typing import Any
from urllib.parse import quote, urlsplit

import boto3
import pytest
from botocore.auth import HmacV1Auth, HmacV1QueryAuth, S3SigV4Auth, S3SigV4QueryAuth
from botocore.awsrequest import AWSRequest
from botocore.config import Config
from botocore.credentials import Credentials

from filestore.s3api import sigv4
from filestore.s3api.sigv4 import S3AuthError

KEY_ID = "AKIDEXAMPLE"
SECRET = "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY"
REGION = "us-east-1"
ENDPOINT = "http://127.0.0.1:9000"  # never contacted
CREDS = Credentials(KEY_ID, SECRET)
# AWS's examples (Signature Version 4 for S3: "Examples of signature calculations").
AWS_KEY_ID = "AKIAIOSFODNN7EXAMPLE"
AWS_NOW = float(calendar.timegm((2013, 5, 24, 0, 0, 0)))
AWS_SCOPE = f"{AWS_KEY_ID}/20130524/us-east-1/s3/aws4_request"


@dataclasses.dataclass
class Wire:
    """A request as the server receives it."""

    method: str
    path: str
    query: str
    headers: list[tuple[str, str]]

    def parse(self, now: float | None = None, region: str = REGION) -> sigv4.Auth:
        auth = sigv4.parse(self.method, self.path, self.query, self.headers, region,
                           time.time() if now is None else now)
        assert auth is not None
        return auth

    def verify(self, secret: str = SECRET, **kwargs: Any) -> sigv4.Verified:
        return sigv4.verify(self.parse(**kwargs), secret)

    def but(self, **changes: Any) -> Wire:
        return dataclasses.replace(self, **changes)

    def header(self, name: str, value: str) -> Wire:
        kept = [(k, v) for k, v in self.headers if k.lower() != name.lower()]
        return self.but(headers=[*kept, (name, value)])


def wire_of(request: Any) -> Wire:
    """An AWSRequest (prepared here) or an AWSPreparedRequest, with the Host urllib3 adds."""
    prepared = request.prepare() if isinstance(request, AWSRequest) else request
    split = urlsplit(prepared.url)
    headers = [(name, value.decode("latin-1") if isinstance(value, bytes) else value)
               for name, value in prepared.headers.items()]
    if not any(name.lower() == "host" for name, _ in headers):
        headers.append(("Host", split.netloc))
    return Wire(prepared.method, split.path, split.query, headers)


def key_path(bucket: str, key: str) -> str:
    """The path botocore's S3 serializer sends for a key."""
    return f"/{bucket}/{quote(key, safe='/~')}" if key else f"/{bucket}"


def header_signed(method: str, path: str, query: str = "", headers: dict[str, str] | None = None,
                  body: bytes = b"", region: str = REGION, creds: Credentials = CREDS) -> Wire:
    request = AWSRequest(method=method, url=ENDPOINT + path + (f"?{query}" if query else ""),
                         data=body, headers=headers or {})
    S3SigV4Auth(creds, "s3", region).add_auth(request)
    return wire_of(request)


def presigned(method: str, path: str, query: str = "", expires: int = 3600,
              region: str = REGION) -> Wire:
    request = AWSRequest(method=method, url=ENDPOINT + path + (f"?{query}" if query else ""))
    S3SigV4QueryAuth(CREDS, "s3", region, expires=expires).add_auth(request)
    return wire_of(request)


def refused(code: str, call: Callable[[], object]) -> S3AuthError:
    with pytest.raises(S3AuthError) as caught:
        call()
    assert caught.value.code == code, caught.value
    assert SECRET not in str(caught.value) and SECRET not in repr(caught.value.details)
    return caught.value


KEYS = ["a b.txt", "a+b=c&d", "100%.txt", "ünïcødé/日本.txt", "tilde~x", "dir/sub/file",
        "!'()*:@,;$", "  spaced  ", "a%2Fb"]
QUERIES = ["", "uploads", "partNumber=1&uploadId=x", "list-type=2&prefix=a%20b&delimiter=%2F",
           "prefix=%E6%97%A5&max-keys=5&encoding-type=url"]


@pytest.mark.parametrize("method", ["PUT", "GET", "HEAD", "DELETE", "POST"])
@pytest.mark.parametrize("key", KEYS)
def test_botocore_signatures_verify(method: str, key: str) -> None:
    body = b"some body" if method in ("PUT", "POST") else b""
    request = header_signed(method, key_path("bucket", key), body=body)
    verified = request.verify()
    assert verified.access_key_id == KEY_ID
    assert verified.payload == "sha256"
    assert verified.payload_sha256 == hashlib.sha256(body).hexdigest()


@pytest.mark.parametrize("query", QUERIES)
def test_query_strings_verify(query: str) -> None:
    header_signed("GET", "/bucket/k", query).verify()
    assert presigned("GET", "/bucket/k", query).verify().payload == "unsigned"


TAMPERINGS: dict[str, Callable[[Wire], Wire]] = {
    "method": lambda w: w.but(method="DELETE"),
    "path": lambda w: w.but(path=w.path + "x"),
    "path case": lambda w: w.but(path=w.path.upper()),
    "slash decoded": lambda w: w.but(path=w.path.replace("%2F", "/")),
    "query value": lambda w: w.but(query=w.query.replace("prefix=a", "prefix=b")),
    "query added": lambda w: w.but(query=w.query + "&versionId=1"),
    "signed header": lambda w: w.header("x-amz-meta-colour", "blue"),
    "payload hash": lambda w: w.header("x-amz-content-sha256", "0" * 64),
}


@pytest.mark.parametrize("change", TAMPERINGS)
def test_a_changed_request_fails(change: str) -> None:
    request = header_signed("GET", "/bucket/a%2Fb", "list-type=2&prefix=a%20b",
                            headers={"x-amz-meta-colour": "red"})
    request.verify()
    refused("SignatureDoesNotMatch", lambda: TAMPERINGS[change](request).verify())


def test_a_wrong_secret_fails_and_says_what_was_signed() -> None:
    request = header_signed("PUT", "/bucket/k", body=b"x")
    error = refused("SignatureDoesNotMatch", lambda: request.verify(SECRET + "x"))
    assert error.status == 403
    assert error.details["CanonicalRequest"].startswith("PUT\n/bucket/k\n")
    assert error.details["StringToSign"].startswith("AWS4-HMAC-SHA256\n")


def test_an_unsigned_amz_header_is_refused() -> None:
    request = header_signed("PUT", "/bucket/k").header("x-amz-acl", "public-read")
    error = refused("AccessDenied", request.parse)
    assert error.details["HeadersNotSigned"] == "x-amz-acl"


def test_header_values_are_trimmed_collapsed_and_joined() -> None:
    request = header_signed("PUT", "/bucket/k", headers={
        "X-Amz-Meta-Note": "  two   spaces\there ", "X-Amz-Meta-Tag": "first,second"})
    request.verify()
    # The same header sent twice is signed as its values joined by a comma (RFC 9110's rule).
    kept = [(k, v) for k, v in request.headers if k != "X-Amz-Meta-Tag"]
    twice = request.but(headers=[*kept, ("x-amz-meta-tag", "first"),
                                 ("X-AMZ-META-TAG", "second")])
    twice.verify()
    swapped = request.but(headers=[*kept, ("x-amz-meta-tag", "second"),
                                   ("x-amz-meta-tag", "first")])
    refused("SignatureDoesNotMatch", swapped.verify)
    respaced = request.header("X-Amz-Meta-Note", "two spaces here")
    respaced.verify()  # what the canonical form keeps is all that counts
    refused("SignatureDoesNotMatch", request.header("X-Amz-Meta-Note", "twospaces here").verify)


def test_the_path_is_also_understood_re_encoded() -> None:
    """A client that signs the RFC 3986 form but sends a character raw (or the reverse)."""
    header_signed("GET", "/bucket/a%21b%40c").but(path="/bucket/a!b@c").verify()
    header_signed("GET", "/bucket/a%7Eb").verify()  # as sent: an old client's %7E for ~
    # ... but an encoded slash is not a slash: another key
    refused("SignatureDoesNotMatch",
            lambda: header_signed("GET", "/bucket/a%2Fb").but(path="/bucket/a/b").verify())


@pytest.mark.parametrize("offset", [-14 * 60, 14 * 60])
def test_a_request_a_little_off_the_clock_passes(offset: int) -> None:
    header_signed("GET", "/bucket/k").verify(now=time.time() + offset)


@pytest.mark.parametrize("offset", [-16 * 60, 16 * 60])
def test_a_request_far_off_the_clock_is_refused(offset: int) -> None:
    request = header_signed("GET", "/bucket/k")
    error = refused("RequestTimeTooSkewed", lambda: request.parse(now=time.time() + offset))
    assert error.status == 403


def test_a_date_header_stands_for_x_amz_date() -> None:
    request = header_signed("GET", "/bucket/k", headers={"Date": formatdate(usegmt=True)})
    assert not any(name.lower() == "x-amz-date" for name, _ in request.headers)
    request.verify()
    refused("AccessDenied", lambda: request.header("Date", "yesterday").parse())


def test_the_wrong_region_names_the_right_one() -> None:
    request = header_signed("GET", "/bucket/k", region="eu-west-1")
    error = refused("AuthorizationHeaderMalformed", request.parse)
    assert (error.status, error.region) == (400, REGION)
    assert "'eu-west-1' is wrong; expecting 'us-east-1'" in error.message
    query = presigned("GET", "/bucket/k", region="eu-west-1")
    assert refused("AuthorizationQueryParametersError", query.parse).region == REGION


GOOD = (f"Credential={KEY_ID}/{{date}}/us-east-1/s3/aws4_request, "
        "SignedHeaders=host;x-amz-content-sha256;x-amz-date, Signature=" + "a" * 64)
MALFORMED = {
    "no parts": "AWS4-HMAC-SHA256",
    "no signature": GOOD.rsplit(",", 1)[0],
    "a part twice": GOOD + ", Signature=" + "b" * 64,
    "short signature": GOOD[:-1],
    "credential parts": GOOD.replace("/us-east-1/s3", "/us-east-1"),
    "credential date": GOOD.replace("{date}", "20000101"),
    "service": GOOD.replace("/s3/", "/ec2/"),
    "terminal": GOOD.replace("aws4_request", "aws5_request"),
    "signed headers": GOOD.replace("host;", "Host;"),
}


@pytest.mark.parametrize("case", MALFORMED)
def test_malformed_authorization_headers(case: str) -> None:
    good = header_signed("GET", "/bucket/k")
    date = dict((k.lower(), v) for k, v in good.headers)["x-amz-date"][:8]
    value = MALFORMED[case] if case == "no parts" else f"AWS4-HMAC-SHA256 {MALFORMED[case]}"
    error = refused("AuthorizationHeaderMalformed",
                    lambda: good.header("Authorization", value.replace("{date}", date)).parse())
    assert error.status == 400


@pytest.mark.parametrize(("value", "code"), [("Bearer abc", "InvalidArgument"),
                                             ("AWS4-ECDSA-P256-SHA256 x", "InvalidArgument"),
                                             ("AWS no-colon", "AuthorizationHeaderMalformed")])
def test_other_authorization_schemes(value: str, code: str) -> None:
    refused(code, lambda: header_signed("GET", "/b/k").header("Authorization", value).parse())


def test_the_payload_hash_header_is_required_and_checked() -> None:
    request = header_signed("GET", "/bucket/k")
    refused("InvalidRequest", lambda: request.but(headers=[
        (k, v) for k, v in request.headers if k.lower() != "x-amz-content-sha256"]).parse())
    refused("InvalidArgument", lambda: request.header("x-amz-content-sha256", "abc").parse())


def test_an_anonymous_request_has_no_auth() -> None:
    assert sigv4.parse("GET", "/bucket/k", "prefix=a", [("Host", "h")], REGION, 0) is None


def test_two_mechanisms_at_once_are_refused() -> None:
    request = header_signed("GET", "/bucket/k")
    refused("InvalidArgument", lambda: request.but(query="X-Amz-Signature=x").parse())


def test_a_session_token_is_signed_and_never_shown() -> None:
    request = header_signed("GET", "/bucket/k", creds=Credentials(KEY_ID, SECRET, "TOKEN-1"))
    auth = request.parse()
    assert auth.security_token == "TOKEN-1" and "TOKEN-1" not in repr(auth)
    verified = sigv4.verify(auth, SECRET)
    assert SECRET not in repr(verified)


# ---- AWS's published examples ---------------------------------------------------------------

def test_aws_example_get_object() -> None:
    headers = [("Host", "examplebucket.s3.amazonaws.com"), ("Range", "bytes=0-9"),
               ("x-amz-content-sha256", sigv4.EMPTY_SHA256), ("x-amz-date", "20130524T000000Z"),
               ("Authorization", f"AWS4-HMAC-SHA256 Credential={AWS_SCOPE},SignedHeaders=host;"
                "range;x-amz-content-sha256;x-amz-date,Signature=f0e8bdb87c964420e857bd35b5d6ed"
                "310bd44f0170aba48dd91039c6036bdb41")]
    request = Wire("GET", "/test.txt", "", headers)
    assert request.verify(now=AWS_NOW).access_key_id == AWS_KEY_ID
    refused("SignatureDoesNotMatch", lambda: request.header("Range", "bytes=0-8").verify(
        now=AWS_NOW))


def test_aws_example_chunked_upload_seed() -> None:
    verified = aws_chunked_seed().verify(now=AWS_NOW)
    assert verified.payload == "streaming-signed"
    assert verified.chunk_signing is not None
    assert verified.chunk_signing.seed_signature.startswith("4f232c4386841ef7")
    assert verified.chunk_signing.scope == "20130524/us-east-1/s3/aws4_request"
    assert verified.chunk_signing.signing_key == sigv4.signing_key(SECRET, "20130524", REGION)
    assert "signing_key" not in repr(verified.chunk_signing)


def aws_chunked_seed() -> Wire:
    """The request of AWS's chunked upload example (also used by test_s3_chunked.py)."""
    return Wire("PUT", "/examplebucket/chunkObject.txt", "", [
        ("Host", "s3.amazonaws.com"), ("x-amz-date", "20130524T000000Z"),
        ("x-amz-storage-class", "REDUCED_REDUNDANCY"),
        ("Authorization", f"AWS4-HMAC-SHA256 Credential={AWS_SCOPE},SignedHeaders="
         "content-encoding;content-length;host;x-amz-content-sha256;x-amz-date;"
         "x-amz-decoded-content-length;x-amz-storage-class,Signature=4f232c4386841ef735655705"
         "268965c44a0e4690baa4adea153f7db9fa80a0a9"),
        ("x-amz-content-sha256", "STREAMING-AWS4-HMAC-SHA256-PAYLOAD"),
        ("Content-Encoding", "aws-chunked"), ("x-amz-decoded-content-length", "66560"),
        ("Content-Length", "66824")])


def test_aws_example_presigned_get() -> None:
    query = ("X-Amz-Algorithm=AWS4-HMAC-SHA256&X-Amz-Credential=AKIAIOSFODNN7EXAMPLE%2F20130524"
             "%2Fus-east-1%2Fs3%2Faws4_request&X-Amz-Date=20130524T000000Z&X-Amz-Expires=86400&"
             "X-Amz-SignedHeaders=host&X-Amz-Signature=aeeed9bbccd4d02ee5c0109b86d86835f995330d"
             "a4c265957d157751f604d404")
    request = Wire("GET", "/test.txt", query, [("Host", "examplebucket.s3.amazonaws.com")])
    auth = request.parse(now=AWS_NOW + 86400)
    assert auth.expires == AWS_NOW + 86400
    sigv4.verify(auth, SECRET)
    refused("AccessDenied", lambda: request.parse(now=AWS_NOW + 86401))


# ---- presigned URLs -------------------------------------------------------------------------

def test_presigned_v4_urls_verify_until_they_expire() -> None:
    request = presigned("PUT", key_path("bucket", "ünï code+x.txt"), expires=600)
    expires = request.parse().expires
    assert expires is not None
    signed_at = expires - 600
    assert request.verify(now=signed_at + 600).payload == "unsigned"
    error = refused("AccessDenied", lambda: request.parse(now=signed_at + 601))
    assert error.message == "Request has expired" and error.status == 403
    refused("AccessDenied", lambda: request.parse(now=signed_at - 16 * 60))  # not valid yet
    refused("SignatureDoesNotMatch", lambda: request.but(method="GET").verify())
    refused("SignatureDoesNotMatch", lambda: request.verify(SECRET[::-1]))


def test_presigned_v4_limits() -> None:
    refused("AuthorizationQueryParametersError",
            lambda: presigned("GET", "/bucket/k", expires=604801).parse())
    presigned("GET", "/bucket/k", expires=604800).verify()
    good = presigned("GET", "/bucket/k")
    no_signature = "&".join(p for p in good.query.split("&")
                            if not p.startswith("X-Amz-Signature="))
    refused("AuthorizationQueryParametersError", lambda: good.but(query=no_signature).parse())
    refused("AuthorizationQueryParametersError",
            lambda: good.but(query=good.query.replace("AWS4-HMAC-SHA256", "AWS4-HMAC-SHA1"))
            .parse())
    refused("AuthorizationQueryParametersError",
            lambda: good.but(query=good.query + "&X-Amz-Date=20260101T000000Z").parse())


@pytest.fixture(scope="module")
def session() -> boto3.session.Session:
    return boto3.session.Session(aws_access_key_id=KEY_ID, aws_secret_access_key=SECRET,
                                 region_name=REGION)


def from_url(method: str, url: str) -> Wire:
    split = urlsplit(url)
    return Wire(method, split.path, split.query, [("Host", split.netloc)])


OVERRIDES = {"ResponseContentType": "text/plain; charset=utf-8",
             "ResponseContentDisposition": 'attachment; filename="a b.txt"'}


def test_boto3_presigned_s3v4(session: boto3.session.Session) -> None:
    s3 = session.client("s3", endpoint_url=ENDPOINT, config=Config(signature_version="s3v4"))
    url = s3.generate_presigned_url("get_object", ExpiresIn=300, Params={
        "Bucket": "bucket", "Key": "dir/ünï + x.txt", **OVERRIDES})
    request = from_url("GET", url)
    assert request.parse().kind == "v4-query"
    request.verify()
    refused("SignatureDoesNotMatch", lambda: request.but(
        query=request.query.replace("text%2Fplain", "text%2Fhtml")).verify())


def test_boto3_presigned_default_is_sigv2(session: boto3.session.Session) -> None:
    s3 = session.client("s3", endpoint_url=ENDPOINT)
    url = s3.generate_presigned_url("get_object", ExpiresIn=300, Params={
        "Bucket": "bucket", "Key": "dir/ünï + x.txt", **OVERRIDES})
    request = from_url("GET", url)
    auth = request.parse()
    assert auth.kind == "v2-query" and "AWSAccessKeyId=" in request.query
    assert sigv4.verify(auth, SECRET).payload == "unsigned"
    refused("SignatureDoesNotMatch", lambda: request.but(
        query=request.query.replace("text%2Fplain", "text%2Fhtml")).verify())
    refused("SignatureDoesNotMatch", lambda: request.but(path=request.path + "x").verify())
    refused("SignatureDoesNotMatch", lambda: request.verify(SECRET + "x"))
    assert auth.expires is not None
    refused("AccessDenied", lambda: request.parse(now=(auth.expires or 0) + 1))


def test_sigv2_presigned_put_with_headers_moved_into_the_query() -> None:
    request = AWSRequest(method="PUT", url=ENDPOINT + "/bucket/a%20b?uploadId=u&partNumber=2",
                         headers={"Content-Type": "image/png", "x-amz-meta-who": "me"})
    HmacV1QueryAuth(CREDS, expires=60).add_auth(request)
    wire = wire_of(request)
    assert "content-type=image%2Fpng" in wire.query and "x-amz-meta-who=me" in wire.query
    plain = wire.but(headers=[("Host", "127.0.0.1:9000")])  # a client sending none of them
    plain.verify()
    plain.header("Content-Type", "image/png").verify()
    refused("SignatureDoesNotMatch", lambda: plain.header("Content-Type", "text/plain").verify())


@pytest.mark.parametrize("query", ["", "acl", "uploads", "response-content-type=a%2Fb"])
def test_sigv2_header_auth(query: str) -> None:
    url = ENDPOINT + "/bucket/a%20b.txt" + (f"?{query}" if query else "")
    request = AWSRequest(method="PUT", url=url, data=b"x", auth_path=None,
                         headers={"Content-Type": "text/plain", "x-amz-meta-a": " 1 "})
    HmacV1Auth(CREDS).add_auth(request)
    wire = wire_of(request)
    assert wire.parse().kind == "v2-header"
    wire.verify()
    refused("SignatureDoesNotMatch", lambda: wire.header("x-amz-meta-a", "2").verify())
    refused("RequestTimeTooSkewed", lambda: wire.parse(now=time.time() + 3600))


# ---- what boto3 clients send ----------------------------------------------------------------

class Caught(Exception):
    def __init__(self, request: Any) -> None:
        super().__init__("caught")
        self.request = request


def catch_send(request: Any, **_: Any) -> None:
    """A before-send hook: the signed request goes no further than this."""
    raise Caught(request)


def catching_clients() -> dict[str, Any]:
    """boto3 clients, plain HTTP and HTTPS (botocore signs and encodes differently), whose
    requests are caught before they are sent."""
    session = boto3.session.Session(aws_access_key_id=KEY_ID, aws_secret_access_key=SECRET,
                                    region_name=REGION)
    made = {}
    for scheme in ("http", "https"):
        made[scheme] = session.client("s3", endpoint_url=f"{scheme}://127.0.0.1:9000",
                                      config=Config(s3={"addressing_style": "path"}))
        made[scheme].meta.events.register("before-send", catch_send)
    return made


@pytest.fixture(scope="module")
def clients() -> Iterator[dict[str, Any]]:
    made = catching_clients()
    yield made
    for client in made.values():
        client.close()


def caught(call: Callable[[], object]) -> Wire:
    with pytest.raises(Caught) as got:
        call()
    return wire_of(got.value.request)


CALLS: dict[str, tuple[str, Callable[[Any], object]]] = {
    "list v2": ("http", lambda s3: s3.list_objects_v2(Bucket="b", Prefix="a b/ü", Delimiter="/")),
    "put, signed payload": ("http", lambda s3: s3.put_object(Bucket="b", Key="a b+c", Body=b"x")),
    "put, trailer": ("https", lambda s3: s3.put_object(Bucket="b", Key="k~1",
                                                       Body=io.BytesIO(b"hello"))),
    "create multipart": ("http", lambda s3: s3.create_multipart_upload(Bucket="b", Key="a b")),
    "upload part": ("http", lambda s3: s3.upload_part(Bucket="b", Key="a b", UploadId="u/1+2",
                                                      PartNumber=3, Body=b"part")),
    "delete objects": ("http", lambda s3: s3.delete_objects(
        Bucket="b", Delete={"Objects": [{"Key": "a"}]})),
    "copy": ("http", lambda s3: s3.copy_object(Bucket="b", Key="to", CopySource="b/from x")),
    "head": ("https", lambda s3: s3.head_object(Bucket="b", Key="%ü")),
    "delete": ("https", lambda s3: s3.delete_object(Bucket="b", Key="x", VersionId="v 1")),
}


@pytest.mark.parametrize("call", CALLS)
def test_boto3_requests_verify(clients: dict[str, Any], call: str) -> None:
    scheme, do = CALLS[call]
    request = caught(lambda: do(clients[scheme]))
    verified = request.verify()
    assert verified.payload == ("streaming-unsigned-trailer" if call == "put, trailer"
                                else "sha256")
    refused("SignatureDoesNotMatch", lambda: request.verify(SECRET.lower()))


def test_chunked_headers() -> None:
    assert sigv4.chunked_headers("streaming-signed") == ("x-amz-decoded-content-length",)
    assert "x-amz-trailer" in sigv4.chunked_headers("streaming-unsigned-trailer")
    assert sigv4.chunked_headers("sha256") == ()
