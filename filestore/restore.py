"""`filestore restore`: a `filestore backup` installed as the registry of a data directory no
process uses, the registry it replaces kept beside it.

The registry installed is as old as the backup: `filestore verify --remote` then compares it with
what the disk and every configured remote hold now (see verify/), and `--repair` brings it up to
date where that is safe: bytes on disk no row knows are adopted, and a file whose bytes are gone
from disk, or from the remote its row records, is pointed at a remote that holds the same bytes
(proven by download; the remote the storage plan routes the path to first), its name recorded.

Secrets saved from the admin page travel in the backup encrypted, and the key file
(`data_dir/secrets.key`) never does: it is copied by hand, like the config file. A restore into a
data directory without the matching key file is not refused (the registry is the index of every
file, and a lost key must not keep it from coming back): the registry is installed and a warning
names the key file and the way out (put it back, or `filestore settings reset --force` and enter
the secrets again). Until then the store does not open, with the same one line.
"""

from __future__ import annotations

import os
import shutil
import time
from pathlib import Path

from . import overrides
from .config import Settings
from .datadir import DataDir
from .errors import ConfigError, Conflict
from .fsutil import fsync_dir
from .registry import SETTINGS_SCHEMA, SqliteRegistry, copy_backup, require_sqlite
from .secrets import SecretBox, SecretError


def restore_registry(settings: Settings, source: Path) -> tuple[Path | None, str]:
    """Install `source` (a `filestore backup`) as the registry of a data directory that no
    process uses; the registry it replaces is kept beside it. Returns that copy (None if there
    was none) and a warning for the operator ("" if none): why the secrets it holds cannot be
    decrypted here (the key file did not come with the backup).

    Refused while any process uses the directory (`Conflict`, exit 1), or when `source` is not a
    sound SQLite registry of a schema this filestore knows (`ConfigError`, exit 2).
    """
    require_sqlite(settings, "filestore restore", "pg_restore")
    datadir = DataDir(settings.data_dir)
    datadir.create()
    source = source.absolute()
    if source == datadir.registry_path.absolute():
        raise ConfigError(f"{source} is the data directory's registry itself")
    start_fd = datadir.start_lock()  # a server starting now waits until this is done
    try:
        alone = datadir.join()
        try:
            if not alone:
                raise Conflict(f"a filestore process is using {settings.data_dir}: stop it "
                               "before restoring its registry")
            tmp = datadir.root / f".{datadir.registry_path.name}.restore"
            copy_backup(source, tmp)
            unreadable = _unreadable_secrets(tmp, settings)
            kept = _install_registry(tmp, datadir.registry_path)
        finally:
            datadir.leave()
    finally:
        os.close(start_fd)
    return kept, unreadable


def _unreadable_secrets(registry: Path, settings: Settings) -> str:
    """Why the secrets saved in `registry` cannot be decrypted in this data directory (its key
    file is missing or another), or "" when they can (or there are none)."""
    copy = SqliteRegistry(registry, read_only=True)
    try:
        if copy.schema_version() < SETTINGS_SCHEMA:
            return ""
        overrides.saved(copy.read, SecretBox(settings.data_dir))
    except SecretError as exc:
        return exc.detail
    finally:
        copy.close()
    return ""


def _install_registry(tmp: Path, registry: Path) -> Path | None:
    """Rename `tmp` over `registry`, keeping the old one (and its -wal, which holds its latest
    transactions) as `registry.sqlite3.replaced-<time>`; its -shm is only an index, rebuilt."""
    kept = None
    if registry.exists():
        stamp = time.strftime("%Y%m%d-%H%M%S")
        kept = registry.with_name(f"{registry.name}.replaced-{stamp}")
        for n in range(1, 1000):
            if not kept.exists():
                break
            kept = registry.with_name(f"{registry.name}.replaced-{stamp}-{n}")
        try:
            os.link(registry, kept)
        except OSError:
            shutil.copyfile(registry, kept)
        wal = Path(f"{registry}-wal")
        if wal.exists():
            os.replace(wal, Path(f"{kept}-wal"))
    Path(f"{registry}-shm").unlink(missing_ok=True)
    os.replace(tmp, registry)
    fsync_dir(registry.parent)
    return kept
