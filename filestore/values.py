"""Config values: the parsers every key is read with, and the text a value is shown as.

Each parser takes what TOML or the environment gives (a string, a number, a bool, a list) and
returns the parsed value, or raises `ValueError` with what was expected ("a size like ..."),
which `config.py` turns into one line naming the key and the value.
"""

from __future__ import annotations

import base64
import binascii
import math
import os
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

_SIZE_UNITS = {
    "": 1, "b": 1,
    "kb": 1000, "mb": 1000**2, "gb": 1000**3, "tb": 1000**4,
    "kib": 1024, "mib": 1024**2, "gib": 1024**3, "tib": 1024**4,
}
_SIZE_RE = re.compile(r"\s*([0-9]+(?:\.[0-9]+)?)\s*([a-zA-Z]*)\s*\Z")
_DURATION_UNITS = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400}
_DURATION_PART_RE = re.compile(r"([0-9]+(?:\.[0-9]+)?)(ms|s|m|h|d)")


MAX_SIZE = 2**60  # 1 EiB: beyond any disk, and far from float trouble
MAX_DURATION = 10 * 365 * 86400.0  # ten years


def parse_size(value: Any) -> int:
    """`"10GiB"`, `"512MB"`, `"0"` or a plain integer number of bytes."""
    if isinstance(value, bool):
        raise ValueError("a size like \"512MiB\" or \"10GiB\"")
    if isinstance(value, int):
        size = value
    else:
        match = _SIZE_RE.match(str(value))
        unit = match.group(2).lower() if match else None
        if not match or unit not in _SIZE_UNITS:
            raise ValueError(
                "a size like \"512MiB\" or \"10GiB\" (units B, KB, MB, GB, TB, KiB..TiB)")
        number = float(match.group(1)) * _SIZE_UNITS[unit]
        size = int(number) if number <= MAX_SIZE else MAX_SIZE + 1
    if not 0 <= size <= MAX_SIZE:
        raise ValueError("a size from 0 bytes to 1 EiB")
    return size


def parse_duration(value: Any) -> float:
    """`"10m"`, `"1h30m"`, `"500ms"`, `"0s"` or a plain number of seconds."""
    if isinstance(value, bool):
        raise ValueError("a duration like \"30s\", \"10m\" or \"1h\"")
    if isinstance(value, int | float):
        seconds = float(value) if abs(value) < 1e300 else math.inf
    else:
        text = str(value).strip().lower()
        parts = _DURATION_PART_RE.findall(text)
        if re.fullmatch(r"[0-9]+(\.[0-9]+)?", text):
            seconds = float(text)
        elif text and "".join(n + u for n, u in parts) == text:
            seconds = sum(float(n) * _DURATION_UNITS[u] for n, u in parts)
        else:
            raise ValueError(
                "a duration like \"30s\", \"10m\", \"1h30m\" (units ms, s, m, h, d)")
    if not 0 <= seconds <= MAX_DURATION:
        raise ValueError("a duration from 0 seconds to ten years")
    return seconds


def parse_bool(value: Any) -> bool:
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in ("true", "1", "yes", "on"):
        return True
    if text in ("false", "0", "no", "off"):
        return False
    raise ValueError("true or false")


def int_between(low: int, high: int) -> Callable[[Any], int]:
    def parse(value: Any) -> int:
        if isinstance(value, bool):
            raise ValueError(f"a whole number from {low} to {high}")
        try:
            number = int(str(value).strip()) if not isinstance(value, int) else value
        except ValueError:
            raise ValueError(f"a whole number from {low} to {high}") from None
        if not low <= number <= high:
            raise ValueError(f"a whole number from {low} to {high}")
        return number

    return parse


def size_at_least(low: int, why: str) -> Callable[[Any], int]:
    def parse(value: Any) -> int:
        size = parse_size(value)
        if size < low:
            raise ValueError(f"a size of at least {why}")
        return size

    return parse


def one_of(*choices: str) -> Callable[[Any], str]:
    def parse(value: Any) -> str:
        if value not in choices:
            raise ValueError("one of " + ", ".join(f'"{c}"' for c in choices))
        return str(value)

    return parse


