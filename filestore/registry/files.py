"""The files table (what every file is and where it lives) and the intents table (the crash-safe
half of a PUT or a DELETE, see `store.py`)."""

from __future__ import annotations

import dataclasses
import sqlite3
import time
from typing import Any

from .counters import MAX_CHAR, remote_counter_names


@dataclasses.dataclass(frozen=True)
class FileRecord:
    path: str
    size: int
    sha256: str
    content_type: str
    created: float
    modified: float
    location: str = "local"
    # Bumped by every PUT of the path, so work started for an older version can tell it is stale.
    version: int = 1
    # Inode of the local file this row describes: a reader that opened a file with another inode
    # raced a concurrent replacement and looks the row up again (see store.py).
    inode: int = 0
    remote: str | None = None  # the remote's name, once an upload to it started
    # Hex MD5 of the bytes, taken while they were received (None: recorded without one, by
    # recovery or before migration 5): an upload compares it with the store's ETag.
    md5: str | None = None
    remote_key: str | None = None  # the object's key in `remote`, once uploaded there
    uploaded_at: float | None = None  # when this version's upload was verified
    # The node whose disk holds the local bytes (cluster.py); "": this data directory's (a
    # SQLite registry's one node). Only it uploads them, and the other nodes read them from it.
    holder: str = ""
    # The other node holding a copy of the local bytes until they are uploaded
    # (`cluster.replicas = 1`, cluster/replicas.py); "": none.
    replica: str = ""
    # The ETag is nginx's for a static file, `"<hex mtime>-<hex size>"`, not the SHA-256 one
    # (`server.static_hits`: nginx answers this version's hits itself, static.py).
    plain_etag: bool = False

    @property
    def uploaded(self) -> bool:
        return self.location == "remote"

    def public(self) -> dict[str, Any]:
        return {
            "path": self.path,
            "size": self.size,
            "sha256": self.sha256,
            "content_type": self.content_type,
            "modified": self.modified,
            "location": self.location,
        }


@dataclasses.dataclass(frozen=True)
class Intent:
    """A PUT in flight: temp file `tmp` is about to replace `path`. Recorded before the rename,
    removed in the transaction that records the new bytes (see store.py). Or, with `op`
    "delete", a DELETE between its two steps: the row is gone and the bytes are going."""

    id: int
    op: str
    path: str
    tmp: str
    size: int
    sha256: str
    content_type: str


# How long a path's last plain-ETag second is kept (`claim_plain_etag`). A later version's
# second is later anyway while the clock runs forward: the floor matters only within its own
# second (a same-size re-PUT) or if the clock steps back, and a step back of more than a day
# is one an operator sees. Past that, two versions of a path of the same size could share an
# ETag only if the clock went back by more than this.
FLOOR_SECONDS = 86_400

_FILE_COLUMNS = ("path, size, sha256, content_type, created, modified, location, version, inode, "
                 "remote, md5, remote_key, uploaded_at, holder, replica, plain_etag")


