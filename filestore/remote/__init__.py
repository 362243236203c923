"""Remote stores: `open_remote(url)` gives a `Remote` for `s3://...` or `file://...`."""

from __future__ import annotations

from pathlib import Path
from urllib.parse import urlsplit

from ..config import RemoteSettings
from ..errors import ConfigError
from .base import Remote, RemoteObject
from .file import FileRemote
from .s3 import S3Remote

__all__ = ["Remote", "RemoteObject", "open_remote"]


def open_remote(name: str, settings: RemoteSettings, data_dir: Path) -> Remote:
    """The remote `settings.url` names (not yet connected: call `await remote.open()`).

    An empty URL is the embedded default: a `remote/` folder inside the data directory.
    """
    url = settings.url or f"file://{data_dir / 'remote'}"
    try:
        parts = urlsplit(url)
    except ValueError as exc:
        raise ConfigError(f"remote.url = {url!r}: not a URL ({exc})") from None
    if parts.scheme == "file":
        # file:///abs/dir, or file://./rel/dir (netloc "." and a relative path)
        where = parts.netloc + parts.path if parts.netloc in ("", ".", "..") else None
        if not where:
            raise ConfigError(f"remote.url = {url!r}: expected file:///absolute/dir or "
                              "file://./relative/dir")
        _outside_data_dir(url, Path(where), data_dir)
        return FileRemote(name, Path(where))
    if parts.scheme == "s3":
        if not parts.netloc:
            raise ConfigError(f"remote.url = {url!r}: expected s3://bucket or s3://bucket/prefix")
        return S3Remote(name, parts.netloc, parts.path, settings)
    raise ConfigError(f"remote.url = {url!r}: expected an s3:// or file:// URL")


def _outside_data_dir(url: str, root: Path, data_dir: Path) -> None:
    """A directory remote must not overlap the data directory's own trees: an "upload" into
    `files/` or `cache/` would replace the only copy with itself, the cache's repair would
    delete "remote objects" in `cache/`, and recovery empties `tmp/`. (A folder of its own
    inside the data directory, like the embedded default `remote/`, is fine.)"""
    where, data = root.resolve(), data_dir.resolve()
    owned = [data / name for name in ("files", "cache", "tmp")]
    if where == data or where in data.parents or any(
            where == tree or tree in where.parents for tree in owned):
        raise ConfigError(f"remote.url = {url!r}: a directory remote must not be the data "
                          f"directory {data}, hold it, or lie in its files/, cache/ or tmp/")
