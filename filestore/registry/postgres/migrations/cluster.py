"""Migration 13 in PostgreSQL: nodes, the holder of a file's local bytes, and what stays per
node though the registry is shared: the cache index, its counters, intents (see
`registry/migrations/cluster.py` for the SQLite twin, where one node is all there is).

- `cache_entries` gains `node` (its key is now node and path: each node indexes its own cache
  area) and `inode` (of that node's cached bytes: the `files` row's is its holder's). Slots are
  dense per node, so each node's GC draws among its own entries.
- `node_counters` holds what is counted per node: every `cache.*` counter (moved from
  `counters`), and `local.files` / `local.bytes`, the local-only files each node holds.
- `stale_bytes` lists bytes a node must drop because a change elsewhere superseded them: a
  DELETE or re-PUT on another node of a file it held, or one it had cached. Its sweeper
  (cluster.py) removes them within a second or two; until then nothing serves them, since
  the row no longer names them (holder, version, this node's cache entry).
"""

from __future__ import annotations

from .triggers import REAL, TEXT, function, on, trigger


def _bump(node: str, name: str, delta: str) -> str:
    return f"PERFORM bump_node({node}, '{name}', ({delta})::bigint);"


def _fill(side: str) -> str:
    """Move the outermost entry of a side of this entry's node into the slot OLD.slot freed."""
    beyond = ">" if side == "max" else "<"
    return (f"UPDATE cache_entries SET slot = OLD.slot WHERE node = OLD.node AND slot = "
            f"(SELECT {side}(slot) FROM cache_entries WHERE node = OLD.node) "
            f"AND slot {beyond} OLD.slot;")


def _pinned(sign: str, row: str) -> str:
    return (_bump(f"{row}.node", "cache.pinned.entries", f"{sign}1") + "\n"
            + _bump(f"{row}.node", "cache.pinned.bytes", f"{sign}{row}.size"))


def _cache_count(sign: str, row: str) -> str:
    return (_bump(f"{row}.node", "cache.entries", f"{sign}1") + "\n"
            + _bump(f"{row}.node", "cache.bytes", f"{sign}{row}.size"))


def _local_count(sign: str, row: str) -> str:
    return (f"IF {row}.location = 'local' THEN\n"
            + _bump(f"{row}.holder", "local.files", f"{sign}1") + "\n"
            + _bump(f"{row}.holder", "local.bytes", f"{sign}{row}.size") + "\nEND IF;")


# Every node's entry of the path goes; the nodes that had one drop their bytes.
_UNCACHE = ("INSERT INTO stale_bytes (node, path) SELECT node, path FROM cache_entries "
            "WHERE path = OLD.path ON CONFLICT DO NOTHING;\n"
            "DELETE FROM cache_entries WHERE path = OLD.path;")


