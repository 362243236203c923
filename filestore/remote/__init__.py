"""Remote stores: `open_remote(url)` gives a `Remote` for `s3://...` or `file://...`."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from pathlib import Path
from urllib.parse import urlsplit

import anyio

from ..config import DEFAULT_REMOTE, RemoteSettings, Settings
from ..errors import ConfigError, RemoteError
from ..values import ACCOUNT_REMOTE_SEP, remote_account
from .base import Readable, Remote, RemoteObject
from .file import FileRemote
from .s3 import S3Remote

__all__ = ["Readable", "Remote", "RemoteObject", "check_apart", "connected_remotes", "display_url",
           "open_remote", "open_remotes"]


def open_remotes(settings: Settings, *, skip_invalid: bool = False) -> dict[str, Remote]:
    """Every configured remote by name (not yet connected), checked to be apart. With
    `skip_invalid`, a remote whose URL is refused is left out instead of raising (an admin
    save: the probe reports it, step by step)."""
    remotes = {}
    for name, remote_settings in settings.named_remotes().items():
        try:
            remotes[name] = open_remote(name, remote_settings, settings.data_dir)
        except ConfigError:
            if not skip_invalid:
                raise
    check_apart(remotes)
    return remotes


def display_url(name: str, settings: RemoteSettings, data_dir: Path) -> str:
    """Where a remote points, safe to show; a URL that `open_remote` refuses shows as given."""
    try:
        return open_remote(name, settings, data_dir).display_url
    except ConfigError:
        return settings.url


def check_apart(remotes: dict[str, Remote]) -> None:
    """Two remotes whose objects could share keys (the same directory, bucket and prefix, or
    one inside the other) are a config error: a delete through one would remove the other's
    object."""
    places = {name: _place(remote) for name, remote in remotes.items()}
    for name, (store, prefix) in places.items():
        for other, (other_store, other_prefix) in places.items():
            if other < name and other_store == store and (
                    prefix.startswith(other_prefix) or other_prefix.startswith(prefix)):
                first, second = sorted((name, other), key=list(remotes).index)
                raise ConfigError(f"remotes {first!r} and {second!r} overlap "
                                  f"({remotes[first].display_url} and "
                                  f"{remotes[second].display_url}): each remote needs a place "
                                  "of its own")


@contextlib.asynccontextmanager
async def connected_remotes(settings: Settings) -> AsyncIterator[dict[str, Remote]]:
    """Every configured remote, connected; closed on leaving. A remote that cannot be opened
    (a bad endpoint, an unwritable directory) is a config error naming it."""
    remotes = open_remotes(settings)
    try:
        for name, remote in remotes.items():
            try:
                await remote.open()
            except RemoteError as exc:
                key = "remote" if name == DEFAULT_REMOTE else f"remotes.{name}"
                raise ConfigError(f"{key}: {exc.detail}") from None
        yield remotes
    finally:
        with anyio.CancelScope(shield=True):
            for remote in remotes.values():
                await remote.close()


def open_remote(name: str, settings: RemoteSettings, data_dir: Path) -> Remote:
    """The remote `settings.url` names (not yet connected: call `await remote.open()`).

    An empty URL is the embedded default: a `remote/` folder inside the data directory. An
    account's own remote ("ACCOUNT:NAME") is an `s3://` one, scoped to the account's prefix:
    it lists, and cleans up after, only the keys under "ACCOUNT/", so the rest of the bucket
    (the account holder's other data) is never touched.
    """
    account = remote_account(name)
    key = "remote.url" if name == DEFAULT_REMOTE else f"remotes.{name}.url"
    url = settings.url or f"file://{data_dir / 'remote'}"
    if account is not None:
        key = f"account {account!r}: remotes.{name.partition(ACCOUNT_REMOTE_SEP)[2]}.url"
        if not settings.url.startswith("s3://"):
            raise ConfigError(f"{key} = {settings.url!r}: an account's remote is an s3:// URL")
    try:
        parts = urlsplit(url)
    except ValueError as exc:
        raise ConfigError(f"{key} = {url!r}: not a URL ({exc})") from None
    if parts.scheme == "file":
        # file:///abs/dir, or file://./rel/dir (netloc "." and a relative path)
        where = parts.netloc + parts.path if parts.netloc in ("", ".", "..") else None
        if not where:
            raise ConfigError(f"{key} = {url!r}: expected file:///absolute/dir or "
                              "file://./relative/dir")
        _outside_data_dir(f"{key} = {url!r}", Path(where), data_dir)
        return FileRemote(name, Path(where))
    if parts.scheme == "s3":
        if not parts.netloc:
            raise ConfigError(f"{key} = {url!r}: expected s3://bucket or s3://bucket/prefix")
        return S3Remote(name, parts.netloc, parts.path, settings,
                        scope=f"{account}/" if account is not None else "")
    raise ConfigError(f"{key} = {url!r}: expected an s3:// or file:// URL")


def _place(remote: Remote) -> tuple[tuple[str, ...], str]:
    """(which store, the key prefix ending in "/") of a remote, to compare with others."""
    if isinstance(remote, FileRemote):
        return ("file",), f"{remote.root.resolve()}/"
    assert isinstance(remote, S3Remote)
    endpoint = remote.settings.endpoint_url.rstrip("/").lower()
    host = urlsplit(endpoint).hostname or ""
    if not endpoint or host == "amazonaws.com" or host.endswith(".amazonaws.com"):
        endpoint = "aws"  # bucket names are global there, whichever endpoint names it
    return ("s3", endpoint, remote.bucket), remote.key_for(remote.scope)


def _outside_data_dir(what: str, root: Path, data_dir: Path) -> None:
    """A directory remote must not overlap the data directory's own trees: an "upload" into
    `files/` or `cache/` would replace the only copy with itself, the cache's repair would
    delete "remote objects" in `cache/`, and recovery empties `tmp/`. (A folder of its own
    inside the data directory, like the embedded default `remote/`, is fine.)"""
    where, data = root.resolve(), data_dir.resolve()
    owned = [data / name for name in ("files", "cache", "tmp")]
    if where == data or where in data.parents or any(
            where == tree or tree in where.parents for tree in owned):
        raise ConfigError(f"{what}: a directory remote must not be the data "
                          f"directory {data}, hold it, or lie in its files/, cache/ or tmp/")
