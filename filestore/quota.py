"""An account's quota: how many bytes a PUT (or an S3 upload's parts) may still store at a
path of the account's, read in the transaction that records them."""

from __future__ import annotations

from .registry import Tables, usage_counter


def quota_room(tables: Tables, path: str) -> int | None:
    """How large the file at `path` may be within its account's quota (None: no quota). A
    path's account is its first segment, if that names one; the bytes the file holds now are
    the account's to reuse."""
    account_id, slash, _ = path.partition("/")
    account = tables.accounts.get(account_id) if slash else None
    if account is None or not account.quota:
        return None
    used = tables.counters.get(usage_counter(account.id, "bytes"))
    existing = tables.files.get(path)
    return account.quota - used + (existing.size if existing is not None else 0)


def quota_text(path: str, size: int | None, room: int) -> str:
    what = f"{size:,} bytes" if size is not None else "this body"
    return (f"{what} at {path!r} would take its account past its quota "
            f"({max(room, 0):,} bytes left)")
