"""The files and intents tables in PostgreSQL (see `registry/files.py` for what they mean).

The same statements as SQLite's, in PostgreSQL's dialect: `%s` parameters, `= ANY(%s)` for a
list, `RETURNING id` for a new intent's id. Paths compare byte by byte (`COLLATE "C"` on the
columns, migration 1), so the range `path >= P AND path < P || MAX_CHAR` is exactly the paths
under `P`, as in SQLite, whatever the database's own collation.
"""

from __future__ import annotations

import time

from ..counters import MAX_CHAR, remote_counter_names
from ..files import _FILE_COLUMNS, FLOOR_SECONDS, FileRecord, Intent
from .link import Link

_UPSERT_COUNTER = ("INSERT INTO counters (name, value) VALUES (%s, %s) ON CONFLICT (name) "
                   "DO UPDATE SET value = counters.value + excluded.value")


def _node_view() -> str:
    """The file columns as one node sees them (`f`: files, `c`: that node's cache entry): the
    inode is that of the bytes on *its* disk, the holder's own for the holder, else its cached
    copy's (0: none). A node never compares its bytes with another node's inode."""
    columns = [f"f.{column.strip()}" for column in _FILE_COLUMNS.split(",")]
    columns[columns.index("f.inode")] = ("CASE WHEN f.holder = %s THEN f.inode "
                                         "ELSE coalesce(c.inode, 0) END")
    return (f"SELECT {', '.join(columns)} FROM files f "
            "LEFT JOIN cache_entries c ON c.node = %s AND c.path = f.path")


NODE_VIEW = _node_view()


