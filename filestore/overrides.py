"""Settings saved from the admin page: kept in the registry, laid over the config file.

The config file (and the `FILESTORE_*` environment) is what an operator deploys; the admin page
changes a few keys at run time, the remote and the upload policy, without a restart. A saved value
is stored as the text a config file would hold and parsed by the same parsers, so the page can
never save a value the config file would refuse. Saving bumps the `settings.generation` counter
(and `remote.generation` when the remote changed); every process sharing the data directory
compares it each second and reloads (see `app.py`).

Secrets (`SECRET_KEYS`) are stored encrypted (`secrets.py`): `sealed` encrypts them on the way in,
`effective` decrypts them on the way out. A secret an older filestore saved in plain text is still
read as it is, and encrypted the next time anything is saved from the page.

A `file://` remote writes wherever the process may: the page may set one only inside
`storage.allowed_file_roots` (resolved, symlinks and all); else `s3://` remotes only.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from . import account_storage
from .config import (
    DEFAULT_REMOTE,
    REMOTES_SECTION,
    Settings,
    override,
    section_class,
)
from .errors import BadRequest, ConfigError, Conflict
from .registry import Tables, remote_counter_names
from .secrets import SecretBox, is_sealed
from .values import value_text

# What the page may change: {section: keys}. Each named remote of the config ([remotes.NAME]) is
# editable too, as the section "remotes.NAME" (see `editable`).
REMOTE_KEYS = ("url", "endpoint_url", "region", "access_key_id", "secret_access_key")
EDITABLE: dict[str, tuple[str, ...]] = {
    "remote": REMOTE_KEYS,
    "upload": ("enabled", "keep_local", "delay", "delete_delay", "bandwidth", "hours"),
    "cache": ("download_bandwidth",),
}
# Never sent back to a browser or an API client; an empty value on save keeps the stored one;
# stored encrypted. (The access key id is not one: it names the key, as a user name does, and
# the page shows it so an operator can tell which key is in use.)
SECRET_KEYS = frozenset({"secret_access_key"})
# Where a remote's objects are: changing these points reads of uploaded files at another store.
LOCATION_KEYS = ("url", "endpoint_url")
ORIGIN = "admin settings"


def editable(settings: Settings) -> dict[str, tuple[str, ...]]:
    """The sections and keys the page may change for this config, in the page's order."""
    named = {f"{REMOTES_SECTION}.{name}": REMOTE_KEYS for name in settings.remotes}
    return {"remote": REMOTE_KEYS, **named, "upload": EDITABLE["upload"],
            "cache": EDITABLE["cache"]}


def remote_of(section: str) -> str | None:
    """The remote name an editable section describes ("remote": the default), or None."""
    if section == "remote":
        return DEFAULT_REMOTE
    name = section.removeprefix(REMOTES_SECTION + ".")
    return name if name != section else None


def saved(tx: Tables, box: SecretBox | None = None) -> dict[str, dict[str, str]]:
    """The values saved from the page, {section: {key: text}}. With `box` the secrets are
    decrypted (`SecretError` if one cannot be); without, they are left as stored (encrypted),
    which tells only which keys are saved."""
    found: dict[str, dict[str, str]] = {}
    for section, key, value in tx.settings.all():
        keys = REMOTE_KEYS if remote_of(section) else EDITABLE.get(section, ())
        if key in keys:
            found.setdefault(section, {})[key] = value
    return _opened(found, box) if box is not None else found


def _opened(texts: Mapping[str, Mapping[str, str]], box: SecretBox) -> dict[str, dict[str, str]]:
    """`texts` with each encrypted secret decrypted (a plain-text one is read as it is)."""
    return {section: {key: box.decrypt(value, f"{section}.{key} (saved from the admin page)")
                      if key in SECRET_KEYS and is_sealed(value) else value
                      for key, value in values.items()}
            for section, values in texts.items()}


