"""Pins: path prefixes whose files the cache keeps, never evicted (`filestore cache pin`).

A pin is a prefix, recorded in the registry (`registry/pins.py`), not a mark on files: the entries
under it when it is set are pinned then, and every entry that enters the cache under it later (a
fill, an uploaded file's move into the cache) is pinned as it is indexed, so a pinned prefix stays
whole as files come and go. Pinning does not download anything: `warm.py` brings the pinned
files that only the cloud has into the cache (the CLI and the API warm right after pinning).

The pinned bytes count toward `cache.max_size`. A pin is refused when the files under all the
pins, this one with them, would not fit: every file counts, also one not uploaded yet (it enters
the cache once its upload is verified) and one kept local (backup mode: it never does; the
check is conservative there). The sums are index ranges of the pinned prefixes, paid when a pin
is set, never by a read. A file written under a pin later is pinned only while the pinned bytes
stay within `cache.max_size`; beyond, it is an ordinary entry, so the bound always holds.

Unpinning removes the prefix; its entries become ordinary ones (evictable) unless another pin
still covers them. Entries are marked a page at a time (`_BATCH` a transaction), so pinning a
large prefix never holds the registry's write lock for long.
"""

from __future__ import annotations

import dataclasses
import time
from typing import Any

from .. import paths
from ..errors import BadRequest, Conflict, NotFound
from ..registry import Tables
from ..stats import size_text
from ..store import Store

_BATCH = 1000


class PinDoesNotFit(Conflict):
    """Pinning would take the pinned bytes past `cache.max_size` (409)."""

    code = "pin_does_not_fit"

    def __init__(self, detail: str, needed: int, max_size: int) -> None:
        super().__init__(detail)
        self.needed = needed  # bytes under every pin, this one with them
        self.max_size = max_size

    @property
    def missing(self) -> int:
        return self.needed - self.max_size


@dataclasses.dataclass(frozen=True)
class Pinned:
    prefix: str
    new: bool  # False: it was pinned already
    files: int  # files under the prefix
    bytes: int
    marked: int  # cache entries pinned now (already cached)

    def public(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def pin_prefix(raw: str) -> str:
    """A prefix to pin: a listing's prefix, not empty (400 otherwise)."""
    prefix = paths.normalize_prefix(raw)
    if not prefix:
        raise BadRequest("give a prefix to pin (everything is what a large enough "
                         "cache.max_size keeps)")
    return prefix


def pin(store: Store, raw: str) -> Pinned:
    """Pin `raw` if what it adds fits; refused with `PinDoesNotFit` otherwise. Blocking."""
    prefix = pin_prefix(raw)
    registry, max_size = store.registry, store.settings.cache.max_size
    with registry.transaction() as tx:
        pinned = [p.prefix for p in tx.pins.all()]
        files, size = tx.pins.files_under([prefix])
        if prefix not in pinned:
            _check_fits(tx, prefix, pinned, max_size)
            new = tx.pins.add(prefix, time.time())
        else:
            new = False
        tx.pins.set_limit(max_size)
    marked, after = 0, ""
    while True:
        with registry.transaction() as tx:
            if tx.pins.get(prefix) is None:
                break  # unpinned meanwhile: leave the rest alone
            count, last = tx.cache.pin_under(prefix, after, _BATCH)
        marked += count
        if last is None:
            break
        after = last
    return Pinned(prefix, new, files, size, marked)


def _check_fits(tx: Tables, prefix: str, pinned: list[str], max_size: int) -> None:
    _, held = tx.pins.files_under(pinned)
    _, needed = tx.pins.files_under([*pinned, prefix])
    if needed <= max_size:
        return
    raise PinDoesNotFit(
        f"cannot pin {prefix!r}: the files under it add {size_text(needed - held)} to the "
        f"{size_text(held)} pinned already, {size_text(needed)} in all, over cache.max_size "
        f"({size_text(max_size)}) by {size_text(needed - max_size)}", needed, max_size)


def unpin(store: Store, raw: str) -> int:
    """Remove the pin `raw`: how many entries became ordinary (evictable) ones (those another
    pin covers stay pinned). 404 if it was not pinned. Blocking."""
    prefix, registry = paths.normalize_prefix(raw), store.registry
    with registry.transaction() as tx:
        if not tx.pins.remove(prefix):
            raise NotFound(f"{prefix!r} is not pinned")
    released, after = 0, ""
    while True:
        with registry.transaction() as tx:
            if tx.pins.get(prefix) is not None:
                break  # pinned again meanwhile
            keep = [p.prefix for p in tx.pins.all()]
            count, last = tx.cache.unpin_under(prefix, keep, after, _BATCH)
        released += count
        if last is None:
            return released
        after = last
    return released


def listing(tx: Tables) -> list[dict[str, Any]]:
    """Every pin with the files and bytes under it and how much of that is cached (pinned
    entries): a range of the files and one of the index per pin."""
    items = []
    for pin in tx.pins.all():
        files, size = tx.pins.files_under([pin.prefix])
        entries, cached = tx.cache.pinned_under(pin.prefix)
        items.append({**pin.public(), "files": files, "bytes": size, "cached_files": entries,
                      "cached_bytes": cached})
    return items