def parse_path(value: Any) -> str:
    """A directory: '~' and '~user' are expanded now, so one that cannot be is a config error."""
    text = parse_str(value)
    if "\0" in text:
        raise ValueError("a path without NUL characters")
    try:
        return str(Path(text).expanduser()) if text.startswith("~") else text
    except RuntimeError:
        raise ValueError("a path whose '~user' names a user with a home directory") from None


def parse_str(value: Any) -> str:
    if not isinstance(value, str):
        raise ValueError("a string")
    return value


def parse_header_value(value: Any) -> str:
    """An HTTP header value: printable ASCII (tabs and spaces inside), no line breaks."""
    text = parse_str(value).strip()
    if not re.fullmatch(r"[\x20-\x7e\t]*", text):
        raise ValueError('a header value of printable ASCII, like "public, max-age=3600"')
    return text


def parse_header_value_or_unset(value: Any) -> str | None:
    return parse_header_value(value)


def parse_dirs(value: Any) -> tuple[str, ...]:
    """Absolute directories: a TOML array of strings, or one string of them separated by ":"
    (as an environment variable gives them)."""
    items = value.split(":") if isinstance(value, str) else value
    if not isinstance(items, list | tuple) or not all(isinstance(i, str) for i in items):
        raise ValueError('a list of absolute directories like ["/srv/cold"]')
    dirs = tuple(parse_path(item) for item in items if item)
    if not all(os.path.isabs(d) for d in dirs):
        raise ValueError('a list of absolute directories like ["/srv/cold"]')
    return dirs


def parse_listen(value: Any) -> str:
    """Empty, or "HOST:PORT" (an IPv6 host in brackets: "[::1]:8081")."""
    text = parse_str(value).strip()
    if not text:
        return text
    if not re.fullmatch(r"(\[[0-9a-fA-F:.]+\]|[A-Za-z0-9.-]+):[0-9]{1,5}", text) \
            or not 0 < int(text.rpartition(":")[2]) <= 65535:
        raise ValueError('"" or an address like "127.0.0.1:8081"')
    return text


# A URL path of segments of RFC 3986 path characters without "%": it goes into X-Accel-Redirect
# as it is, so it must need no encoding, and "." / ".." segments would make nginx refuse it.
_URL_PREFIX_RE = re.compile(r"/(?:[A-Za-z0-9._~!$&'()*+,;=:@-]+/)*")


def parse_url_prefix(value: Any) -> str:
    """Empty, or an absolute URL path that starts and ends with "/" (an nginx location)."""
    text = parse_str(value)
    segments = text.strip("/").split("/")
    if text and (not _URL_PREFIX_RE.fullmatch(text) or "." in segments or ".." in segments):
        raise ValueError('"" or a URL path that starts and ends with "/", like "/_filestore/"')
    return text


def parse_duration_or_never(value: Any) -> float | None:
    """A duration, or "never" (None)."""
    if isinstance(value, str) and value.strip().lower() == "never":
        return None
    try:
        return parse_duration(value)
    except ValueError:
        raise ValueError("a duration like \"0s\" or \"1h\", or \"never\"") from None


def _host_url(item: str, expected: str) -> str:
    """An http(s) URL of a host (no user, query or fragment), without a trailing "/"."""
    try:
        parts = urlsplit(item.strip())
        parts.port  # noqa: B018 (raises on a port that is not a number)
    except ValueError:
        raise ValueError(f"{expected}; {item!r} is not a URL") from None
    if parts.scheme not in ("http", "https") or not parts.hostname or parts.username \
            or parts.password or parts.query or parts.fragment:
        raise ValueError(f"{expected}; {item!r} is not an http(s) URL of a host")
    return item.strip().rstrip("/")


def parse_url_list(value: Any) -> tuple[str, ...]:
    """http(s) URLs (a scheme and a host, no user, query or fragment): a TOML array of
    strings, or one string of them separated by spaces or commas (an environment variable)."""
    items = value.replace(",", " ").split() if isinstance(value, str) else value
    expected = 'a list of URLs like ["https://s3.example.com"]'
    if not isinstance(items, list | tuple) or not all(isinstance(i, str) for i in items):
        raise ValueError(expected)
    return tuple(_host_url(item, expected) for item in items)


