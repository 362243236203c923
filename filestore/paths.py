"""The one place that validates and normalises a file path.

A file path is what follows `/files/` in a URL, already percent-decoded once by the server. It is
also the local file name below the data directory and, later, the remote key below the remote's
prefix, so a path accepted here must be safe in all three roles.
"""

from __future__ import annotations

import os
import re
import unicodedata
from pathlib import Path
from urllib.parse import unquote

from .errors import BadPath

MAX_PATH_BYTES = 1024
MAX_SEGMENT_BYTES = 255  # NAME_MAX on Linux filesystems
# Decoding more often than this is a client trying to smuggle something past a decoder.
_MAX_DECODE_ROUNDS = 4


# Characters that change how a name looks without being seen: the bidirectional controls (a
# name "invoice\u202Efdp.exe" shows as "invoiceexe.pdf") and the zero-width spaces. The joiners
# U+200C and U+200D stay allowed: Persian and Indic words and emoji sequences need them.
INVISIBLE = frozenset("\u061c\u200b\u200e\u200f\u202a\u202b\u202c\u202d\u202e\u2060\u2066\u2067"
                      "\u2068\u2069\ufeff\u180e")

# Printable ASCII without "%" and "\\": such a path needs no decoding and no Unicode checks.
_PLAIN_ASCII = re.compile(r"[\x20-\x24\x26-\x5b\x5d-\x7e]+")


def normalize(raw: str) -> str:
    """Return the canonical form of `raw`, or raise `BadPath` saying what is wrong with it.

    Rejected: empty paths, absolute paths, `.` and `..` segments, empty segments (`a//b`, a
    trailing `/`), backslashes, NUL and other control characters, undecodable bytes, and paths
    over 1024 bytes, bidirectional controls and zero-width spaces (`INVISIBLE`); and any of
    these hidden behind one or more further rounds of percent-encoding, since a proxy, a shell
    script or S3 tooling may decode the name again.
    """
    if not raw:
        raise BadPath("the path is empty")
    if _PLAIN_ASCII.fullmatch(raw):
        _check_segments(raw)  # the common case, on every GET: skip the decoding rounds
        return raw
    # Limits apply to the stored (NFC) form, which can be longer than what was sent.
    raw = unicodedata.normalize("NFC", raw)
    seen = raw
    for _ in range(_MAX_DECODE_ROUNDS):
        _check(seen)
        try:
            decoded = unquote(seen, errors="strict") if "%" in seen else seen
        except UnicodeDecodeError:
            raise BadPath("the path percent-decodes to bytes that are not UTF-8") from None
        if decoded == seen:
            break
        seen = decoded
    else:
        raise BadPath("the path is percent-encoded too many times")
    return raw


def _check(path: str) -> None:
    if len(path.encode("utf-8", "surrogatepass")) > MAX_PATH_BYTES:
        raise BadPath(f"the path is longer than {MAX_PATH_BYTES} bytes")
    if "\ufffd" in path:
        raise BadPath("the path is not valid UTF-8")
    for char in path:
        if unicodedata.category(char) in ("Cc", "Cs"):
            raise BadPath(f"the path contains the control character {char!r}")
        if char in INVISIBLE:
            raise BadPath(f"the path contains the invisible character U+{ord(char):04X} (a "
                          "bidirectional control or a zero-width space)")
        code = ord(char)
        if 0xFDD0 <= code <= 0xFDEF or (code & 0xFFFE) == 0xFFFE:
            # Unicode noncharacters (U+FFFE, U+10FFFF, ...) are never text; U+10FFFF also
            # bounds the registry's prefix scans, so no path may contain it.
            raise BadPath(f"the path contains the noncharacter U+{code:04X}")
    if "\\" in path:
        raise BadPath("the path contains a backslash")
    _check_segments(path)


def _check_segments(path: str) -> None:
    if len(path) > MAX_PATH_BYTES:  # (characters <= bytes; the byte count is checked before)
        raise BadPath(f"the path is longer than {MAX_PATH_BYTES} bytes")
    if path.startswith("/"):
        raise BadPath("the path is absolute")
    for segment in path.split("/"):
        if segment == "":
            raise BadPath("the path has an empty segment ('//' or a trailing '/')")
        if segment in (".", ".."):
            raise BadPath(f"the path has a {segment!r} segment")
        if len(segment.encode("utf-8")) > MAX_SEGMENT_BYTES:
            raise BadPath(f"a path segment is longer than {MAX_SEGMENT_BYTES} bytes")


def normalize_prefix(raw: str) -> str:
    """A listing prefix: like a path, but it may be empty and may end with `/`."""
    if raw == "":
        return ""
    normalize(raw.removesuffix("/") or ".")
    return unicodedata.normalize("NFC", raw)


def resolve_below(root: Path, path: str) -> Path:
    """`root/path`, refusing if a symlink inside `root` would lead the result outside it.

    `path` must already have passed `normalize`. `root` must be absolute and resolved.
    """
    full = root / path
    real = os.path.realpath(full)
    if real != str(full) and not real.startswith(str(root) + os.sep):
        raise BadPath("the path leads outside the data directory")
    return full