class FileRows:
    def __init__(self, conn: sqlite3.Connection) -> None:
        self._conn = conn

    # -- reads ----------------------------------------------------------------------------------

    def get(self, path: str) -> FileRecord | None:
        row = self._conn.execute(
            f"SELECT {_FILE_COLUMNS} FROM files WHERE path = ?", (path,)).fetchone()
        return FileRecord(*row) if row else None

    def page(self, after: str, limit: int) -> list[FileRecord]:
        """The next `limit` files after `after`, in path order (scans: moves, verify)."""
        rows = self._conn.execute(
            f"SELECT {_FILE_COLUMNS} FROM files WHERE path > ? ORDER BY path LIMIT ?",
            (after, limit),
        ).fetchall()
        return [FileRecord(*row) for row in rows]

    def listing(self, prefix: str = "", after: str = "", limit: int = 100) -> list[FileRecord]:
        """Files whose path starts with `prefix`, in path order, strictly after `after`."""
        rows = self._conn.execute(
            f"SELECT {_FILE_COLUMNS} FROM files WHERE path >= ? AND path < ? AND path > ? "
            "ORDER BY path LIMIT ?",
            (prefix, prefix + MAX_CHAR, after, limit),
        ).fetchall()
        return [FileRecord(*row) for row in rows]

    def recorded_remotes(self) -> list[str]:
        """The distinct remote names files record, one index seek each (not a scan)."""
        found, name = [], ""
        while row := self._conn.execute("SELECT remote FROM files WHERE remote > ? "
                                        "ORDER BY remote LIMIT 1", (name,)).fetchone():
            name = row[0]
            found.append(name)
        return found

    def namespace_conflict(self, path: str) -> str | None:
        """Why `path` cannot be a file next to the registered ones, or None. Local bytes live
        under their paths in two trees (`files/`, `cache/`), so the registry, which knows them
        all, is where a file-versus-directory clash is caught."""
        parts = path.split("/")
        parents = ["/".join(parts[:i]) for i in range(1, len(parts))]
        if parents:
            marks = ", ".join("?" * len(parents))
            row = self._conn.execute(f"SELECT path FROM files WHERE path IN ({marks}) LIMIT 1",
                                     parents).fetchone()
            if row:
                return f"{row[0]!r} is a file, so it cannot be a directory of {path!r}"
        # '0' follows '/' in every collation SQLite uses here: the range is "path/..." exactly.
        row = self._conn.execute("SELECT path FROM files WHERE path >= ? AND path < ? LIMIT 1",
                                 (path + "/", path + "0")).fetchone()
        if row:
            return f"{path!r} is a directory of other files (such as {row[0]!r})"
        return None

    # -- writes (in a transaction) --------------------------------------------------------------

    def upsert(self, path: str, size: int, sha256: str, content_type: str, inode: int,
               now: float, md5: str | None = None, replica: str = "", plain_etag: bool = False
               ) -> tuple[bool, FileRecord]:
        """Record new content for `path`: (whether the path is new, its row as written).
        `replica`: the other node holding a copy (a shared registry's; none here);
        `plain_etag`: its ETag is nginx's (`claim_plain_etag` said it may be)."""
        version = self._conn.execute(
            "UPDATE counters SET value = value + 1 WHERE name = 'seq.version' RETURNING value"
        ).fetchone()[0]
        row = self._conn.execute("SELECT created FROM files WHERE path = ?", (path,)).fetchone()
        if row is None:
            self._conn.execute(
                "INSERT INTO files (path, size, sha256, content_type, created, modified, "
                "location, version, inode, md5, plain_etag) "
                "VALUES (?, ?, ?, ?, ?, ?, 'local', ?, ?, ?, ?)",
                (path, size, sha256, content_type, now, now, version, inode, md5, plain_etag),
            )
            return True, self._written(path)
        # A replaced file is local again: its new bytes have not been uploaded anywhere. `remote`
        # and `remote_key` stay: the remote still holds the old copy, which a DELETE must remove.
        self._conn.execute(
            "UPDATE files SET size = ?, sha256 = ?, content_type = ?, modified = ?, inode = ?, "
            "location = 'local', version = ?, remote_etag = NULL, uploaded_at = NULL, "
            "last_error = NULL, md5 = ?, plain_etag = ? "
            "WHERE path = ?",
            (size, sha256, content_type, now, inode, version, md5, plain_etag, path),
        )
        return False, self._written(path)

    def _written(self, path: str) -> FileRecord:
        record = self.get(path)
        assert record is not None  # written by this transaction just now
        return record

    def claim_plain_etag(self, path: str, second: int) -> bool:
        """Whether a version of `path` modified in `second` may have nginx's ETag (mtime and
        size, migration 14): only if no earlier one of the path had one for this second or
        later, even one deleted since. Claimed if so. Floors older than `FLOOR_SECONDS` go
        first (migration 15's index: the few that expired since the last claim)."""
        self._conn.execute("DELETE FROM etag_floors WHERE second < ?", (second - FLOOR_SECONDS,))
        return self._conn.execute(
            "INSERT INTO etag_floors (path, second) VALUES (?, ?) ON CONFLICT (path) DO UPDATE "
            "SET second = excluded.second WHERE etag_floors.second < excluded.second "
            "RETURNING 1", (path, second)).fetchone() is not None

    def mark_uploaded(self, path: str, remote: str, key: str, etag: str, size: int,
                      now: float) -> None:
        """The file's bytes are verified in `remote` under `key`; counted as an upload done."""
        self._conn.execute(
            "UPDATE files SET location = 'remote', remote = ?, remote_key = ?, remote_etag = ?, "
            "uploaded_at = ? WHERE path = ?",
            (remote, key, etag, now, path),
        )
        names = remote_counter_names(remote)
        self._conn.executemany(
            "INSERT INTO counters (name, value) VALUES (?, ?) "
            "ON CONFLICT (name) DO UPDATE SET value = value + excluded.value",
            [("uploads.done", 1), ("uploads.bytes", size),
             (names.uploads, 1), (names.uploaded_bytes, size)])
        account, slash, _ = path.partition("/")
        if slash:  # the account's uploads, if the path's first segment names one
            self._conn.execute(
                "INSERT INTO counters (name, value) SELECT 'account.' || id || '.uploads', 1 "
                "FROM accounts WHERE id = ? ON CONFLICT (name) DO UPDATE SET value = value + 1",
                (account,))

    def point_at_copy(self, path: str, version: int, remote: str, key: str, now: float) -> None:
        """The file's local bytes are lost but `remote` holds a copy proven to be this version
        (verify's repair): the row is in the cloud there again. Not an upload: not counted."""
        self._conn.execute(
            "UPDATE files SET location = 'remote', remote = ?, remote_key = ?, "
            "remote_etag = NULL, uploaded_at = ?, last_error = NULL "
            "WHERE path = ? AND version = ?", (remote, key, now, path, version))

    def set_inode(self, path: str, inode: int) -> None:
        """The row's bytes now live in another file (a cache fill installed them)."""
        self._conn.execute("UPDATE files SET inode = ? WHERE path = ?", (inode, path))

    def mark_local(self, path: str, inode: int) -> None:
        """Moved back from the cloud: the row describes local bytes (`inode`) again. `remote`
        and `remote_key` stay while the cloud still holds the copy."""
        self._conn.execute("UPDATE files SET location = 'local', inode = ?, remote_etag = NULL, "
                           "uploaded_at = NULL, last_error = NULL WHERE path = ?", (inode, path))

    def forget_remote_copy(self, path: str, version: int, remote: str) -> None:
        """The copy of a local file in `remote` was deleted."""
        self._conn.execute("UPDATE files SET remote = NULL, remote_key = NULL WHERE path = ? "
                           "AND version = ? AND location = 'local' AND remote = ?",
                           (path, version, remote))

    def forget_copies_in(self, remote: str) -> int:
        """The remote moved: the older copies local files still have in the old one are out of
        reach (a DELETE could not remove them), so the rows stop pointing at them."""
        return self._conn.execute("UPDATE files SET remote = NULL, remote_key = NULL "
                                  "WHERE remote = ? AND location = 'local'", (remote,)).rowcount

    def move_remote_copy(self, path: str, old: str, new: str) -> None:
        """The older copy in `old` is gone (or kept, unrecorded): the upload starting now may
        leave a copy in `new`, the only remote the row can name."""
        self._conn.execute("UPDATE files SET remote = ?, remote_key = NULL WHERE path = ? "
                           "AND (remote = ? OR remote IS NULL)", (new, path, old))

    def note_possible_copy(self, path: str, remote: str) -> None:
        """An upload of `path` to `remote` is starting: the remote may hold a copy from now on."""
        self._conn.execute("UPDATE files SET remote = ? WHERE path = ? AND remote IS NULL",
                           (remote, path))

    def note_remote_copy(self, path: str, remote: str, key: str | None) -> None:
        """The remote holds some copy of `path` (an upload of a version since replaced)."""
        self._conn.execute("UPDATE files SET remote = ?, remote_key = ? WHERE path = ?",
                           (remote, key, path))

    def set_error(self, path: str, version: int, error: str | None) -> None:
        """Record (or clear, with None) why reading this version from the cloud failed; a row
        that says so already is not written again (a cache fill clears it every time)."""
        self._conn.execute("UPDATE files SET last_error = ? WHERE path = ? AND version = ? "
                           "AND last_error IS NOT ?", (error, path, version, error))

    def held_copies(self) -> list[tuple[str, str]]:
        """(path, sha256) of the files this node keeps a copy of for another (none here: a
        SQLite registry has one node)."""
        return []

    def delete(self, path: str) -> bool:
        return self._conn.execute("DELETE FROM files WHERE path = ?", (path,)).rowcount > 0