def migration_13() -> list[str]:
    return [
        f"""CREATE TABLE nodes (
          name {TEXT} PRIMARY KEY,
          url {TEXT} NOT NULL,
          started {REAL} NOT NULL,
          heartbeat {REAL} NOT NULL
        )""",
        f"ALTER TABLE files ADD COLUMN holder {TEXT} NOT NULL DEFAULT ''",
        f"ALTER TABLE files ADD COLUMN replica {TEXT} NOT NULL DEFAULT ''",
        "CREATE INDEX files_replica ON files (replica) WHERE replica <> ''",
        f"ALTER TABLE intents ADD COLUMN node {TEXT} NOT NULL DEFAULT ''",
        f"ALTER TABLE cache_entries ADD COLUMN node {TEXT} NOT NULL DEFAULT ''",
        "ALTER TABLE cache_entries ADD COLUMN inode bigint NOT NULL DEFAULT 0",
        "UPDATE cache_entries c SET inode = f.inode FROM files f WHERE f.path = c.path",
        "ALTER TABLE cache_entries DROP CONSTRAINT cache_entries_pkey",
        "ALTER TABLE cache_entries ADD PRIMARY KEY (node, path)",
        "CREATE INDEX cache_entries_path ON cache_entries (path)",
        "DROP INDEX cache_entries_slot",
        "CREATE UNIQUE INDEX cache_entries_slot ON cache_entries (node, slot)",
        f"""CREATE TABLE node_counters (
          node {TEXT} NOT NULL,
          name {TEXT} NOT NULL,
          value bigint NOT NULL DEFAULT 0,
          PRIMARY KEY (node, name)
        )""",
        "INSERT INTO node_counters (node, name, value) SELECT '', name, value FROM counters "
        "WHERE name LIKE 'cache.%'",
        "DELETE FROM counters WHERE name LIKE 'cache.%'",
        "INSERT INTO node_counters (node, name, value) SELECT holder, 'local.files', count(*) "
        "FROM files WHERE location = 'local' GROUP BY holder",
        "INSERT INTO node_counters (node, name, value) SELECT holder, 'local.bytes', sum(size) "
        "FROM files WHERE location = 'local' GROUP BY holder",
        f"""CREATE TABLE stale_bytes (
          node {TEXT} NOT NULL,
          path {TEXT} NOT NULL,
          PRIMARY KEY (node, path)
        )""",
        """CREATE FUNCTION bump_node(n text, counter text, delta bigint) RETURNS void
        LANGUAGE sql AS $$
          INSERT INTO node_counters (node, name, value) VALUES (n, counter, delta)
          ON CONFLICT (node, name) DO UPDATE SET value = node_counters.value + excluded.value
        $$""",
        # Migrations 3 and 10's trigger functions, per node (their triggers stay).
        function("cache_entries_fill_slot", _fill("max")),
        function("cache_entries_fill_pinned_slot", _fill("min")),
        function("cache_entries_count",
                 f"IF TG_OP <> 'INSERT' THEN\n{_cache_count('-', 'OLD')}\nEND IF;\n"
                 f"IF TG_OP <> 'DELETE' THEN\n{_cache_count('+', 'NEW')}\nEND IF;"),
        function("cache_entries_pinned_insert", _pinned("+", "NEW")),
        function("cache_entries_pinned_delete", _pinned("-", "OLD")),
        function("cache_entries_pinned_update",
                 _bump("NEW.node", "cache.pinned.entries",
                       "(NEW.slot < 0)::int - (OLD.slot < 0)::int") + "\n"
                 + _bump("NEW.node", "cache.pinned.bytes",
                         "(NEW.slot < 0)::int * NEW.size - (OLD.slot < 0)::int * OLD.size")),
        function("files_uncache_delete", _UNCACHE),
        function("files_uncache_update", _UNCACHE),
        # The local-only files each node holds, and the bytes a node held that another's
        # change superseded (a node's own DELETE removes its bytes itself; its sweeper then
        # finds nothing to do).
        *on("files_local_count", "INSERT OR DELETE OR UPDATE OF location, size, holder",
            "files", f"IF TG_OP <> 'INSERT' THEN\n{_local_count('-', 'OLD')}\nEND IF;\n"
                     f"IF TG_OP <> 'DELETE' THEN\n{_local_count('+', 'NEW')}\nEND IF;"),
        function("files_stale",
                 "IF OLD.holder <> '' AND (TG_OP = 'DELETE' OR NEW.holder <> OLD.holder "
                 "OR (OLD.replica <> '' AND NEW.location <> OLD.location)) THEN\n"
                 "INSERT INTO stale_bytes (node, path) VALUES (OLD.holder, OLD.path) "
                 "ON CONFLICT DO NOTHING;\nEND IF;\n"
                 # A replica's bytes: superseded by any change, uploaded ones too.
                 "IF OLD.replica <> '' AND (TG_OP = 'DELETE' OR NEW.replica <> OLD.replica "
                 "OR NEW.version <> OLD.version OR NEW.location <> OLD.location) THEN\n"
                 "INSERT INTO stale_bytes (node, path) VALUES (OLD.replica, OLD.path) "
                 "ON CONFLICT DO NOTHING;\nEND IF;"),
        trigger("files_stale_delete", "DELETE", "files", "files_stale"),
        trigger("files_stale_update", "UPDATE OF holder, replica, version, location", "files",
                "files_stale"),
    ]


def claim(node: str) -> list[tuple[str, tuple[str, ...]]]:
    """Run by the node that migrates to 13 (the one node a registry had until then): what was
    there is its own. Its files, intents, cache entries and counters move from "" to its name
    (the local counters by the `files_local_count` trigger, the rest merged here)."""
    return [
        ("UPDATE files SET holder = %s WHERE holder = ''", (node,)),
        ("UPDATE intents SET node = %s WHERE node = ''", (node,)),
        ("UPDATE cache_entries SET node = %s WHERE node = ''", (node,)),
        ("INSERT INTO node_counters (node, name, value) SELECT %s, name, value "
         "FROM node_counters WHERE node = '' ON CONFLICT (node, name) "
         "DO UPDATE SET value = node_counters.value + excluded.value", (node,)),
        ("DELETE FROM node_counters WHERE node = ''", ()),
    ]
