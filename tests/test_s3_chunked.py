"""chunked.py: aws-chunked bodies from AWS's published example and from botocore's own encoder
(`AwsChunkedWrapper`), cut at every boundary and at random ones, whole, corrupted, truncated
and malformed; and the checksum headers of bodies sent whole.
"""

from __future__ import annotations

import asyncio
import base64
import functools
import hashlib
import hmac
import io
import itertools
import sys
import zlib
from collections.abc import AsyncIterator, Callable, Iterable, Iterator
from typing import Any

import pytest
from botocore.httpchecksum import (
    AwsChunkedWrapper,
    BaseChecksum,
    Crc32Checksum,
    Sha1Checksum,
    Sha256Checksum,
)
from hypothesis import given, settings
from hypothesis import strategies as st
from test_s3_sigv4 import AWS_NOW, SECRET, aws_chunked_seed, catching_clients, caught

from filestore.s3api import chunked, sigv4
from filestore.s3api.chunked import ChunkedDecoder, S3PayloadError
from filestore.s3api.sigv4 import ChunkSigning, Verified

FUZZ = settings(max_examples=40, deadline=None, derandomize=True, database=None)

# AWS's chunked upload example: 64 KiB and 1 KiB of "a", and the signatures it publishes.
AWS_PAYLOAD = b"a" * 66560
AWS_BODY = (
    b"10000;chunk-signature=ad80c730a21e5b8d04586a2213dd63b9a0e99e0e2307b0ade35a65485a288648\r\n"
    + b"a" * 65536 + b"\r\n"
    b"400;chunk-signature=0055627c9e194cb4542bae2aa5492e3c1575bbb81b612b7d234b86a503ef5497\r\n"
    + b"a" * 1024 + b"\r\n"
    b"0;chunk-signature=b6c6ea8a5354eaf15b3cb7646744f4275b71ea724fed81ceb9323e279d449df9\r\n"
    b"\r\n")
UNSIGNED_TRAILER = Verified("AKID", "streaming-unsigned-trailer")