def parse_url_or_empty(value: Any) -> str:
    """Empty, or one http(s) URL of a host ("http://10.0.0.5:8080")."""
    text = parse_str(value).strip()
    return _host_url(text, 'an URL like "http://10.0.0.5:8080"') if text else ""


# A node's name: recorded as the holder of files, shown in `cluster status`, in metric labels.
_NODE_NAME_RE = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9._-]{0,62}[A-Za-z0-9])?")


def parse_node_name(value: Any) -> str:
    """Empty (the host name), or a name of letters, digits, ".", "_" and "-" (64 at most)."""
    text = parse_str(value).strip()
    if text and not _NODE_NAME_RE.fullmatch(text):
        raise ValueError('a node name of at most 64 letters, digits, ".", "_" or "-", '
                         'like "node-1"')
    return text


# Remote names are recorded per file and appear in env names (FILESTORE_REMOTES__NAME__KEY),
# metric labels and URLs: lower case, digits, and single "-" or "_" between them.
_REMOTE_NAME_RE = re.compile(r"[a-z0-9]+(?:[-_][a-z0-9]+)*")
MAX_REMOTE_NAME = 32


def parse_remote_name(value: Any) -> str:
    text = parse_str(value)
    if len(text) > MAX_REMOTE_NAME or not _REMOTE_NAME_RE.fullmatch(text):
        raise ValueError(f"a remote name of at most {MAX_REMOTE_NAME} characters: lower-case "
                         "letters and digits, with single - or _ between them")
    return text


_LABEL = r"[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?"
_DOMAIN_RE = re.compile(rf"(?:{_LABEL}\.)+{_LABEL}")


def parse_domain(value: Any) -> str:
    """Empty, or a DNS name such as "s3.example.com" (lower case, at least two labels)."""
    text = parse_str(value).strip().lower().rstrip(".")
    if text and (len(text) > 253 or not _DOMAIN_RE.fullmatch(text)):
        raise ValueError('"" or a host name like "s3.example.com"')
    return text


_REGION_RE = re.compile(r"[a-z0-9]+(?:-[a-z0-9]+)*")


def parse_region(value: Any) -> str:
    """A region name as AWS writes one ("us-east-1", "eu-central-1"; any such word here)."""
    text = parse_str(value)
    if not 0 < len(text) <= 64 or not _REGION_RE.fullmatch(text):
        raise ValueError('a region name like "us-east-1"')
    return text


# An account's own remote is recorded as "ACCOUNT:NAME": no configured name holds a ":", so the
# two never collide, and the account a remote belongs to is read off its name.
ACCOUNT_REMOTE_SEP = ":"


def account_remote(account: str, name: str) -> str:
    """The recorded name of the account's remote `name`."""
    return f"{account}{ACCOUNT_REMOTE_SEP}{name}"


def remote_account(remote: str) -> str | None:
    """The account whose own remote this is (None: a configured remote)."""
    account, sep, _ = remote.partition(ACCOUNT_REMOTE_SEP)
    return account if sep else None


def parse_path_prefix(value: Any) -> str:
    """A plan rule's path prefix, compared with a file's normalised path as text: so it never
    starts with "/" and has no "." or ".." segments, or it could never match."""
    text = parse_str(value)
    segments = text.split("/")
    if text.startswith("/") or "\0" in text or any(s in (".", "..") for s in segments) \
            or "//" in text:
        raise ValueError('a path prefix like "recordings/" (no leading "/", no "." or ".." '
                         "segments)")
    return text


def parse_type_glob(value: Any) -> str:
    """A content-type glob like "audio/*" (fnmatch, case-insensitive; parameters ignored)."""
    text = parse_str(value).strip().lower()
    if text and not re.fullmatch(r"[a-z0-9*?!.+\[\]_-]+/[a-z0-9*?!.+\[\]_-]+", text):
        raise ValueError('a content-type glob like "audio/*" or "application/pdf"')
    return text


