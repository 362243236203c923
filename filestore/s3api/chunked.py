"""aws-chunked request bodies, decoded as they stream, and the checksums bodies carry.

A body whose signature says `STREAMING-*` (`sigv4.Verified.payload`) comes in chunks, each line
ending in CRLF and SIZE in hex:

    streaming-signed            SIZE;chunk-signature=SIG / DATA / ... / 0;chunk-signature=SIG / ""
    streaming-unsigned-trailer  SIZE / DATA / ... / 0 / x-amz-checksum-crc32:BASE64 / ""
    streaming-signed-trailer    as signed, then the trailer, x-amz-trailer-signature:SIG / ""

Each chunk's signature chains from the previous one, the first from the request's own (AWS's
"Transferring Payload in Multiple Chunks"); a trailer holds the checksum `x-amz-trailer`
declared, of the decoded bytes ("Including Trailing Headers").

`ChunkedDecoder` is the sync core: `feed()` takes the bytes as they come off the network, cut
anywhere, and returns the payload bytes in them at once; it buffers one chunk-header or trailer
line at most (`MAX_LINE`), never a chunk's data. A chunk's signature is checked when the chunk
ends, so bytes already returned may belong to a chunk that fails: the caller writes them to a
temp file and drops it when `feed()` or `finish()` raises, as it does for any failed body.
`decode()` is its async shell over a body's iterator.

`header_checksum()` / `verify_checksum_header()` check the `x-amz-checksum-*` header of a body
sent whole the same way, as it streams. crc32 and the SHAs come from the standard library,
crc32c from `google-crc32c` (Google's, hardware-accelerated), crc64nvme (the AWS CLI's default
since 2.23) from `anycrc` (carry-less multiplication, GB/s); either missing, its checksum is
refused with `InvalidRequest` and the others still work.
"""

from __future__ import annotations

import base64
import binascii
import functools
import hashlib
import hmac
import re
import zlib
from collections.abc import AsyncIterable, AsyncIterator, Callable, Iterable, Mapping
from typing import Protocol, cast

from .sigv4 import EMPTY_SHA256, ChunkSigning, Verified

MAX_LINE = 4096  # a chunk header or trailer line; longer is malformed (it bounds the buffer)
MAX_TRAILERS = 16  # trailer lines
# x-amz-checksum-<name> understood here, and their digests' sizes
CHECKSUMS = {"crc32": 4, "crc32c": 4, "crc64nvme": 8, "sha1": 20, "sha256": 32}
_SIGNED_HEADER = re.compile(rb"([0-9a-fA-F]{1,15});chunk-signature=([0-9a-fA-F]{64})\r\n")
_UNSIGNED_HEADER = re.compile(rb"([0-9a-fA-F]{1,15})(?:;[^\r\n]*)?\r\n")
_HEX64 = re.compile(r"[0-9a-fA-F]{64}")


class S3PayloadError(Exception):
    """A body S3 would refuse: `code` and `status` are S3's."""

    def __init__(self, code: str, message: str, status: int) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message
        self.status = status


class _Hasher(Protocol):
    def update(self, data: bytes, /) -> None: ...
    def digest(self) -> bytes: ...


class _Crc:
    """A CRC as an int, extended by `extend(crc, data)`; its digest big-endian, as S3's."""

    def __init__(self, extend: Callable[[int, bytes], int], size: int) -> None:
        self._extend = extend
        self._size = size
        self._crc = 0  # the CRC of nothing, for all three

    def update(self, data: bytes) -> None:
        self._crc = int(self._extend(self._crc, data))

    def digest(self) -> bytes:
        return self._crc.to_bytes(self._size, "big")


@functools.cache
def _crc_extension(algorithm: str) -> Callable[[int, bytes], int]:
    """crc32c and crc64nvme come from libraries imported here, on first use, so that this module
    (and every other checksum) works without them: a checksum without its library is refused."""
    try:
        if algorithm == "crc32c":
            import google_crc32c

            return cast(Callable[[int, bytes], int], google_crc32c.extend)
        import anycrc

        model = anycrc.Model("CRC64-NVME")
        return lambda crc, data: int(model.calc(data, crc))
    except ImportError:
        raise S3PayloadError("InvalidRequest", f"The {algorithm.upper()} checksum is not "
                             "supported by this endpoint.", 400) from None


