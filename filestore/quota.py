"""An account's quota: how many bytes a PUT (or an S3 upload's parts) may still store at a
path of the account's, read in the transaction that records them."""

from __future__ import annotations

from .registry import Tables, Upload, usage_counter


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


def part_room(tables: Tables, upload: Upload, number: int) -> tuple[int, int | None]:
    """For part `number` of an S3 multipart `upload`: the bytes of the upload's other parts,
    and how large the part may be within the account's quota (None: no quota). The parts of
    every open upload of the account count against it, not the upload's own alone: they hold
    the account's bytes until completed or aborted, and two uploads at once must not pass the
    quota together. A part of `number` sent before is replaced, so its bytes are not counted."""
    account_id = upload.path.partition("/")[0]  # the account `quota_room` finds, if any
    held = tables.uploads.part_bytes(account_id + "/", upload.upload_id, number)
    room = quota_room(tables, upload.path)
    return held.get(upload.upload_id, 0), None if room is None else room - sum(held.values())


def quota_text(path: str, size: int | None, room: int) -> str:
    what = f"{size:,} bytes" if size is not None else "this body"
    return (f"{what} at {path!r} would take its account past its quota "
            f"({max(room, 0):,} bytes left)")