class IntentRows:
    def __init__(self, conn: sqlite3.Connection) -> None:
        self._conn = conn

    def add(self, op: str, path: str, tmp: str = "", size: int = 0, sha256: str = "",
            content_type: str = "") -> int:
        cursor = self._conn.execute(
            "INSERT INTO intents (op, path, tmp, size, sha256, content_type, created) "
            "VALUES (?, ?, ?, ?, ?, ?, ?)",
            (op, path, tmp, size, sha256, content_type, time.time()),
        )
        return int(cursor.lastrowid or 0)

    def remove(self, intent_id: int) -> None:
        self._conn.execute("DELETE FROM intents WHERE id = ?", (intent_id,))

    def finish(self, intent_id: int, path: str) -> list[Intent]:
        """Remove the intent `intent_id` (its change is recorded in this transaction), and
        the other PUT intents on `path`, which that change may supersede (one round trip with
        a shared registry)."""
        self.remove(intent_id)
        return self.for_path(path, "put")

    def all(self) -> list[Intent]:
        rows = self._conn.execute(
            "SELECT id, op, path, tmp, size, sha256, content_type FROM intents ORDER BY id"
        ).fetchall()
        return [Intent(*row) for row in rows]

    def for_path(self, path: str, op: str | None = None) -> list[Intent]:
        """The intents on `path` (of `op` only, when given)."""
        where, args = ("AND op = ?", (op,)) if op is not None else ("", ())
        rows = self._conn.execute(
            "SELECT id, op, path, tmp, size, sha256, content_type FROM intents "
            f"WHERE path = ? {where} ORDER BY id", (path, *args)).fetchall()
        return [Intent(*row) for row in rows]

    def writing(self, path: str) -> bool:
        """Whether a PUT or DELETE of `path` is between its steps (one index seek)."""
        return self._conn.execute("SELECT 1 FROM intents WHERE path = ? LIMIT 1",
                                  (path,)).fetchone() is not None