def sealed(tx: Tables, texts: Mapping[str, Mapping[str, str]],
           box: SecretBox) -> dict[str, dict[str, str]]:
    """What to store for the checked `texts`: their secrets encrypted, and with them every
    secret an older filestore saved in plain text, encrypted now (one save upgrades them all)."""
    rows = {section: dict(values) for section, values in texts.items()}
    for section, key, value in tx.settings.all():
        if key in SECRET_KEYS and not is_sealed(value) and key not in rows.get(section, {}):
            rows.setdefault(section, {})[key] = value
    return {section: {key: box.encrypt(value) if key in SECRET_KEYS else value
                      for key, value in values.items()}
            for section, values in rows.items()}


def effective(base: Settings, tx: Tables, *, secrets: bool = True) -> Settings:
    """The config's settings with the saved ones laid over them, and the accounts' own
    storage (`account_storage.py`). A saved value the config
    would now refuse (the parsers grew stricter) is an error naming it, not a silent default;
    so is a secret that cannot be decrypted (`SecretError`, naming the key file). With
    `secrets` false the saved secrets are left out (for what needs only where remotes are)."""
    # A remote saved here that the config no longer names is forgotten with it.
    known = editable(base)
    chosen = {section: values for section, values in saved(tx).items() if section in known}
    box = SecretBox(base.data_dir) if secrets else None
    if box is not None:
        texts = _opened(chosen, box)
    else:
        texts = {section: {key: value for key, value in values.items()
                           if key not in SECRET_KEYS} for section, values in chosen.items()}
    try:
        settings = override(base, texts, ORIGIN)
    except ConfigError as exc:
        raise ConfigError(f"{exc.detail} (saved from the admin page; fix it there or with "
                          "`filestore settings reset`)") from None
    # What accounts set for themselves, last: their rules may name the remotes above.
    return account_storage.lay_over(settings, tx, box)


def snapshot(base: Settings, tx: Tables) -> tuple[Settings, tuple[int, int]]:
    """The effective settings and the generation they belong to, from one read transaction."""
    with tx.snapshot():
        return effective(base, tx), tx.settings.generation()


def check_changes(current: Settings, changes: Mapping[str, Any]) -> dict[str, dict[str, str]]:
    """The texts to save from a partial update {section: {key: value}} (named remotes nested as
    {"remotes": {NAME: {key: value}}}), validated: unknown or read-only keys and bad values are a
    400 naming them. An empty secret keeps the stored one."""
    if not isinstance(changes, Mapping):
        raise BadRequest("settings must be a JSON object of sections")
    allowed = editable(current)
    texts: dict[str, dict[str, str]] = {}
    for section, values in _flatten(changes).items():
        if section not in allowed:
            raise BadRequest(f"[{section}] cannot be changed here (editable: "
                             f"{', '.join(allowed)})")
        if not isinstance(values, Mapping):
            raise BadRequest(f"{section} must be an object of keys")
        for key, value in values.items():
            if key not in allowed[section]:
                raise BadRequest(f"{section}.{key} cannot be changed here (editable: "
                                 f"{', '.join(allowed[section])})")
            if value is None or isinstance(value, dict | list):
                raise BadRequest(f"{section}.{key} must be a string, number or boolean")
            text = value_text(value, _parser(section, key)) if not isinstance(value, str) \
                else value.strip()
            if key in SECRET_KEYS and not text:
                continue
            texts.setdefault(section, {})[key] = text
    try:
        override(current, texts, ORIGIN)
    except ConfigError as exc:
        raise BadRequest(exc.detail) from None
    remotes = current.named_remotes()
    for section, values in texts.items():
        name = remote_of(section)
        # The URL in effect sent back unchanged (an API client PUTting the whole form) is no
        # new remote: only a change is checked.
        if name is not None and "url" in values and values["url"] != remotes[name].url:
            _check_remote_url(section, values["url"], current.storage.allowed_file_roots)
    return texts


