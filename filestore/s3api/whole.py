"""Whole numbers in S3 requests: lengths, part numbers, counts, expiries, as headers or query
parameters carry them. One parser (`whole_number`), each caller refusing with its own error;
and the counts of a listing (`count`: max-keys, max-parts, max-uploads, markers)."""

from __future__ import annotations

from .errors import S3Error

# The most digits a value may have: past any length or time here, within the registry's 64-bit
# integers (and never an int() of thousands of digits, which Python refuses anyway).
MAX_DIGITS = 18


def whole_number(raw: str | None, digits: int = MAX_DIGITS) -> int | None:
    """`raw` as a whole number: ASCII digits only (`str.isdigit()` also takes "²" and "٣"),
    1 to `digits` of them; None for anything else, absent included."""
    if raw is None or not 0 < len(raw) <= digits or not raw.isascii() or not raw.isdigit():
        return None
    return int(raw)


def count(raw: str | None, name: str, high: int, *, low: int = 1) -> int:
    """A count of a listing's query (`high` when absent, at most `high`): 400 InvalidArgument
    below `low` or not a whole number of at most 9 digits (S3's are 32-bit integers)."""
    if raw is None:
        return high
    value = whole_number(raw, 9)
    if value is None or value < low:
        raise S3Error("InvalidArgument", f"{name} must be a whole number", 400)
    return min(value, high)