def new_checksum(algorithm: str) -> _Hasher:
    """An incremental hasher of one of `CHECKSUMS` (its digest as S3 base64-encodes it)."""
    if algorithm == "crc32":
        return _Crc(lambda crc, data: zlib.crc32(data, crc), 4)
    if algorithm in ("crc32c", "crc64nvme"):
        return _Crc(_crc_extension(algorithm), CHECKSUMS[algorithm])
    if algorithm in ("sha1", "sha256"):
        return hashlib.new(algorithm)
    raise S3PayloadError("InvalidRequest", f"Unknown checksum algorithm {algorithm!r}", 400)


class ChecksumVerifier:
    """The checksum a body must have: `update()` it with the body, then `verify()`."""

    def __init__(self, name: str, expected: bytes) -> None:
        self.name = name  # "x-amz-checksum-crc32"
        self.algorithm = name.removeprefix("x-amz-checksum-")
        self.expected = expected
        self._hasher = new_checksum(self.algorithm)

    def update(self, data: bytes) -> None:
        self._hasher.update(data)

    def verify(self) -> None:
        """`BadDigest` unless the bytes seen have the checksum."""
        if not hmac.compare_digest(self._hasher.digest(), self.expected):
            raise S3PayloadError("BadDigest", f"The {self.algorithm.upper()} you specified did "
                                 "not match the calculated checksum.", 400)

    @property
    def value(self) -> str:
        """The expected checksum as the header gave it (S3 echoes it in its answer)."""
        return base64.b64encode(self.expected).decode()


def verify_checksum_header(name: str, value: str) -> ChecksumVerifier:
    """The verifier of an `x-amz-checksum-<algorithm>: <base64>` header (or trailer):
    `InvalidRequest` for an algorithm not understood or a value not of its size."""
    name = name.strip().lower()
    try:
        expected = base64.b64decode(value.strip(), validate=True)
    except (binascii.Error, ValueError):
        expected = b""
    verifier = ChecksumVerifier(name, expected)  # refuses an algorithm not understood
    if len(expected) != CHECKSUMS[verifier.algorithm]:
        raise S3PayloadError("InvalidRequest", f"Value for {name} header is invalid.", 400)
    return verifier


def header_checksum(headers: Mapping[str, str] | Iterable[tuple[str, str]]
                    ) -> ChecksumVerifier | None:
    """The verifier of the request's `x-amz-checksum-*` header, if it has one (S3 allows one)."""
    pairs = headers.items() if isinstance(headers, Mapping) else headers
    found = [(name.lower(), value) for name, value in pairs
             if name.lower().startswith("x-amz-checksum-")
             and name.lower()[15:] in CHECKSUMS]
    if len(found) > 1:
        raise S3PayloadError("InvalidRequest", "Expecting a single x-amz-checksum- header. "
                             "Multiple checksum Types are not allowed.", 400)
    return verify_checksum_header(*found[0]) if found else None


async def decode(chunks: AsyncIterable[bytes], verified: Verified,
                 declared_trailer: str | None, decoded_length: int | None
                 ) -> AsyncIterator[bytes]:
    """The decoded payload of an aws-chunked body, as it arrives (see `ChunkedDecoder`)."""
    decoder = ChunkedDecoder(verified, declared_trailer, decoded_length)
    async for raw in chunks:
        for piece in decoder.feed(raw):
            yield piece
    decoder.finish()


_HEADER, _DATA, _DATA_END, _FINAL, _TRAILER, _DONE = range(6)