class FileRows:
    def __init__(self, link: Link, node: str) -> None:
        self._link = link
        self._node = node

    # -- reads ----------------------------------------------------------------------------------

    def get(self, path: str) -> FileRecord | None:
        row = self._link.one(f"{NODE_VIEW} WHERE f.path = %s", (self._node, self._node, path))
        return FileRecord(*row) if row else None

    def page(self, after: str, limit: int) -> list[FileRecord]:
        rows = self._link.rows(f"{NODE_VIEW} WHERE f.path > %s ORDER BY f.path LIMIT %s",
                               (self._node, self._node, after, limit))
        return [FileRecord(*row) for row in rows]

    def listing(self, prefix: str = "", after: str = "", limit: int = 100) -> list[FileRecord]:
        rows = self._link.rows(
            f"{NODE_VIEW} WHERE f.path >= %s AND f.path < %s AND f.path > %s "
            "ORDER BY f.path LIMIT %s",
            (self._node, self._node, prefix, prefix + MAX_CHAR, after, limit))
        return [FileRecord(*row) for row in rows]

    def recorded_remotes(self) -> list[str]:
        """The distinct remote names files record, one seek of `files_remote` each."""
        found: list[str] = []
        name = ""
        while (row := self._link.one("SELECT remote FROM files WHERE remote > %s "
                                     "ORDER BY remote LIMIT 1", (name,))) is not None:
            name = row[0]
            found.append(name)
        return found

    def namespace_conflict(self, path: str) -> str | None:
        parts = path.split("/")
        parents = ["/".join(parts[:i]) for i in range(1, len(parts))]
        # One round trip: a file among the parents (kind 0), a file under the path (kind 1;
        # '0' follows '/' in byte order, so the range is "path/..." exactly), each one seek.
        rows = self._link.rows(
            "(SELECT 0, path FROM files WHERE path = ANY(%s) LIMIT 1) UNION ALL "
            "(SELECT 1, path FROM files WHERE path >= %s AND path < %s LIMIT 1)",
            (parents, path + "/", path + "0"))
        for kind, found in sorted(rows):
            if kind == 0:
                return f"{found!r} is a file, so it cannot be a directory of {path!r}"
            return f"{path!r} is a directory of other files (such as {found!r})"
        return None

    # -- writes (in a transaction) --------------------------------------------------------------

    def upsert(self, path: str, size: int, sha256: str, content_type: str, inode: int,
               now: float, md5: str | None = None, replica: str = "", plain_etag: bool = False
               ) -> tuple[bool, FileRecord]:
        """Record new content for `path`: (whether the path is new, its row as written), in
        one statement (one round trip): `seq.version` moved, the row inserted or, when the path
        has one, rewritten keeping its `created` (`xmax = 0` tells an inserted row). The
        registry lock orders it with every other writer; the statement locks both rows."""
        row = self._link.one(
            "WITH seq AS (UPDATE counters SET value = value + 1 WHERE name = 'seq.version' "
            "RETURNING value) "
            "INSERT INTO files (path, size, sha256, content_type, created, modified, location, "
            "version, inode, md5, holder, replica, plain_etag) SELECT %s, %s, %s, %s, %s, %s, "
            "'local', seq.value, %s, %s, %s, %s, %s FROM seq ON CONFLICT (path) DO UPDATE SET "
            "size = excluded.size, sha256 = excluded.sha256, "
            "content_type = excluded.content_type, modified = excluded.modified, "
            "inode = excluded.inode, location = 'local', version = excluded.version, "
            "remote_etag = NULL, uploaded_at = NULL, last_error = NULL, md5 = excluded.md5, "
            "holder = excluded.holder, replica = excluded.replica, "
            f"plain_etag = excluded.plain_etag RETURNING xmax = 0, {_FILE_COLUMNS}",
            (path, size, sha256, content_type, now, now, inode, md5, self._node, replica,
             plain_etag))
        assert row is not None  # migration 1 creates the seq.version row
        # The row as this node sees it: its holder is this node, so the inode is its own.
        return bool(row[0]), FileRecord(*row[1:])

    def claim_plain_etag(self, path: str, second: int) -> bool:
        self._link.execute("DELETE FROM etag_floors WHERE second < %s",
                           (second - FLOOR_SECONDS,))
        return self._link.one(
            "INSERT INTO etag_floors (path, second) VALUES (%s, %s) ON CONFLICT (path) DO UPDATE "
            "SET second = excluded.second WHERE etag_floors.second < excluded.second "
            "RETURNING 1", (path, second)) is not None

    def mark_uploaded(self, path: str, remote: str, key: str, etag: str, size: int,
                      now: float) -> None:
        self._link.execute(
            "UPDATE files SET location = 'remote', remote = %s, remote_key = %s, "
            "remote_etag = %s, uploaded_at = %s WHERE path = %s", (remote, key, etag, now, path))
        names = remote_counter_names(remote)
        self._link.many(_UPSERT_COUNTER, [("uploads.done", 1), ("uploads.bytes", size),
                                          (names.uploads, 1), (names.uploaded_bytes, size)])
        account, slash, _ = path.partition("/")
        if slash:
            self._link.execute(
                "INSERT INTO counters (name, value) SELECT 'account.' || id || '.uploads', 1 "
                "FROM accounts WHERE id = %s ON CONFLICT (name) "
                "DO UPDATE SET value = counters.value + 1", (account,))

    def point_at_copy(self, path: str, version: int, remote: str, key: str, now: float) -> None:
        self._link.execute(
            "UPDATE files SET location = 'remote', remote = %s, remote_key = %s, "
            "remote_etag = NULL, uploaded_at = %s, last_error = NULL "
            "WHERE path = %s AND version = %s", (remote, key, now, path, version))

    def set_inode(self, path: str, inode: int) -> None:
        """The inode of this node's bytes: the row's if it holds the file, else its cache
        entry's (see `NODE_VIEW`)."""
        self._link.execute("UPDATE files SET inode = %s WHERE path = %s AND holder = %s",
                           (inode, path, self._node))
        self._link.execute("UPDATE cache_entries SET inode = %s WHERE node = %s AND path = %s",
                           (inode, self._node, path))

    def mark_local(self, path: str, inode: int) -> None:
        """The bytes are local again, on this node's disk: it holds them now."""
        self._link.execute(
            "UPDATE files SET location = 'local', inode = %s, remote_etag = NULL, "
            "uploaded_at = NULL, last_error = NULL, holder = %s, replica = '' WHERE path = %s",
            (inode, self._node, path))

    def forget_remote_copy(self, path: str, version: int, remote: str) -> None:
        self._link.execute(
            "UPDATE files SET remote = NULL, remote_key = NULL WHERE path = %s AND version = %s "
            "AND location = 'local' AND remote = %s", (path, version, remote))

    def forget_copies_in(self, remote: str) -> int:
        return self._link.count("UPDATE files SET remote = NULL, remote_key = NULL "
                                "WHERE remote = %s AND location = 'local'", (remote,))

    def move_remote_copy(self, path: str, old: str, new: str) -> None:
        self._link.execute("UPDATE files SET remote = %s, remote_key = NULL WHERE path = %s "
                           "AND (remote = %s OR remote IS NULL)", (new, path, old))

    def note_possible_copy(self, path: str, remote: str) -> None:
        self._link.execute("UPDATE files SET remote = %s WHERE path = %s AND remote IS NULL",
                           (remote, path))

    def note_remote_copy(self, path: str, remote: str, key: str | None) -> None:
        self._link.execute("UPDATE files SET remote = %s, remote_key = %s WHERE path = %s",
                           (remote, key, path))

    def set_error(self, path: str, version: int, error: str | None) -> None:
        self._link.execute("UPDATE files SET last_error = %s WHERE path = %s AND version = %s "
                           "AND last_error IS DISTINCT FROM %s", (error, path, version, error))

    def held_copies(self) -> list[tuple[str, str]]:
        """(path, sha256) of the files not uploaded yet this node keeps a copy of for their
        holder (cluster.replicas): found by the `files_replica` index, as many as there are
        such files, never a scan of the others."""
        return [(row[0], row[1]) for row in self._link.rows(
            "SELECT path, sha256 FROM files WHERE replica = %s AND location = 'local'",
            (self._node,))]

    def delete(self, path: str) -> bool:
        return self._link.count("DELETE FROM files WHERE path = %s", (path,)) > 0


