"""`Range: bytes=...` parsing (RFC 9110 section 14.2).

A syntactically invalid header, or one in a unit other than bytes, is ignored and the whole
representation is sent, as the RFC asks. A valid header whose ranges all miss the representation
is unsatisfiable (416). Overlapping ranges are coalesced, so a request like `0-,0-,0-` cannot make
the server send a file many times over; and more than `MAX_RANGES` ranges are refused outright.
"""

from __future__ import annotations

import itertools
import re

MAX_RANGES = 32
_SPEC_RE = re.compile(r"(?:([0-9]+)-([0-9]*)|-([0-9]+))")  # RFC 9110: ASCII digits only
# Positions longer than this are past any file; int() of thousands of digits would be refused.
_MAX_DIGITS = 18


class RangeNotSatisfiable(Exception):
    """The Range header is valid but asks for nothing this representation has (or too much)."""


def parse_range(header: str, size: int) -> list[tuple[int, int]] | None:
    """Inclusive `(first, last)` byte ranges to send, or None to ignore the header."""
    unit, sep, specs = header.partition("=")
    if not sep or unit.strip().lower() != "bytes":
        return None
    parts = [part.strip() for part in specs.split(",")]
    if len(parts) > MAX_RANGES:
        raise RangeNotSatisfiable(f"more than {MAX_RANGES} ranges")
    ranges: list[tuple[int, int]] = []
    valid = 0
    for part in parts:
        if not part:
            continue  # RFC 9110 allows empty list elements: "bytes=0-1,,2-3"
        match = _SPEC_RE.fullmatch(part)
        if match is None:
            return None
        first, last, suffix = match.groups()
        valid += 1
        if suffix is not None:
            length = _number(suffix)
            if length > 0 and size > 0:
                ranges.append((max(size - length, 0), size - 1))
            continue
        start = _number(first)
        if last and _number(last) < start:
            return None  # an invalid int-range makes the whole header invalid
        if start < size:
            ranges.append((start, min(_number(last), size - 1) if last else size - 1))
    if not valid:
        return None
    if not ranges:
        raise RangeNotSatisfiable("no requested range overlaps the file")
    return _coalesce(ranges)


def _number(digits: str) -> int:
    return int(digits) if len(digits) <= _MAX_DIGITS else 10**_MAX_DIGITS


def _coalesce(ranges: list[tuple[int, int]]) -> list[tuple[int, int]]:
    ordered = sorted(ranges)
    if all(a[1] < b[0] for a, b in itertools.pairwise(ordered)):
        return ranges  # disjoint: keep the order the client asked for
    merged = [ordered[0]]
    for first, last in ordered[1:]:
        if first <= merged[-1][1] + 1:
            merged[-1] = (merged[-1][0], max(merged[-1][1], last))
        else:
            merged.append((first, last))
    return merged
