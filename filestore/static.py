"""nginx answers public hits itself (`server.static_hits`): `static/files/PATH` is a tree of hard
links to the current versions whose every header nginx gives exactly as filestore would, and
deploy/nginx.conf serves it with `try_files`, asking filestore only for what is not there.

A version is linked (`StaticTree.serves`) only if nginx's answer is filestore's:
- its ETag is nginx's own for a static file, `"<hex mtime>-<hex size>"` (`plain_etag`,
  migration 14: no two versions of a path share one), and its file's mtime is its
  Last-Modified;
- its Content-Type is what nginx's `mime.types` gives its name (`NginxTypes`);
- it has no Cache-Control and no Content-Disposition (the plan sets neither for it), the other
  headers (`nosniff`, the sandbox) are constants the config adds;
- reads need no credential (`auth.public_read`), and one node holds the registry: a change on
  another node could not unlink this node's copy before it is answered.

What keeps a link from outliving its version: whatever stops an inode being a path's current
bytes (a PUT's rename over it, a cache install, a DELETE, an eviction) unlinks the path's link
first, in the same registry write transaction (`LocalStore`); a link is made only in a write
transaction, after checking that the inode is the record's (`link`). Write transactions are
serialized, every process's, so a GET through nginx after a PUT's or DELETE's answer sees the
new state. A link of a moved file (its upload done: files/ to cache/ by rename) stays right:
the rename keeps the inode.

Nothing here is fsynced: the tree is a cache of links. A start with no other process clears it
(a power loss may have lost an unlink), and a GET filestore answers links its file again
(`offer`); so does a change of the saved settings, which may change a file's headers.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import threading
import uuid
from pathlib import Path
from typing import TYPE_CHECKING

from . import plan
from .config import Settings
from .registry import FileRecord, Registry

if TYPE_CHECKING:
    from .store import Store

log = logging.getLogger(__name__)
_OFFERED_MAX = 65536

# Where Debian's nginx package keeps the types its `include mime.types` reads.
NGINX_MIME_TYPES = Path("/etc/nginx/mime.types")
# The shipped config's `default_type`, for a name whose extension mime.types does not list.
NGINX_DEFAULT_TYPE = "application/octet-stream"


class NginxTypes:
    """The Content-Type nginx gives a file by the extension of its URI, from a `mime.types`
    file (`types { text/html html htm; ... }`; a later extension wins, as in nginx)."""

    def __init__(self, path: Path = NGINX_MIME_TYPES, default: str = NGINX_DEFAULT_TYPE) -> None:
        self.default = default
        self.by_extension: dict[str, str] = {}
        try:
            text = path.read_text(encoding="utf-8", errors="replace")
        except OSError:
            text = ""  # no nginx here: every name gets the default
        lines = [line.split("#", 1)[0] for line in text.splitlines()]
        body = " ".join(lines)
        start, end = body.find("{"), body.rfind("}")
        if start >= 0 and end > start:
            for entry in body[start + 1:end].split(";"):
                words = entry.split()
                for extension in words[1:]:
                    self.by_extension[extension.lower()] = words[0]

    def type_of(self, path: str) -> str:
        """nginx's `ngx_http_set_exten`: the text after the last dot of the last segment, unless
        that dot begins the segment; looked up lower-cased."""
        uri = "/files/" + path
        for i in range(len(uri) - 1, 1, -1):
            char = uri[i]
            if char == "." and uri[i - 1] != "/":
                return self.by_extension.get(uri[i + 1:].lower(), self.default)
            if char == "/":
                break
        return self.default


class StaticTree:
    def __init__(self, data_dir: Path, types: NginxTypes | None = None) -> None:
        self.root = (data_dir / "static").resolve()
        self.files = self.root / "files"  # nginx's `root` is `static`: its URIs are /files/...
        self._files_str = str(self.files) + os.sep
        self.types = types or NginxTypes()
        self.files.mkdir(parents=True, exist_ok=True)
        # path -> the version this process last offered to link (`offer`); bounded.
        self._offered: dict[str, int] = {}

    def serves(self, settings: Settings, record: FileRecord) -> bool:
        """Whether nginx's answer to a GET of this version would be filestore's, header for
        header (see the module's docstring)."""
        if not (record.plain_etag and settings.server.static_hits and settings.auth.public_read):
            return False
        if record.content_type != self.types.type_of(record.path):
            return False
        cache_control, attach = plan.served(settings, record.path, record.content_type)
        return not cache_control and not attach

    def drop(self, path: str) -> None:
        """Unlink `path`'s link, if any: before its bytes change or go, in the write
        transaction that changes them."""
        try:
            os.unlink(self._files_str + path)
        except (FileNotFoundError, NotADirectoryError, IsADirectoryError):
            return
        parent = os.path.dirname(self._files_str + path)
        with contextlib.suppress(OSError):  # not empty: the usual case, one failed rmdir
            while parent != str(self.files):
                os.rmdir(parent)
                parent = os.path.dirname(parent)

    def link(self, settings: Settings, record: FileRecord, source: Path) -> bool:
        """Link `source`, the bytes of `record`, at its path, if nginx would answer them as
        filestore does; whether it is linked. In the write transaction that read `record`:
        `source` is checked to be its inode, and its mtime set to its Last-Modified."""
        if not self.serves(settings, record):
            return False
        final = self._files_str + record.path
        temp = self.root / f"link-{uuid.uuid4().hex}"
        try:
            info = os.stat(source)
            if info.st_ino != record.inode or info.st_size != record.size:
                return False
            second = int(record.modified)
            if int(info.st_mtime) != second:
                os.utime(source, ns=(second * 10**9, second * 10**9))
            os.link(source, temp)
            os.makedirs(os.path.dirname(final), exist_ok=True)
            os.replace(temp, final)
            self._remember(record)
            return True
        except OSError as exc:  # a directory left where the link goes, a full disk ...
            log.debug("static: not linking %r: %s", record.path, exc)
            temp.unlink(missing_ok=True)
            return False

    def wants(self, settings: Settings, record: FileRecord) -> bool:
        """Whether a GET filestore answers of this version should link it (`offer`): nginx
        would answer it as filestore does, and this process has not tried yet."""
        return self._offered.get(record.path) != record.version and self.serves(settings, record)

    def offer(self, store: Store, record: FileRecord, cached: bool) -> None:
        """Link the version a GET found (after a start or a settings change cleared the tree),
        if it still is the current one; in a worker thread, once per version and process."""
        self._remember(record)
        local = store.local
        with store.registry.transaction() as tx:
            current = tx.files.get(record.path)
            if current is not None and current.version == record.version:
                self.link(store.settings, current,
                          (local.cache_root if cached else local.root) / record.path)

    def _remember(self, record: FileRecord) -> None:
        if len(self._offered) >= _OFFERED_MAX:
            self._offered.clear()
        self._offered[record.path] = record.version

    def clear(self, registry: Registry | None = None) -> None:
        """Unlink every link at once (a rename), the tree itself removed in the background;
        in a write transaction of `registry` if given (none at start-up: nothing else runs),
        so no link made under the settings before lands after it."""
        trash = self.root / f"trash-{uuid.uuid4().hex}"
        with registry.transaction() if registry is not None else contextlib.nullcontext():
            with contextlib.suppress(FileNotFoundError):
                os.rename(self.files, trash)
            self.files.mkdir(exist_ok=True)
            self._offered = {}
        self._sweep()

    def _sweep(self) -> None:
        leftovers = [p for p in self.root.iterdir() if p.name.startswith(("trash-", "link-"))]
        if leftovers:
            threading.Thread(target=_remove, args=(leftovers,), name="static-sweep",
                             daemon=True).start()


def _remove(paths: list[Path]) -> None:
    for path in paths:
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink(missing_ok=True)
