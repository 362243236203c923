"""Changing settings while filestore runs: test them, save them, and apply them in every process.

(The API token too: `filestore token --rotate` writes a new one, and each process reads it again
within a second.)

A save from the admin page is tested first (`probe.py`: put, read back, compare, delete a probe
object on the remote the new settings name); only settings that pass are stored, in the registry
(`overrides.py`). Each server process then applies them within a second: it compares the
registry's settings generation, rebuilds its settings, and when the remote changed opens a client
for the new remote and swaps it in. The old client is closed `RETIRE_SECONDS` (120 s) later, or
at shutdown, so reads and uploads already using it finish; an upload that began under the old
remote settings is not recorded and goes again (see `queue/worker.py`).

Secrets are encrypted as they are stored (`overrides.sealed`, inside the write transaction) and
only ever held decrypted in memory; a `file://` remote is refused unless it lies inside
`storage.allowed_file_roots` (`overrides.check_changes`), before anything is tested.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import anyio

from . import account_storage, logs, overrides
from .config import DEFAULT_REMOTE, RemoteSettings, Settings, override
from .datadir import DataDir
from .errors import BadRequest, ConfigError, NotFound, RegistryUnavailable
from .probe import ProbeResult, probe
from .registry import SETTINGS_SCHEMA, open_registry, registry_exists
from .remote import Remote, display_url, open_remote, open_remotes
from .secrets import SecretBox
from .store import Store

if TYPE_CHECKING:
    from .accounts import Principal
    from .queue.worker import QueueWorkers

log = logging.getLogger("filestore")

POLL_SECONDS = 1.0
# A replaced remote client is closed this long after the swap: longer than an upload's lease,
# so uploads and reads that began with it have finished (or failed and gone again).
RETIRE_SECONDS = 120.0


class SettingsReloader:
    def __init__(self, store: Store, workers: QueueWorkers, opened: list[Remote]) -> None:
        self.store = store
        self.workers = workers
        self.remotes = workers.remotes
        self.seen = store.settings_generation
        # The settings each remote client in `remotes` was opened with.
        self.opened_with = dict(store.settings.named_remotes())
        # Every remote client opened, for the owner to close at shutdown; a replaced one is
        # closed here `RETIRE_SECONDS` after the swap (it may still be serving a read or an
        # upload until then).
        self.opened = opened
        self._retired: list[tuple[Remote, float]] = []
        self._last_error = ""
        # The registry's server away: said once per outage, and once when it is back.
        self._away = logs.Failing(log, "settings: looking for saved settings")
        self._lock = anyio.Lock()

    async def run(self) -> None:
        while True:
            await anyio.sleep(POLL_SECONDS)
            try:
                await self.apply()
            except RegistryUnavailable as exc:
                self._away.failed(exc)
            except ConfigError as exc:  # one line that says what to do (never a secret), once
                self._away.ok()
                if exc.detail != self._last_error:
                    logs.event(log, "settings.apply_failed", "settings: cannot apply the saved "
                               "settings: {error}", level=logging.ERROR, error=exc.detail)
                self._last_error = exc.detail
            except Exception:
                log.exception("settings: applying saved settings failed; trying again")
            else:
                self._away.ok()
                self._last_error = ""
            try:
                if self.store.reload_token():
                    logs.event(log, "admin_token.reloaded", "the API token was rotated; the "
                               "old one no longer works", level=logging.WARNING)
            except OSError as exc:
                log.error("could not read the API token file: %s", exc)
            await self._close_retired()

    async def _close_retired(self) -> None:
        """Close replaced remote clients once whatever used them has had time to finish."""
        now = time.monotonic()
        for remote, since in list(self._retired):
            if now - since > RETIRE_SECONDS and remote in self.opened:
                self._retired.remove((remote, since))
                self.opened.remove(remote)
                with anyio.CancelScope(shield=True):
                    await remote.close()

    async def apply(self) -> None:
        """Take up settings saved since the last look (by this process or another)."""
        async with self._lock:
            current = self.store.registry.read.settings.generation()
            if current == self.seen:
                return
            settings = overrides.effective(self.store.base_settings, self.store.registry.read)
            if current[1] != self.seen[1]:
                named = settings.named_remotes()
                for name, remote_settings in named.items():
                    if self.opened_with.get(name) != remote_settings:
                        await self._swap(name, remote_settings, settings)
                for name in [name for name in self.remotes if name not in named]:
                    # An account's remote it removed (holding nothing: `account_storage`).
                    self._retired.append((self.remotes.pop(name), time.monotonic()))
                    self.opened_with.pop(name, None)
                self.workers.remote_generation = current[1]
            self.store.settings = settings
            self.seen = current
            static = self.store.local.static
            if static is not None:  # a file's headers may change with them (static.py)
                await anyio.to_thread.run_sync(static.clear, self.store.registry)
        self.workers.wake()


    async def _swap(self, name: str, remote_settings: RemoteSettings, settings: Settings) -> None:
        """Open a client for the remote's new settings and put it in the old one's place."""
        remote = open_remote(name, remote_settings, settings.data_dir)
        await remote.open()
        self.opened.append(remote)
        replaced = self.remotes.get(name)
        if replaced is not None:
            self._retired.append((replaced, time.monotonic()))
        self.remotes[name] = remote
        self.opened_with[name] = remote_settings
        logs.event(log, "settings.remote_changed", "settings: the remote {remote!r} is now "
                   "{url}", level=logging.WARNING, remote=name, url=remote.display_url)


async def save(store: Store, reloader: SettingsReloader | None,
               changes: Mapping[str, Any]) -> ProbeResult:
    """Test `changes` ({section: {key: value}}, partial) and save them if the test passes; the
    test's result either way. Bad keys or values (and a `file://` remote outside
    `storage.allowed_file_roots`) are a 400 before anything is tested; settings that leave the
    remote as it is need no test (uploads can be paused while the store is down). Secrets are
    stored encrypted, and plain-text ones an older filestore saved are encrypted too.
    """
    base, reader = store.base_settings, store.registry.read
    box = SecretBox(base.data_dir)
    texts = overrides.check_changes(store.settings, changes)
    current = overrides.effective(base, reader)  # the registry's, not this process's copy
    proposed = override(base, _merge(overrides.saved(reader, box), texts), overrides.ORIGIN)
    _check_places(proposed)
    for name in overrides.moved_remotes(current, proposed):
        overrides.refuse_stranding(reader, name, _where(current, name))
    changed = overrides.changed_remotes(current, proposed)
    result = ProbeResult(True, remote=", ".join(_where(proposed, name) for name in changed)
                         or _where(proposed, DEFAULT_REMOTE), tested=bool(changed))
    for name in changed:
        tested = await probe(proposed.named_remotes()[name], proposed.data_dir)
        if not tested.ok:
            return tested

    def write() -> None:
        with store.registry.transaction() as tx:
            # Decided again under the write lock: another process may have saved meanwhile.
            now = overrides.effective(base, tx)
            after = override(base, _merge(overrides.saved(tx, box), texts), overrides.ORIGIN)
            _check_places(after)
            moved = overrides.moved_remotes(now, after)
            for name in moved:
                overrides.refuse_stranding(tx, name, _where(now, name))
                tx.files.forget_copies_in(name)
            tx.settings.save(overrides.sealed(tx, texts, box),
                             bool(overrides.changed_remotes(now, after)))

    await anyio.to_thread.run_sync(write)
    # Which keys, never their values (a secret's least of all).
    keys = sorted(f"{section}.{key}" for section, values in texts.items() for key in values)
    logs.event(log, "settings.saved", "settings saved: " + (", ".join(keys) or "nothing")
               + (" (tested on {tested_on})" if changed else ""), keys=keys, remotes=changed,
               tested_on=result.remote if changed else None)
    await _take_up(store, reloader, proposed)
    return result


async def save_account_storage(store: Store, reloader: SettingsReloader | None,
                               principal: Principal, account: str, body: Any, *,
                               replace: bool) -> ProbeResult:
    """Check, test and save an account's own storage (`account_storage.py`; PUT: `replace`,
    PATCH: merge); the test's result either way, and nothing saved unless it passed. As
    `save`: a 400 for what no parser takes, a 409 for a change that strands files, each new or
    changed remote probed (inside the account's scope) before anything is stored."""
    principal.check_account(account)
    base, reader = store.base_settings, store.registry.read
    box = SecretBox(base.data_dir)
    if reader.accounts.get(account) is None:
        raise NotFound(f"no account {account!r}")
    document = account_storage.proposed(account_storage.stored(reader, account, box), body,
                                        replace=replace)
    current = overrides.effective(base, reader)
    storage = account_storage.checked(account, document, current, admin=principal.admin)
    proposed = account_storage.with_storage(current, account, storage)
    _check_places(proposed)
    account_storage.refuse_stranding(reader, account, current, proposed)
    changed = account_storage.changed(account, current, proposed)
    result = ProbeResult(True, remote=", ".join(_where(proposed, name) for name in changed),
                         tested=bool(changed))
    for name in changed:
        tested = await probe(proposed.named_remotes()[name], base.data_dir, name)
        if not tested.ok:
            return tested
    remotes_json, plan_json = account_storage.encoded(document, storage, box)

    def write() -> None:
        with store.registry.transaction() as tx:
            # Decided again under the write lock: another process may have saved meanwhile.
            now = overrides.effective(base, tx)
            after = account_storage.with_storage(now, account, storage)
            account_storage.refuse_stranding(tx, account, now, after)
            moved = account_storage.moved(account, now, after)
            for name in moved:
                tx.files.forget_copies_in(name)
            tx.account_storage.save(account, remotes_json, plan_json, bool(
                account_storage.changed(account, now, after)
                or account_storage.gone(account, now, after)))

    await anyio.to_thread.run_sync(write)
    logs.event(log, "account.storage_saved", "account {account!r}: storage saved, {count} "
               "remotes and {rules} rules" + (" (tested on {tested_on})" if changed else ""),
               account=account, remotes=sorted(storage.remotes), count=len(storage.remotes),
               rules=len(storage.plan),
               tested_on=result.remote if changed else None)
    await _take_up(store, reloader, proposed)
    return result


async def _take_up(store: Store, reloader: SettingsReloader | None, proposed: Settings) -> None:
    """Apply what was just saved in this process at once (the others within a second): through
    the reloader in a server, which also swaps remote clients; else (a command) directly."""
    if reloader is not None:
        await reloader.apply()
    else:
        store.settings = proposed


def _check_places(settings: Settings) -> None:
    """The remotes must stay apart, as at start (`open_remotes`): one moved onto another's
    bucket and prefix would delete its objects as "older copies". A 400 naming them."""
    try:
        open_remotes(settings, skip_invalid=True)
    except ConfigError as exc:
        raise BadRequest(exc.detail) from None


def _where(settings: Settings, name: str) -> str:
    return display_url(name, settings.named_remotes()[name], settings.data_dir)


def _merge(saved: dict[str, dict[str, str]],
           texts: Mapping[str, Mapping[str, str]]) -> dict[str, dict[str, str]]:
    merged = {section: dict(values) for section, values in saved.items()}
    for section, values in texts.items():
        merged.setdefault(section, {}).update(values)
    return merged


def reset_settings(settings: Settings, *, force: bool = False) -> int:
    """Forget what the admin page saved (the config file rules again; servers apply it within
    a second); how many values there were. Works even when a saved value stops the service
    from opening, so it opens the registry alone. Refused (409) when it would point a remote
    elsewhere while files are in the cloud there, unless `force`."""
    if not registry_exists(settings):
        raise ConfigError(f"no registry at {DataDir(settings.data_dir).registry_path}: "
                          "nothing was saved")
    registry = open_registry(settings)
    try:
        if registry.schema_version() < SETTINGS_SCHEMA:  # a registry from before the page
            raise ConfigError("nothing was saved from the admin page")
        with registry.transaction() as tx:
            try:
                # Where the remotes are is all it needs: a secret it cannot decrypt (a lost
                # key file) is no reason to refuse.
                current = overrides.effective(settings, tx, secrets=False)
            except ConfigError:
                if not force:
                    raise
                current = settings  # a saved value no parser takes: forget it regardless
            for name in overrides.moved_remotes(current, settings):
                if not force:
                    where = current.named_remotes()[name].url or "the default remote"
                    overrides.refuse_stranding(tx, name, where)
                tx.files.forget_copies_in(name)
            return tx.settings.reset()
    finally:
        registry.close()