_INTENT = "id, op, path, tmp, size, sha256, content_type"


class IntentRows:
    """This node's intents: each names a temp file on its own disk, so only it recovers them."""

    def __init__(self, link: Link, node: str) -> None:
        self._link = link
        self._node = node

    def add(self, op: str, path: str, tmp: str = "", size: int = 0, sha256: str = "",
            content_type: str = "") -> int:
        return int(self._link.value(
            "INSERT INTO intents (op, path, tmp, size, sha256, content_type, created, node) "
            "VALUES (%s, %s, %s, %s, %s, %s, %s, %s) RETURNING id",
            (op, path, tmp, size, sha256, content_type, time.time(), self._node)))

    def remove(self, intent_id: int) -> None:
        self._link.execute("DELETE FROM intents WHERE id = %s", (intent_id,))

    def finish(self, intent_id: int, path: str) -> list[Intent]:
        # One statement: the SELECT sees the table as it was before the DELETE beside it.
        return [Intent(*row) for row in self._link.rows(
            f"WITH gone AS (DELETE FROM intents WHERE id = %s) SELECT {_INTENT} FROM intents "
            "WHERE path = %s AND node = %s AND op = 'put' AND id <> %s ORDER BY id",
            (intent_id, path, self._node, intent_id))]

    def all(self) -> list[Intent]:
        return [Intent(*row) for row in self._link.rows(
            f"SELECT {_INTENT} FROM intents WHERE node = %s ORDER BY id", (self._node,))]

    def for_path(self, path: str, op: str | None = None) -> list[Intent]:
        where, args = ("AND op = %s", (op,)) if op is not None else ("", ())
        return [Intent(*row) for row in self._link.rows(
            f"SELECT {_INTENT} FROM intents WHERE path = %s AND node = %s {where} ORDER BY id",
            (path, self._node, *args))]

    def writing(self, path: str) -> bool:
        return self._link.one("SELECT 1 FROM intents WHERE path = %s AND node = %s LIMIT 1",
                              (path, self._node)) is not None