def _check_remote_url(section: str, url: str, roots: tuple[str, ...]) -> None:
    """The page sets `s3://` remotes (or the embedded default, ""), and `file://` ones only
    inside `storage.allowed_file_roots`, compared once both are resolved (symlinks, "..", a
    relative `file://./dir` from the working directory, as the remote itself takes it). Else
    a 400 naming the rule: uploads would write wherever the process may."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return  # not a URL: no remote opens it, and the test on save says why
    if not url or parts.scheme == "s3":
        return
    rule = (f"{section}.url: the admin page sets s3:// remotes only; a file:// remote is set in "
            "the config file, or inside storage.allowed_file_roots")
    # As `remote.open_remote` reads it: file:///abs/dir, or file://./rel/dir.
    where = parts.netloc + parts.path if parts.netloc in ("", ".", "..") else ""
    if parts.scheme != "file" or not where or not roots:
        raise BadRequest(f"{rule} ({', '.join(roots) or 'none are set'})")
    resolved = Path(os.path.realpath(where))
    inside = [root for root in map(Path, map(os.path.realpath, roots))
              if resolved == root or root in resolved.parents]
    if not inside:
        shown = f"{where} resolves to {resolved}" if str(resolved) != where else where
        raise BadRequest(f"{rule} ({', '.join(roots)}); {shown}, outside them")


def _flatten(changes: Mapping[str, Any]) -> dict[str, Any]:
    flat = {section: values for section, values in changes.items()
            if section != REMOTES_SECTION}
    named = changes.get(REMOTES_SECTION, {})
    if not isinstance(named, Mapping):
        raise BadRequest("remotes must be an object of remote names")
    flat.update({f"{REMOTES_SECTION}.{name}": values for name, values in named.items()})
    return flat


def nest(described: Mapping[str, Any]) -> dict[str, Any]:
    """Flat sections ("remotes.NAME") nested as the config file and the JSON API have them."""
    nested: dict[str, Any] = {}
    for section, values in described.items():
        name = remote_of(section)
        if name is not None and section != "remote":
            nested.setdefault(REMOTES_SECTION, {})[name] = values
        else:
            nested[section] = values
    return nested


def moved_remotes(current: Settings, proposed: Settings) -> list[str]:
    """The remotes whose location the proposed settings change."""
    before, after = current.named_remotes(), proposed.named_remotes()
    return [name for name in after if name in before and any(
        getattr(before[name], key) != getattr(after[name], key) for key in LOCATION_KEYS)]


def changed_remotes(current: Settings, proposed: Settings) -> list[str]:
    """The remotes whose settings (any of them) the proposed settings change."""
    before, after = current.named_remotes(), proposed.named_remotes()
    return [name for name in after if before.get(name) != after[name]]


def refuse_stranding(tx: Tables, remote: str, where: str) -> None:
    """Changing where a remote is would make every file only it holds unreadable, and send its
    pending remote deletes to the wrong store: refused (409) while there are any."""
    files = tx.counters.get(remote_counter_names(remote).files)
    deletes = tx.queue.deletes_to(remote)
    if files or deletes:
        what = f"{files:,} files in the cloud" if files else f"{deletes:,} remote deletes"
        key = "remote" if remote == DEFAULT_REMOTE else f"remotes.{remote}"
        raise Conflict(f"{what} at {where} would become unreachable: move everything to local "
                       "first (and let remote deletes finish), then change "
                       f"{key}.url or {key}.endpoint_url")








def describe(settings: Settings, saved_texts: Mapping[str, Mapping[str, str]]) -> dict[str, Any]:
    """The editable settings for the page, by flat section ("remotes.NAME"; `nest` gives the
    JSON API's shape): each key's value as text and whether the page set it (it then overrides
    the config file). Secrets are only said to be set or not."""
    remotes = settings.named_remotes()
    described: dict[str, Any] = {}
    for section, keys in editable(settings).items():
        name = remote_of(section)
        values = remotes[name] if name is not None else getattr(settings, section)
        entries = {}
        for key in keys:
            value = getattr(values, key)
            entry: dict[str, Any] = {"saved": key in saved_texts.get(section, {})}
            if key in SECRET_KEYS:
                entry["set"] = bool(value)
            else:
                entry["value"] = value_text(value, _parser(section, key))
            entries[key] = entry
        described[section] = entries
    return described


def _parser(section: str, key: str) -> Any:
    field = {f.name: f for f in dataclasses.fields(section_class(section))}[key]
    return field.metadata["parse"]