class _ReflectedCrc(BaseChecksum):  # type: ignore[misc]  # botocore is untyped
    """A reflected CRC (init and final XOR all ones) bit by bit: a reference independent of
    the libraries chunked.py uses (botocore's own CRC32C and CRC64NVME classes need awscrt)."""

    POLY = 0
    WIDTH = 0

    def __init__(self) -> None:
        self._crc = (1 << self.WIDTH) - 1

    def update(self, chunk: bytes) -> None:
        crc = self._crc
        for byte in chunk:
            crc ^= byte
            for _ in range(8):
                crc = (crc >> 1) ^ (self.POLY if crc & 1 else 0)
        self._crc = crc

    def digest(self) -> bytes:
        return (self._crc ^ ((1 << self.WIDTH) - 1)).to_bytes(self.WIDTH // 8, "big")


def _reflect(poly: int, width: int) -> int:
    return int(f"{poly:0{width}b}"[::-1], 2)


class Crc32cChecksum(_ReflectedCrc):
    POLY, WIDTH = _reflect(0x1EDC6F41, 32), 32


class Crc64NvmeChecksum(_ReflectedCrc):
    POLY, WIDTH = _reflect(0xAD93D23594C93659, 64), 64


CHECKSUM_CLASSES: dict[str, type[BaseChecksum]] = {
    "crc32": Crc32Checksum, "crc32c": Crc32cChecksum, "crc64nvme": Crc64NvmeChecksum,
    "sha1": Sha1Checksum, "sha256": Sha256Checksum}


@pytest.fixture(scope="module")
def aws_verified() -> Verified:
    return aws_chunked_seed().verify(now=AWS_NOW)


@pytest.fixture(scope="module")
def clients() -> Iterator[dict[str, Any]]:
    made = catching_clients()
    yield made
    for client in made.values():
        client.close()


async def _pieces(parts: Iterable[bytes]) -> AsyncIterator[bytes]:
    for part in parts:
        yield part


def decode(parts: Iterable[bytes], verified: Verified, trailer: str | None = None,
           length: int | None = None) -> bytes:
    """Through the async API, one read per part."""
    async def run() -> bytes:
        return b"".join([piece async for piece in chunked.decode(
            _pieces(parts), verified, trailer, length)])
    return asyncio.run(run())


def decode_sync(parts: Iterable[bytes], verified: Verified, trailer: str | None = None,
                length: int | None = None) -> bytes:
    decoder = ChunkedDecoder(verified, trailer, length)
    out = b"".join(piece for part in parts for piece in decoder.feed(part))
    decoder.finish()
    return out


def bytewise(body: bytes) -> list[bytes]:
    return [body[i:i + 1] for i in range(len(body))]


def refused(code: str, call: Callable[[], object]) -> S3PayloadError:
    with pytest.raises(S3PayloadError) as caught:
        call()
    assert caught.value.code == code, caught.value
    return caught.value


def botocore_body(payload: bytes, algorithm: str = "crc32", chunk_size: int = 7) -> bytes:
    wrapper = AwsChunkedWrapper(io.BytesIO(payload), checksum_cls=CHECKSUM_CLASSES[algorithm],
                                checksum_name=f"x-amz-checksum-{algorithm}",
                                chunk_size=chunk_size)
    return bytes(wrapper.read())


# ---- AWS's example: chunk signatures ---------------------------------------------------------

def test_aws_example_decodes_whole_and_byte_by_byte(aws_verified: Verified) -> None:
    assert decode([AWS_BODY], aws_verified, None, 66560) == AWS_PAYLOAD
    assert decode(bytewise(AWS_BODY), aws_verified, None, 66560) == AWS_PAYLOAD


@FUZZ
@given(st.lists(st.integers(0, len(AWS_BODY)), max_size=12))
def test_aws_example_decodes_cut_anywhere(cuts: list[int]) -> None:
    verified = aws_chunked_seed().verify(now=AWS_NOW)
    bounds = [0, *sorted(cuts), len(AWS_BODY)]
    parts = [AWS_BODY[a:b] for a, b in itertools.pairwise(bounds)]
    assert decode(parts, verified, None, 66560) == AWS_PAYLOAD


@pytest.mark.parametrize("offset", [100, 65536 + 90 + 500, 66700])
def test_aws_example_with_a_changed_byte_fails_its_chunk(aws_verified: Verified,
                                                         offset: int) -> None:
    body = bytearray(AWS_BODY)
    body[offset] = ord("b")
    refused("SignatureDoesNotMatch", lambda: decode_sync([bytes(body)], aws_verified))


def test_aws_example_with_a_changed_signature_fails(aws_verified: Verified) -> None:
    final = AWS_BODY.replace(b"b6c6ea8a", b"b6c6ea8b")
    refused("SignatureDoesNotMatch", lambda: decode_sync([final], aws_verified))
    wrong_seed = Verified("AKID", "streaming-signed", chunk_signing=ChunkSigning(
        sigv4.signing_key(SECRET, "20130524", "us-east-1"),
        "20130524/us-east-1/s3/aws4_request", "20130524T000000Z", "0" * 64))
    refused("SignatureDoesNotMatch", lambda: decode_sync([AWS_BODY], wrong_seed))


def test_aws_example_lengths(aws_verified: Verified) -> None:
    refused("IncompleteBody", lambda: decode_sync([AWS_BODY], aws_verified, None, 66561))
    refused("InvalidRequest", lambda: decode_sync([AWS_BODY], aws_verified, None, 66559))
    without_final = AWS_BODY[:AWS_BODY.index(b"0;chunk")]
    refused("IncompleteBody", lambda: decode_sync([without_final], aws_verified, None, 66560))
    unsigned_header = AWS_BODY.replace(b"400;chunk-signature=0055627c", b"400;x=0055627c")
    refused("IncompleteBody", lambda: decode_sync([unsigned_header], aws_verified))


def test_signed_chunks_stream_without_holding_a_chunk(aws_verified: Verified) -> None:
    """Data comes out as it comes in, each read's bytes at once, whatever the chunk's size."""
    reads: list[int] = []
    out: list[tuple[int, int]] = []

    async def body() -> AsyncIterator[bytes]:
        for i in range(0, len(AWS_BODY), 4096):
            reads.append(i)
            yield AWS_BODY[i:i + 4096]

    async def run() -> None:
        async for piece in chunked.decode(body(), aws_verified, None, 66560):
            out.append((len(reads), len(piece)))

    asyncio.run(run())
    assert max(size for _, size in out) <= 4096
    assert out[0][0] == 1  # the first read's payload came out before the second read
    assert len(reads) - out[-1][0] <= 1


# ---- signed trailers (a chain built here, on the example's key) -----------------------------

def _signed_trailer_body(payload: bytes, checksum_line: bytes, *, bad_signature: bool = False
                         ) -> tuple[Verified, bytes]:
    signing = ChunkSigning(sigv4.signing_key(SECRET, "20130524", "us-east-1"),
                           "20130524/us-east-1/s3/aws4_request", "20130524T000000Z", "1" * 64)

    def sign(kind: str, previous: str, *lines: str) -> str:
        text = "\n".join((kind, signing.amz_date, signing.scope, previous, *lines))
        return hmac.new(signing.signing_key, text.encode(), hashlib.sha256).hexdigest()

    body, previous = b"", signing.seed_signature
    for data in (payload[:10], payload[10:], b""):  # the last, empty, chunk has no CRLF
        previous = sign("AWS4-HMAC-SHA256-PAYLOAD", previous, sigv4.EMPTY_SHA256,
                        hashlib.sha256(data).hexdigest())
        body += b"%x;chunk-signature=%s\r\n" % (len(data), previous.encode())
        body += data + b"\r\n" if data else b""
    trailer_signature = sign("AWS4-HMAC-SHA256-TRAILER", previous,
                             hashlib.sha256(checksum_line + b"\n").hexdigest())
    if bad_signature:
        trailer_signature = trailer_signature[::-1]
    body += checksum_line + b"\r\nx-amz-trailer-signature:" + trailer_signature.encode()
    body += b"\r\n\r\n"
    return Verified("AKID", "streaming-signed-trailer", chunk_signing=signing), body


def test_signed_trailer() -> None:
    payload = b"hello signed trailer"
    crc = base64.b64encode(zlib.crc32(payload).to_bytes(4, "big"))
    verified, body = _signed_trailer_body(payload, b"x-amz-checksum-crc32:" + crc)
    assert decode(bytewise(body), verified, "x-amz-checksum-crc32", len(payload)) == payload
    verified, body = _signed_trailer_body(payload, b"x-amz-checksum-crc32:" + crc,
                                          bad_signature=True)
    refused("SignatureDoesNotMatch", lambda: decode_sync([body], verified,
                                                         "x-amz-checksum-crc32"))
    verified, body = _signed_trailer_body(payload, b"x-amz-checksum-crc32:AAAAAA==")
    refused("BadDigest", lambda: decode_sync([body], verified, "x-amz-checksum-crc32"))


# ---- botocore's aws-chunked encoding with a checksum trailer --------------------------------

@pytest.mark.parametrize("algorithm", CHECKSUM_CLASSES)
@pytest.mark.parametrize("size", [0, 1, 7, 50])
def test_botocore_trailer_bodies_at_every_boundary(algorithm: str, size: int) -> None:
    payload = bytes(range(256))[:size]
    body = botocore_body(payload, algorithm)
    trailer = f"x-amz-checksum-{algorithm}"
    assert decode(bytewise(body), UNSIGNED_TRAILER, trailer, size) == payload
    for cut in range(len(body) + 1):
        assert decode_sync([body[:cut], body[cut:]], UNSIGNED_TRAILER, trailer) == payload


@FUZZ
@given(st.binary(max_size=3000), st.integers(1, 700), st.lists(st.integers(0, 4000)),
       st.sampled_from(sorted(CHECKSUM_CLASSES)))
def test_botocore_trailer_bodies_cut_anywhere(payload: bytes, chunk_size: int, cuts: list[int],
                                              algorithm: str) -> None:
    body = botocore_body(payload, algorithm, chunk_size)
    bounds = [0, *sorted(min(cut, len(body)) for cut in cuts), len(body)]
    parts = [body[a:b] for a, b in itertools.pairwise(bounds)]
    trailer = f"x-amz-checksum-{algorithm}"
    assert decode(parts, UNSIGNED_TRAILER, trailer, len(payload)) == payload


@pytest.mark.parametrize("algorithm", CHECKSUM_CLASSES)
def test_a_corrupted_body_is_a_bad_digest(algorithm: str) -> None:
    body = botocore_body(b"some payload bytes", algorithm, chunk_size=1024)
    corrupted = body.replace(b"payload", b"paylaod")
    error = refused("BadDigest", lambda: decode_sync([corrupted], UNSIGNED_TRAILER,
                                                     f"x-amz-checksum-{algorithm}"))
    assert algorithm.upper() in error.message and error.status == 400


def test_every_truncation_is_refused() -> None:
    body = botocore_body(b"0123456789abcdef", "crc32", 5)
    trailer = "x-amz-checksum-crc32"
    for cut in range(len(body) - 2):  # the final CRLF may be missing (as some clients send)
        # (cut just before the trailer: the checksum declared was never sent)
        code = "MalformedTrailerError" if cut == body.index(b"x-amz") else "IncompleteBody"
        refused(code, functools.partial(decode_sync, [body[:cut]], UNSIGNED_TRAILER, trailer))
    assert decode_sync([body[:-2]], UNSIGNED_TRAILER, trailer) == b"0123456789abcdef"


@pytest.mark.parametrize(("algorithm", "check"), [("crc32c", 0xE3069283),
                                                  ("crc64nvme", 0xAE8B14860A799888)])
def test_the_crcs_are_the_ones_s3_computes(algorithm: str, check: int) -> None:
    """Each CRC's catalogued check value (of "123456789"), in pieces, for the library and the
    tests' reference alike; and AWS's trailer example: 66560 bytes of "a" have the CRC32C
    sOO8/Q==."""
    for checksum in (chunked.new_checksum(algorithm), CHECKSUM_CLASSES[algorithm]()):
        checksum.update(b"1234")
        checksum.update(b"")
        checksum.update(b"56789")
        assert checksum.digest() == check.to_bytes(len(checksum.digest()), "big")
    if algorithm == "crc32c":
        checksum = chunked.new_checksum("crc32c")
        checksum.update(AWS_PAYLOAD)
        assert base64.b64encode(checksum.digest()) == b"sOO8/Q=="


def test_a_crc_without_its_library_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    chunked._crc_extension.cache_clear()
    monkeypatch.setitem(sys.modules, "anycrc", None)  # import anycrc: ImportError
    try:
        refused("InvalidRequest", lambda: chunked.new_checksum("crc64nvme"))
        refused("InvalidRequest", lambda: ChunkedDecoder(
            UNSIGNED_TRAILER, "x-amz-checksum-crc64nvme", None))
        chunked.new_checksum("crc32c").update(b"the others work")
    finally:
        chunked._crc_extension.cache_clear()


MALFORMED: dict[str, tuple[bytes, str]] = {
    "size not hex": (b"zz\r\nhello\r\n0\r\n\r\n", "IncompleteBody"),
    "negative size": (b"-5\r\nhello\r\n0\r\n\r\n", "IncompleteBody"),
    "size too long": (b"1" * 16 + b"\r\n", "IncompleteBody"),
    "data longer than its size": (b"3\r\nhello\r\n0\r\n\r\n", "IncompleteBody"),
    "bare LF after data": (b"5\r\nhello\n0\r\n\r\n", "IncompleteBody"),
    "header without CRLF": (b"5\nhello\r\n0\r\n\r\n", "IncompleteBody"),
    "bytes after the end": (b"5\r\nhello\r\n0\r\nx-amz-checksum-crc32:NhCmhg==\r\n\r\nmore",
                            "IncompleteBody"),
    "trailer undeclared": (b"0\r\nx-amz-checksum-sha1:AAAA\r\n\r\n", "MalformedTrailerError"),
    "trailer twice": (b"5\r\nhello\r\n0\r\nx-amz-checksum-crc32:NhCmhg==\r\n"
                      b"x-amz-checksum-crc32:NhCmhg==\r\n\r\n", "MalformedTrailerError"),
    "trailer missing": (b"5\r\nhello\r\n0\r\n\r\n", "MalformedTrailerError"),
    "trailer not base64": (b"5\r\nhello\r\n0\r\nx-amz-checksum-crc32:***\r\n\r\n",
                           "MalformedTrailerError"),
    "trailer without colon": (b"5\r\nhello\r\n0\r\nx-amz-checksum-crc32\r\n\r\n",
                              "MalformedTrailerError"),
    "a signature, unsigned": (b"5\r\nhello\r\n0\r\nx-amz-checksum-crc32:NhCmhg==\r\n"
                              b"x-amz-trailer-signature:" + b"a" * 64 + b"\r\n\r\n",
                              "MalformedTrailerError"),
}


@pytest.mark.parametrize("case", MALFORMED)
def test_malformed_bodies(case: str) -> None:
    body, code = MALFORMED[case]
    refused(code, lambda: decode_sync([body], UNSIGNED_TRAILER, "x-amz-checksum-crc32"))
    refused(code, lambda: decode_sync(bytewise(body), UNSIGNED_TRAILER, "x-amz-checksum-crc32"))


def test_the_good_body_of_those_passes() -> None:
    body = b"5\r\nhello\r\n0\r\nx-amz-checksum-crc32:NhCmhg==\r\n\r\n"
    assert decode_sync([body], UNSIGNED_TRAILER, "x-amz-checksum-crc32") == b"hello"
    lf = b"5;ext=1\r\nhello\r\n0\r\nx-amz-checksum-crc32:NhCmhg==\n\r\n"
    assert decode_sync([lf], UNSIGNED_TRAILER, "x-amz-checksum-crc32") == b"hello"


def test_a_line_without_end_is_refused_before_it_is_buffered() -> None:
    decoder = ChunkedDecoder(UNSIGNED_TRAILER, None, None)
    decoder.feed(b"1" * (chunked.MAX_LINE - 1))
    refused("IncompleteBody", lambda: decoder.feed(b"11"))
    refused("IncompleteBody", lambda: ChunkedDecoder(UNSIGNED_TRAILER, None, None).feed(
        b"a" * (10 * chunked.MAX_LINE)))


@pytest.mark.parametrize(("trailer", "code"), [("x-amz-checksum-md5", "InvalidRequest"),
                                               ("x-amz-meta-a", "InvalidRequest")])
def test_trailers_not_understood_are_refused_up_front(trailer: str, code: str) -> None:
    refused(code, lambda: ChunkedDecoder(UNSIGNED_TRAILER, trailer, None))


def test_a_payload_that_is_not_aws_chunked_is_a_programming_error() -> None:
    with pytest.raises(ValueError):
        ChunkedDecoder(Verified("AKID", "sha256", "0" * 64), None, None)
    with pytest.raises(ValueError):
        ChunkedDecoder(Verified("AKID", "streaming-signed"), None, None)


# ---- a whole body's x-amz-checksum-* header -------------------------------------------------

@pytest.mark.parametrize("algorithm", CHECKSUM_CLASSES)
def test_checksum_headers(algorithm: str) -> None:
    body = b"the body, sent whole"
    value = CHECKSUM_CLASSES[algorithm]().handle(body)
    verifier = chunked.header_checksum({f"x-amz-checksum-{algorithm}": value,
                                        "x-amz-checksum-type": "FULL_OBJECT"})
    assert verifier is not None and verifier.value == value
    for i in range(0, len(body), 3):
        verifier.update(body[i:i + 3])
    verifier.verify()
    other = chunked.verify_checksum_header(f"X-Amz-Checksum-{algorithm.upper()}", value)
    other.update(body + b"!")
    assert "did not match" in refused("BadDigest", other.verify).message


def test_checksum_header_errors() -> None:
    assert chunked.header_checksum([("content-md5", "x")]) is None
    refused("InvalidRequest", lambda: chunked.verify_checksum_header(
        "x-amz-checksum-crc32", "AAAA"))  # 3 bytes
    refused("InvalidRequest", lambda: chunked.verify_checksum_header(
        "x-amz-checksum-sha256", "not base64!"))
    refused("InvalidRequest", lambda: chunked.header_checksum(
        [("x-amz-checksum-crc64nvme", "AAAAAA==")]))  # 4 bytes of 8
    refused("InvalidRequest", lambda: chunked.header_checksum(
        [("x-amz-checksum-crc32", "AAAAAA=="), ("x-amz-checksum-sha1", "A" * 27 + "=")]))


# ---- end to end: a boto3 upload, signed, caught, verified and decoded -----------------------

def test_a_boto3_upload_end_to_end(clients: dict[str, Any]) -> None:
    payload = bytes(range(256)) * 40
    request_body: list[Any] = []
    s3 = clients["https"]

    def keep_body(request: Any, **_: Any) -> None:
        request_body.append(request.body)

    s3.meta.events.register_first("before-send", keep_body)
    try:
        wire = caught(lambda: s3.put_object(Bucket="b", Key="k", Body=io.BytesIO(payload)))
    finally:
        s3.meta.events.unregister("before-send", keep_body)
    headers = {name.lower(): value for name, value in wire.headers}
    verified = wire.verify()
    assert verified.payload == "streaming-unsigned-trailer"
    assert all(name in headers for name in sigv4.chunked_headers(verified.payload))
    body = request_body[0].read()
    got = decode([*bytewise(body)[:100], body[100:]], verified, headers["x-amz-trailer"],
                 int(headers["x-amz-decoded-content-length"]))
    assert got == payload


def test_a_boto3_plain_put_carries_a_checked_checksum(clients: dict[str, Any]) -> None:
    wire = caught(lambda: clients["http"].put_object(Bucket="b", Key="k", Body=b"plain"))
    verifier = chunked.header_checksum(wire.headers)
    assert verifier is not None and verifier.name == "x-amz-checksum-crc32"
    verifier.update(b"plain")
    verifier.verify()
