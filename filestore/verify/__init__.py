"""`filestore verify`: the registry against the bytes it describes, and the repairs that are safe.

What is compared, row by row in path order (a page of rows at a time: a million files cost a page
of memory, and memory grows only with the problems found):

- every byte in files/ and cache/ against the row's size and SHA-256 (1 MiB blocks);
- the row's inode against the bytes reads find first (files/, then cache/);
- the cache index against the cache area;
- with `--remote`, the listing of every configured remote against the rows, merged in path order
  as they arrive (one listing per remote, each in path order): each row against the object in the
  remote its row records, by size, and SHA-256 where the store reports one (nothing is downloaded,
  except to prove a cloud copy before a repair relies on it);

then the files/ and cache/ trees, for bytes no row describes.

A server may be running on the same data directory, so the registry changes under the check. A
problem seen outside a transaction is only a suspicion: it is confirmed inside a write transaction
against the current row and fresh stats of the files (every filestore process moves bytes only
inside one, so holding the write lock freezes them), and repaired in that same transaction. A row
that changed meanwhile is looked at again; a remote finding is confirmed with a HEAD first.

What each finding means, and what `--repair` does about it. Nothing is ever deleted that exists
nowhere else: bytes that must leave their place go to `quarantine/<run>/` in the data directory.

- missing: a file not uploaded has no bytes on disk. Repair: the row points at its cloud copy if
  that is proven the same (downloaded and hashed); else no copy is left anywhere, and the row and
  its queued upload are dropped.
- corrupt: bytes in files/ differ from their row (size or SHA-256). Repair: quarantined when a
  good copy exists elsewhere (cache, cloud); the only bytes of a file stay where they are.
- corrupt-cache: bytes in cache/ differ from their row. Repair: quarantined and unindexed; the
  next read downloads the file again.
- cache-entry: an index row without its bytes, or for a file not uploaded (eviction would drop
  its only bytes). Repair: the index row goes, never the bytes.
- cache-unindexed: good cache bytes of an uploaded file the index does not list (never evicted).
  Repair: indexed.
- inode: the row's inode is not its bytes' (a data directory restored from a copy). Repair:
  recorded.
- remote-missing, remote-different: an uploaded file's object is missing from the remote its row
  records, or of another size or checksum. Repair: good local bytes go to files/, the row is local
  again and its upload due now, to the remote the storage plan routes it to now (none if the plan
  keeps it local); with no good local bytes, another remote holding the same bytes (proven by
  download; the planned remote first) is recorded as the file's; else no copy is left, and the row
  is dropped. A file not uploaded whose local bytes are lost is pointed the same way at a remote
  holding the same bytes (the one its row records first): after a `filestore restore`, that is how
  files uploaded since the backup find their remote again.
- orphan, orphan-cache: bytes in files/ (cache/) that no row describes. Repair: adopted as a PUT
  would store them (upload queued); the leftover of an answered DELETE whose remote delete is
  still queued is removed; a name that clashes with registered files is quarantined.
- remote-unknown: an object under a remote's prefix no row claims (the row of its path records
  another remote, or there is none). Left: verify never deletes a remote object.
- remote-not-configured: the row records the file in a remote the config does not name: its cloud
  copy can be neither read nor deleted. Left: the config needs that remote back.
- unsafe-link, unreadable: a symlink leading outside the data directory; a file that cannot be
  read. Left.

The package, along the steps of a check:

- `check.py`: `Verifier`, the run: rows in path order beside the remotes' listings, each row
  looked at, diagnosed, confirmed, then reported and repaired in one write transaction;
- `scan.py`: what is read from the disk and the registry (rows a page at a time, bytes stat-ed
  and hashed, the names no row describes);
- `diagnose.py`: the diagnosis, a pure function of what was seen (no I/O);
- `remote.py`: the remotes for blocking code (`remote_view`, `RemoteView`) and their listings;
- `repair.py`: the repairs, inside the confirming transaction;
- `orphans.py`: what no row describes (orphan bytes, remote-unknown objects);
- `findings.py`: `Finding` and the `Report`, as text and as JSON.
"""

from .check import Verifier
from .diagnose import UNCHECKED, Cloud
from .findings import Finding, Report
from .remote import RemoteView, remote_view

__all__ = ["UNCHECKED", "Cloud", "Finding", "RemoteView", "Report", "Verifier", "remote_view"]