class ChunkedDecoder:
    """One aws-chunked body: `feed()` each read, `finish()` at its end; either raises
    `S3PayloadError` for a body that is malformed, short, long, or fails a check."""

    def __init__(self, verified: Verified, declared_trailer: str | None,
                 decoded_length: int | None) -> None:
        mode = verified.payload
        if not mode.startswith("streaming-"):
            raise ValueError(f"not an aws-chunked payload: {mode}")
        self._signing: ChunkSigning | None = None
        if mode in ("streaming-signed", "streaming-signed-trailer"):
            if verified.chunk_signing is None:
                raise ValueError("a signed aws-chunked payload needs its chunk signing")
            self._signing = verified.chunk_signing
            self._previous = verified.chunk_signing.seed_signature
        self._trailer = mode.endswith("-trailer")
        # A trailer mode's checksums, by trailer name; x-amz-trailer means nothing without one.
        self._checksums = _declared(declared_trailer) if self._trailer else {}
        self._decoded_length = decoded_length
        self._state = _HEADER
        self._line = bytearray()
        self._remaining = 0  # data bytes left in the current chunk
        self._total = 0  # payload bytes so far
        self._chunk_hash = hashlib.sha256()
        self._claimed = ""  # the current chunk's signature, as its header gave it
        self._trailers: dict[str, str] = {}  # name -> value, as received
        self._canonical_trailers = ""  # what the trailer signature covers: "name:value\n" each
        self._trailer_signature: str | None = None

    def feed(self, data: bytes) -> list[bytes]:
        """The payload bytes in `data` (slices of it, in order; none when it held only
        framing)."""
        out: list[bytes] = []
        pos, end = 0, len(data)
        while pos < end:
            if self._state == _DATA:
                piece = data[pos:pos + self._remaining]
                pos += len(piece)
                self._data(piece)
                out.append(piece)
                continue
            if self._state == _DONE:
                raise _malformed("there are bytes after the end of the aws-chunked body")
            # A line is looked for within what MAX_LINE leaves, so a body of no newlines is
            # refused after MAX_LINE bytes, not buffered.
            window = min(end, pos + MAX_LINE - len(self._line))
            newline = data.find(b"\n", pos, window)
            if newline < 0 and window < end:
                raise _malformed("a chunk header or trailer line is too long")
            stop = window if newline < 0 else newline + 1
            self._line += data[pos:stop]
            pos = stop
            if newline >= 0:
                line = bytes(self._line)
                self._line.clear()
                self._on_line(line)
        return out

    def finish(self) -> None:
        """The body ended: raises unless it was whole (its last CRLF may be missing)."""
        if self._state == _TRAILER and not self._line:
            self._end_trailers()
        elif self._state not in (_DONE, _FINAL) or self._line:
            raise S3PayloadError("IncompleteBody", "The request body terminated unexpectedly",
                                 400)
        if self._decoded_length is not None and self._total != self._decoded_length:
            raise S3PayloadError("IncompleteBody", "You did not provide the number of bytes "
                                 "specified by the x-amz-decoded-content-length header.", 400)

    def _data(self, piece: bytes) -> None:
        self._remaining -= len(piece)
        self._total += len(piece)
        for checksum in self._checksums.values():
            checksum.update(piece)
        if self._signing is not None:
            self._chunk_hash.update(piece)
        if self._remaining == 0:
            self._state = _DATA_END
            if self._signing is not None:
                self._check_chunk(self._chunk_hash.hexdigest())

    def _on_line(self, line: bytes) -> None:
        if self._state == _HEADER:
            self._on_header(line)
        elif self._state in (_DATA_END, _FINAL):
            if line != b"\r\n":
                raise _malformed("a chunk's data is longer than its size")
            self._state = _HEADER if self._state == _DATA_END else _DONE
        else:
            self._on_trailer(line)

    def _on_header(self, line: bytes) -> None:
        match = (_SIGNED_HEADER if self._signing is not None else _UNSIGNED_HEADER
                 ).fullmatch(line)
        if match is None:
            raise _malformed("a chunk header is malformed")
        size = int(match.group(1), 16)
        if self._decoded_length is not None and self._total + size > self._decoded_length:
            raise S3PayloadError("InvalidRequest", "The decoded body is longer than its "
                                 "x-amz-decoded-content-length header says.", 400)
        if self._signing is not None:
            self._claimed = match.group(2).decode().lower()
            self._chunk_hash = hashlib.sha256()
        if size:
            self._state, self._remaining = _DATA, size
            return
        if self._signing is not None:
            self._check_chunk(EMPTY_SHA256)
        self._state = _TRAILER if self._trailer else _FINAL

    def _check_chunk(self, data_sha256: str) -> None:
        signing = self._signing
        assert signing is not None
        expected = _sign(signing, "AWS4-HMAC-SHA256-PAYLOAD", self._previous, EMPTY_SHA256,
                         data_sha256)
        if not hmac.compare_digest(expected, self._claimed):
            raise S3PayloadError("SignatureDoesNotMatch", "The chunk signature we calculated "
                                 "does not match the signature you provided.", 403)
        self._previous = expected

    def _on_trailer(self, line: bytes) -> None:
        # Trailer lines end in CRLF; a bare LF is taken too (clients are not all alike here).
        text = line[:-2] if line.endswith(b"\r\n") else line[:-1]
        if not text:
            self._end_trailers()
            return
        name, sep, value = text.decode("latin-1").partition(":")
        name, value = name.strip().lower(), value.strip()
        if not sep or "\r" in value or self._trailer_signature is not None \
                or len(self._trailers) >= MAX_TRAILERS:
            raise _trailer_error("a trailer line is malformed")
        if name == "x-amz-trailer-signature":
            if self._signing is None or not _HEX64.fullmatch(value):
                raise _trailer_error("an x-amz-trailer-signature is out of place or malformed")
            self._trailer_signature = value.lower()
            return
        if name not in self._checksums or name in self._trailers:
            raise _trailer_error(f"the trailer {name} was not declared in x-amz-trailer (or "
                                 "came twice)")
        self._trailers[name] = value
        self._canonical_trailers += text.decode("latin-1") + "\n"

    def _end_trailers(self) -> None:
        if self._signing is not None:
            expected = _sign(self._signing, "AWS4-HMAC-SHA256-TRAILER", self._previous,
                             hashlib.sha256(self._canonical_trailers.encode("latin-1"))
                             .hexdigest())
            if self._trailer_signature is None or not hmac.compare_digest(
                    expected, self._trailer_signature):
                raise S3PayloadError("SignatureDoesNotMatch", "The trailer signature we "
                                     "calculated does not match the signature you provided.",
                                     403)
        for name, checksum in self._checksums.items():
            if name not in self._trailers:
                raise _trailer_error(f"the trailer {name} was declared but not sent")
            try:
                expected_digest = base64.b64decode(self._trailers[name], validate=True)
            except (binascii.Error, ValueError):
                raise _trailer_error(f"the trailer {name} is not base64") from None
            if not hmac.compare_digest(checksum.digest(), expected_digest):
                raise S3PayloadError("BadDigest", f"The {name[15:].upper()} you specified did "
                                     "not match the calculated checksum.", 400)
        self._state = _DONE


def _declared(declared_trailer: str | None) -> dict[str, _Hasher]:
    """The checksums `x-amz-trailer` names (comma-separated), each a hasher to feed."""
    checksums: dict[str, _Hasher] = {}
    for name in (declared_trailer or "").split(","):
        name = name.strip().lower()
        if not name:
            continue
        if not name.startswith("x-amz-checksum-"):
            raise S3PayloadError("InvalidRequest", f"The trailer {name} is not supported: "
                                 "x-amz-trailer names an x-amz-checksum-* header.", 400)
        checksums[name] = new_checksum(name.removeprefix("x-amz-checksum-"))
    return checksums


def _sign(signing: ChunkSigning, algorithm: str, *lines: str) -> str:
    string_to_sign = "\n".join((algorithm, signing.amz_date, signing.scope, *lines))
    return hmac.new(signing.signing_key, string_to_sign.encode(), hashlib.sha256).hexdigest()


def _malformed(detail: str) -> S3PayloadError:
    return S3PayloadError("IncompleteBody", f"The aws-chunked body is malformed: {detail}", 400)


def _trailer_error(detail: str) -> S3PayloadError:
    return S3PayloadError("MalformedTrailerError", "The request contained trailing data that "
                          f"was not well-formed: {detail}", 400)