# Slower caps would make one read (a 64 KiB chunk, a 1 MiB block) wait longer than a store's
# connection keeps waiting for us; 64 KiB/s is half a megabit.
MIN_BANDWIDTH = 64 * 1024


def parse_bandwidth(value: Any) -> int:
    """Bytes per second: 0 (no cap), or a size like "2MiB" ("2MiB/s" too) of at least 64KiB."""
    expected = '0 (no cap) or bytes per second like "2MiB" or "500KiB/s", at least 64KiB'
    text = value.strip() if isinstance(value, str) else value
    if isinstance(text, str) and text.lower().endswith("/s"):
        text = text[:-2]
    try:
        rate = parse_size(text)
    except ValueError:
        raise ValueError(expected) from None
    if 0 < rate < MIN_BANDWIDTH:
        raise ValueError(expected)
    return rate


_WINDOW_RE = re.compile(r"\s*([0-9]{1,2}):([0-9]{2})\s*-\s*([0-9]{1,2}):([0-9]{2})\s*\Z")
_DAY = 24 * 60


def hours_spans(value: Any) -> tuple[tuple[int, int], ...]:
    """`upload.hours` as (start, end) minutes after midnight, local time: windows like
    "01:00-06:00" separated by commas (or a TOML array of them); one whose end comes before its
    start wraps midnight ("22:00-02:00"); an end of "24:00" is midnight. Empty: none (always)."""
    expected = ('windows of local time like "01:00-06:00" (several separated by commas; '
                '"22:00-02:00" wraps midnight), or "" for always')
    if isinstance(value, list | tuple) and all(isinstance(item, str) for item in value):
        items = list(value)
    elif isinstance(value, str):
        items = value.split(",")
    else:
        raise ValueError(expected)
    spans = []
    for item in filter(str.strip, items):  # a stray comma is no window
        match = _WINDOW_RE.match(item)
        if not match:
            raise ValueError(f"{expected}; {item.strip()!r} is not a window HH:MM-HH:MM")
        hour, minute, end_hour, end_minute = map(int, match.groups())
        start, end = hour * 60 + minute, end_hour * 60 + end_minute
        if hour > 23 or minute > 59:
            raise ValueError(f"{expected}; '{match[1]}:{match[2]}' is not a time of day")
        if end_minute > 59 or end > _DAY:
            raise ValueError(f"{expected}; '{match[3]}:{match[4]}' is not a time of day")
        if start == end:
            raise ValueError(f"{expected}; {item.strip()!r} starts where it ends")
        spans.append((start, end))
    return tuple(spans)


def parse_hours(value: Any) -> str:
    """`upload.hours`, checked (see `hours_spans`) and written the one way: "01:00-06:00, ..."."""
    return ", ".join(f"{start // 60:02}:{start % 60:02}-{end // 60:02}:{end % 60:02}"
                     for start, end in hours_spans(value))


def parse_content_md5(value: str) -> str:
    """A `Content-MD5` header (the base64 of a 16-byte MD5) as hex; ValueError otherwise."""
    try:
        digest = base64.b64decode(value.strip(), validate=True)
    except (binascii.Error, ValueError):
        digest = b""
    if len(digest) != 16:
        raise ValueError("Content-MD5 must be the base64 of a 16-byte MD5 digest")
    return digest.hex()


def value_text(value: Any, kind: Callable[[Any], Any]) -> str:
    """A parsed value as a config file would hold it, for a form field: `kind` is the key's
    parser (a duration prints as "10m", never as "600.0")."""
    if value is None:
        return "never"
    if isinstance(value, bool):
        return "true" if value else "false"
    if kind in (parse_duration, parse_duration_or_never):
        seconds = float(value)
        for unit, size in (("d", 86400), ("h", 3600), ("m", 60), ("s", 1)):
            if seconds >= size and seconds % size == 0:
                return f"{int(seconds // size)}{unit}"
        return f"{int(seconds * 1000)}ms" if seconds < 1 and seconds else f"{seconds:g}s"
    return str(value)
